// Alerts board: open alerts (pending, firing — acknowledged or not) grouped by severity, then site; kept live by
// the SSE stream (/alerts/stream) without reloading; acknowledge, assign, resolve by hand, silence (with a preview
// of what the silence would match) and each alert's history. Write buttons exist for every role but are hidden from a viewer:
// the API enforces roles, the page only avoids offering what would be refused.
import { ApiError, get, getAll, openStream, post, query, request } from "../api.js";
import { ask } from "../dialogs.js";
import { esc, fmtNum, fmtTime, t, translate, tValue } from "../i18n.js";

const SEVERITIES = ["critical", "major", "minor", "warning"];
const MATCHER_LABELS = ["rule_id", "site_id", "device_id", "severity", "kind", "team"];
const DURATIONS = [["1h", 3600], ["4h", 14400], ["24h", 86400], ["7d", 604800]];
// what a card shows: a notification whose alert has all of these is drawn without asking the API again
const CARD_FIELDS = ["alert_id", "rule_id", "severity", "state", "site_id", "device_id", "subject", "summary", "value",
  "threshold", "started_at", "acknowledged_at", "acknowledged_by", "ack_comment", "assignee"];

// The open alerts asked for while the console signs in (main.js), used by the first render instead of asking again.
let prefetched = null;
const openAlerts = (signal) => getAll(`/alerts${query({ state: ["pending", "firing"] })}`, 20000, signal);

export function prefetch() {
  prefetched = openAlerts();
  prefetched.catch(() => {}); // a failure is reported by the render that uses it
}

export function render(view, app) {
  const abort = new AbortController();
  const board = { alerts: new Map(), expanded: new Map(), scheduled: false, loaded: false, firstRender: null,
    dirty: new Set(), full: true, during: new Set() };
  view.innerHTML = `
    <div class="page-head">
      <h1 data-i18n="alerts.title">Alerts</h1>
      <span class="stream" data-stream="connecting"></span>
      <span class="counts"></span>
      <span class="spacer"></span>
      <button type="button" data-action="new-silence" class="write" data-i18n="alerts.newSilence">New silence</button>
    </div>
    <div class="board" aria-busy="true"></div>
    <section class="silences"><h2 data-i18n="silences.title">Active silences</h2><div class="silence-list"></div></section>`;
  translate(view);
  const boardEl = view.querySelector(".board");
  const streamEl = view.querySelector(".stream");
  const writeHidden = !app.canWrite();
  view.querySelectorAll(".write").forEach((b) => { b.hidden = writeHidden; });

  // schedule(id): one alert changed (its card is replaced in place); schedule(): redraw the whole board
  const schedule = (alertId) => {
    if (alertId === undefined) board.full = true;
    else board.dirty.add(alertId);
    if (board.scheduled) return;
    board.scheduled = true;
    requestAnimationFrame(() => {
      board.scheduled = false;
      if (abort.signal.aborted) return; // the page was left (or the user signed out): its view belongs to another
      const started = performance.now();
      const patched = !board.full && patch();
      if (!patched) draw();
      board.full = false;
      board.dirty.clear();
      // bench/console/render.py reads these: when the board first showed (ms since navigation), the last draw's cost
      view.dataset.drawMs = (performance.now() - started).toFixed(1);
      if (board.firstRender === null && board.loaded) {
        board.firstRender = performance.now();
        view.dataset.firstRenderMs = board.firstRender.toFixed(0);
        view.dataset.ready = "1"; // the bench and the tests wait for this
      }
    });
  };

  // A live update touches one card: replace or insert just it (a whole redraw of a city's board costs tens of ms).
  // False when the change moves a card between groups or makes or empties one: then the board is redrawn.
  function patch() {
    for (const id of board.dirty) {
      const alert = board.alerts.get(id);
      const shown = boardEl.querySelector(`article[data-alert-id="${id}"]`);
      if (!alert) {
        if (!shown) continue;
        if (shown.parentElement.children.length === 1) return false;
        shown.remove();
        continue;
      }
      const html = card(alert, app, writeHidden, board.expanded.get(id));
      if (shown) {
        const group = shown.closest(".site-group");
        if (shown.closest(".sev").dataset.severity !== alert.severity || group.dataset.site !== (alert.site_id ?? "")) {
          return false;
        }
        shown.outerHTML = html;
        continue;
      }
      const cards = boardEl.querySelector(
        `.sev[data-severity="${CSS.escape(alert.severity)}"] .site-group[data-site="${CSS.escape(alert.site_id ?? "")}"] .cards`);
      if (!cards) return false;
      const started = Date.parse(alert.started_at);
      const later = [...cards.children].find((c) => Date.parse(c.dataset.started) < started);
      if (later) later.insertAdjacentHTML("beforebegin", html);
      else cards.insertAdjacentHTML("beforeend", html);
    }
    const bySeverity = new Map();
    for (const a of board.alerts.values()) bySeverity.set(a.severity, (bySeverity.get(a.severity) ?? 0) + 1);
    boardEl.querySelectorAll(".sev").forEach((s) => { s.querySelector("h2 .n").textContent = bySeverity.get(s.dataset.severity) ?? 0; });
    counts();
    return true;
  }

  function counts() {
    const firing = [...board.alerts.values()].filter((a) => a.state === "firing").length;
    view.querySelector(".counts").textContent = t("alerts.counts", { open: board.alerts.size, firing });
  }

  function draw() {
    const bySeverity = new Map(SEVERITIES.map((s) => [s, new Map()]));
    for (const alert of board.alerts.values()) {
      const sites = bySeverity.get(alert.severity) ?? bySeverity.get("warning");
      const key = alert.site_id ?? "";
      if (!sites.has(key)) sites.set(key, []);
      sites.get(key).push(alert);
    }
    const parts = [];
    for (const [severity, sites] of bySeverity) {
      const count = [...sites.values()].reduce((n, list) => n + list.length, 0);
      if (!count) continue;
      parts.push(`<section class="sev sev-${severity}" data-severity="${severity}">
        <h2><span class="badge ${severity}">${esc(t(`severity.${severity}`))}</span> <span class="n">${count}</span></h2>`);
      const ordered = [...sites.entries()].sort((a, b) => app.siteName(a[0]).localeCompare(app.siteName(b[0])));
      for (const [siteId, list] of ordered) {
        list.sort((a, b) => Date.parse(b.started_at) - Date.parse(a.started_at)); // newest first
        parts.push(`<div class="site-group" data-site="${esc(siteId)}"><h3>${esc(siteId ? app.siteName(siteId) : t("alerts.noSite"))}</h3>
          <div class="cards">${list.map((a) => card(a, app, writeHidden, board.expanded.get(a.alert_id))).join("")}</div></div>`);
      }
      parts.push("</section>");
    }
    boardEl.innerHTML = parts.join("") || `<p class="empty">${esc(t("alerts.none"))}</p>`;
    boardEl.setAttribute("aria-busy", "false");
    counts();
  }

  async function loadAll() {
    const early = prefetched;
    prefetched = null; // only once: a resync or a later visit asks the API again
    // changes that arrive while the list is read are newer than it: kept over it
    const during = new Map();
    board.during.add(during);
    let items;
    try {
      items = await (early ?? openAlerts(abort.signal));
    } finally {
      board.during.delete(during);
    }
    board.alerts = new Map(items.map((a) => [a.alert_id, a]));
    for (const [id, alert] of during) {
      if (alert.state === "resolved") board.alerts.delete(id);
      else board.alerts.set(id, alert);
    }
    board.loaded = true;
    schedule();
  }

  async function refresh(alertId, notified) {
    try {
      const complete = notified && CARD_FIELDS.every((f) => f in notified);
      const alert = complete ? notified : await get(`/alerts/${alertId}`, abort.signal);
      if (alert.state === "resolved") board.alerts.delete(alertId);
      else board.alerts.set(alertId, alert);
      board.during.forEach((changes) => changes.set(alertId, alert));
      if (board.expanded.has(alertId)) await loadHistory(alertId);
      schedule(alertId);
    } catch (error) {
      app.fail(error);
    }
  }

  async function loadHistory(alertId) {
    board.expanded.set(alertId, await get(`/alerts/${alertId}/history`, abort.signal));
  }

  async function loadSilences() {
    const list = view.querySelector(".silence-list");
    const page = await get("/silences?status=active&limit=100", abort.signal);
    list.innerHTML = page.items.length ? `<ul>${page.items.map((s) => `<li data-silence-id="${s.silence_id}">
      <code>${esc(s.matchers.map((m) => `${m.label}${m.op}"${m.value}"`).join(", "))}</code>
      <span>${esc(t("silences.until", { end: fmtTime(s.ends_at, app.siteTz(null)) }))}</span>
      <span>${esc(s.created_by)}${s.comment ? ` — ${esc(s.comment)}` : ""}</span>
      <button type="button" class="write" data-action="expire" data-id="${s.silence_id}" ${writeHidden ? "hidden" : ""}>${esc(t("silences.expire"))}</button>
      </li>`).join("")}</ul>` : `<p class="empty">${esc(t("silences.none"))}</p>`;
  }

  // tied to the page's life: the view element outlives the page, and a listener left on it would act once per visit
  view.addEventListener("click", async (event) => {
    const button = event.target.closest("button[data-action]");
    if (!button) return;
    const id = Number(button.dataset.id);
    try {
      switch (button.dataset.action) {
        case "ack": {
          const comment = await ask({ title: t("alerts.ackTitle"), label: t("alerts.comment"), multiline: true,
            submit: t("alerts.ack") });
          if (comment === null) return;
          board.alerts.set(id, await post(`/alerts/${id}/acknowledge`, { comment: comment || null }));
          app.toast(t("alerts.acked"));
          schedule(id);
          break;
        }
        case "resolve": {
          const comment = await ask({ title: t("alerts.resolveTitle"), label: t("alerts.comment"), multiline: true,
            submit: t("alerts.resolve") });
          if (comment === null) return;
          await post(`/alerts/${id}/resolve`, { comment: comment || null });
          board.alerts.delete(id);
          app.toast(t("alerts.resolved"));
          schedule(id);
          break;
        }
        case "assign": {
          const assignee = await ask({ title: t("alerts.assignTitle"), label: t("alerts.assignee"),
            value: board.alerts.get(id)?.assignee ?? "", submit: t("alerts.assign") });
          if (assignee === null) return;
          board.alerts.set(id, await post(`/alerts/${id}/assign`, { assignee: assignee.trim() || null }));
          schedule(id);
          break;
        }
        case "history":
          if (board.expanded.has(id)) board.expanded.delete(id);
          else await loadHistory(id);
          schedule(id);
          break;
        case "silence":
          silenceDialog(app, board.alerts.get(id), loadSilences);
          break;
        case "new-silence":
          silenceDialog(app, null, loadSilences);
          break;
        case "expire":
          await request("DELETE", `/silences/${id}`);
          await loadSilences();
          break;
        default:
      }
    } catch (error) {
      app.fail(error);
    }
  }, { signal: abort.signal });

  const onEvent = (event, data) => {
    if (event === "alert") {
      let alert;
      try {
        alert = JSON.parse(data).alert;
      } catch {
        return;
      }
      // the notification may carry only the identifying fields (PostgreSQL's payload limit): then read the alert
      if (alert?.alert_id) refresh(alert.alert_id, alert);
    } else if (event === "resync") {
      loadAll().catch(app.fail); // notifications may have been lost while the API was away from the database
    } else if (event === "revoked") {
      app.fail(new ApiError(401, t("auth.revoked"))); // signs out: the key no longer works anywhere
    }
  };
  const first = loadAll();
  first.catch(app.fail);
  openStream("/alerts/stream", {
    signal: abort.signal,
    onEvent,
    // the list was read before the stream listened (and a reconnect means notifications were missed): once the
    // stream listens, read it again, after the first load so the first render does not wait for it
    onOpen: () => { first.then(() => loadAll()).catch(app.fail); },
    onState: (s, error) => {
      streamEl.dataset.stream = s;
      streamEl.textContent = t(`stream.${s}`);
      if (error) app.fail(error); // refused (401: signed out; 403 shown)
    },
  });
  loadSilences().catch(app.fail);
  return () => abort.abort();
}

function card(a, app, writeHidden, history) {
  const tz = app.siteTz(a.site_id);
  const acked = a.acknowledged_at !== null;
  const hide = writeHidden ? " hidden" : "";
  const value = a.value === null ? "" : ` · ${esc(t("alerts.value"))} ${fmtNum(a.value, 3)}${a.threshold === null ? "" : ` / ${fmtNum(a.threshold, 3)}`}`;
  return `<article class="alert ${a.state}${acked ? " acked" : ""}" data-alert-id="${a.alert_id}" data-rule="${esc(a.rule_id)}" data-state="${a.state}" data-started="${esc(a.started_at)}">
    <p class="summary">${esc(a.summary)}</p>
    <p class="meta"><span class="state">${esc(t(`state.${a.state}`))}</span>${acked ? ` · <span class="ack">${esc(t("alerts.ackedBy", { who: a.acknowledged_by }))}</span>` : ""}
      ${a.assignee ? ` · <span class="assignee">${esc(t("alerts.assignedTo", { who: a.assignee }))}</span>` : ""}</p>
    <p class="meta"><code>${esc(a.rule_id)}</code> · ${esc(a.device_id ?? a.subject ?? "")} · <time datetime="${esc(a.started_at)}">${esc(fmtTime(a.started_at, tz))}</time>${value}</p>
    ${a.ack_comment ? `<p class="comment">“${esc(a.ack_comment)}”</p>` : ""}
    <div class="actions">
      <button type="button" data-action="ack" data-id="${a.alert_id}" class="write"${hide}>${esc(t("alerts.ack"))}</button>
      <button type="button" data-action="assign" data-id="${a.alert_id}" class="write"${hide}>${esc(t("alerts.assign"))}</button>
      <button type="button" data-action="resolve" data-id="${a.alert_id}" class="write"${hide}>${esc(t("alerts.resolve"))}</button>
      <button type="button" data-action="silence" data-id="${a.alert_id}" class="write"${hide}>${esc(t("alerts.silence"))}</button>
      <button type="button" data-action="history" data-id="${a.alert_id}" aria-expanded="${history ? "true" : "false"}">${esc(t("alerts.history"))}</button>
    </div>
    ${history ? timeline(history, tz) : ""}
  </article>`;
}

function timeline(entries, tz) {
  return `<ol class="timeline">${entries.map((h) => `<li><time datetime="${esc(h.at)}">${esc(fmtTime(h.at, tz, { seconds: true }))}</time>
    <span class="to">${esc(tValue("transition", h.to_state))}</span>${h.actor ? ` · ${esc(h.actor)}` : ""}${h.comment ? ` · “${esc(h.comment)}”` : ""}</li>`).join("")}</ol>`;
}

function silenceDialog(app, alert, onCreated) {
  const dialog = document.createElement("dialog");
  dialog.className = "silence-dialog";
  const initial = alert ? [["rule_id", "=", alert.rule_id], ...(alert.site_id ? [["site_id", "=", alert.site_id]] : [])]
    : [["site_id", "=", ""]];
  dialog.innerHTML = `<form>
    <h2>${esc(t("silences.new"))}</h2>
    <fieldset><legend>${esc(t("silences.matchers"))}</legend><div class="matchers"></div>
      <button type="button" data-role="add">${esc(t("silences.addMatcher"))}</button></fieldset>
    <label>${esc(t("silences.duration"))} <select name="duration">${DURATIONS.map(([k, s], i) => `<option value="${s}"${i === 1 ? " selected" : ""}>${esc(t(`duration.${k}`))}</option>`).join("")}</select></label>
    <label>${esc(t("silences.comment"))} <textarea name="comment" rows="2"></textarea></label>
    <div class="preview" aria-live="polite"></div>
    <div class="buttons">
      <button type="button" data-role="cancel">${esc(t("common.cancel"))}</button>
      <button type="button" data-role="preview">${esc(t("silences.preview"))}</button>
      <button type="submit" class="primary">${esc(t("silences.create"))}</button>
    </div></form>`;
  document.body.append(dialog);
  const rows = dialog.querySelector(".matchers");
  const addRow = ([label, op, value]) => {
    const row = document.createElement("div");
    row.className = "matcher";
    row.innerHTML = `<input name="label" list="matcher-labels" value="${esc(label)}" aria-label="${esc(t("silences.label"))}">
      <select name="op" aria-label="${esc(t("silences.op"))}">${["=", "!=", "=~", "!~"].map((o) => `<option${o === op ? " selected" : ""}>${o}</option>`).join("")}</select>
      <input name="value" value="${esc(value)}" aria-label="${esc(t("silences.value"))}">
      <button type="button" data-role="remove" aria-label="${esc(t("silences.removeMatcher"))}">×</button>`;
    rows.append(row);
  };
  initial.forEach(addRow);
  const datalist = document.createElement("datalist");
  datalist.id = "matcher-labels";
  datalist.innerHTML = MATCHER_LABELS.map((l) => `<option value="${l}">`).join("");
  dialog.append(datalist);
  const matchers = () => [...rows.querySelectorAll(".matcher")].map((r) => ({
    label: r.querySelector("[name=label]").value.trim(), op: r.querySelector("[name=op]").value,
    value: r.querySelector("[name=value]").value,
  }));
  const previewEl = dialog.querySelector(".preview");
  dialog.addEventListener("click", async (event) => {
    const role = event.target.closest("button")?.dataset.role;
    if (role === "add") addRow(["", "=", ""]);
    else if (role === "remove") event.target.closest(".matcher").remove();
    else if (role === "cancel") dialog.close();
    else if (role === "preview") {
      try {
        const result = await post("/silences/preview", { matchers: matchers() });
        previewEl.dataset.matched = String(result.matched);
        previewEl.innerHTML = `<p>${esc(t("silences.wouldMatch", { n: result.matched }))}</p>
          <ul>${result.alerts.slice(0, 10).map((a) => `<li>${esc(a.summary)}</li>`).join("")}</ul>`;
      } catch (error) {
        app.fail(error);
      }
    }
  });
  dialog.querySelector("form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const seconds = Number(dialog.querySelector("[name=duration]").value);
    try {
      const created = await post("/silences", {
        matchers: matchers(), ends_at: new Date(Date.now() + seconds * 1000).toISOString(),
        comment: dialog.querySelector("[name=comment]").value,
      });
      app.toast(t("silences.created", { id: created.silence_id }));
      dialog.close();
      await onCreated();
    } catch (error) {
      app.fail(error);
    }
  });
  dialog.addEventListener("close", () => dialog.remove());
  dialog.showModal();
  rows.querySelector("input")?.focus();
}
