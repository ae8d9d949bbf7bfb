// Incineration: per plant and line, the local day's half-hourly (EU) and hourly (GB) averages of a pollutant
// against the GB 18485-2014 and 2010/75/EU limits (mark lines), the compliance verdicts, CSV and PNG download.
// Limits and verdicts come from /plants/{id}/compliance (processors/compliance.py), never from this page.
import { get, getBlob, query } from "../api.js";
import { chart, limitLine, maxWithLimits, spreadLabels } from "../charts.js";
import { esc, fmtHour, fmtNum, fmtTime, localDay, t, translate, tValue } from "../i18n.js";
import { saveAs } from "../reports.js";

const LIMIT_COLORS = { "gb.1h": "#c0392b", "gb.24h": "#e67e22", "eu.half_hour_a": "#8e44ad", "eu.daily": "#2c3e50",
  "eu.half_hour_b": "#16a085", "eu.10min": "#7f8c8d", "eu.co_24h": "#7f8c8d" };

export function render(view, app) {
  const abort = new AbortController();
  const plants = app.sitesOfKind("plant").sort((a, b) => a.name.localeCompare(b.name));
  const first = plants.find((p) => p.site_id === app.param("plant")) ?? plants[0];
  view.innerHTML = `
    <div class="page-head"><h1 data-i18n="inc.title">Incineration</h1>
      <label><span data-i18n="inc.plant">Plant</span> <select name="plant">${plants.map((p) => `<option value="${esc(p.site_id)}"${p === first ? " selected" : ""}>${esc(p.name)}</option>`).join("")}</select></label>
      <label><span data-i18n="common.day">Day</span> <input type="date" name="day" value="${app.param("day") ?? localDay(new Date(), first?.timezone)}"></label>
      <label><span data-i18n="inc.line">Line</span> <select name="line"></select></label>
      <label><span data-i18n="inc.pollutant">Pollutant</span> <select name="pollutant"></select></label></div>
    ${plants.length ? "" : `<p class="empty" data-i18n="inc.none">No plant is registered.</p>`}
    <div class="verdicts"></div>
    <figure><figcaption class="chart-title"></figcaption><div class="chart inc-chart" role="img" data-i18n-label="inc.chartLabel"></div></figure>
    <div class="buttons"><button type="button" data-action="csv" data-i18n="inc.csv">Download CSV</button>
      <button type="button" data-action="png" data-i18n="inc.png">Download PNG</button></div>
    <div class="table-wrap"><table class="checks"><thead><tr><th data-i18n="inc.line">Line</th><th data-i18n="inc.standard">Standard</th>
      <th data-i18n="inc.pollutant">Pollutant</th><th data-i18n="inc.limitKey">Limit</th><th data-i18n="inc.worst">Worst</th>
      <th data-i18n="inc.verdict">Verdict</th></tr></thead><tbody></tbody></table></div>`;
  translate(view);
  const plot = chart(view.querySelector(".inc-chart"));
  const [plantSel, daySel, lineSel, pollSel] = ["plant", "day", "line", "pollutant"].map((n) => view.querySelector(`[name=${n}]`));
  let report = null;
  let averages = [];

  async function load() {
    if (!plantSel.value || !daySel.value) {
      view.dataset.ready = "1";
      return;
    }
    try {
      const base = `/plants/${encodeURIComponent(plantSel.value)}`;
      [report, averages] = await Promise.all([
        get(`${base}/compliance${query({ day: daySel.value })}`, abort.signal),
        get(`${base}/averages${query({ day: daySel.value, period: ["30min", "1h", "1d"] })}`, abort.signal).then((r) => r.items),
      ]);
      const lines = report.lines.map((l) => l.line_id);
      lineSel.innerHTML = lines.map((l) => `<option value="${esc(l)}">${esc(app.siteName(l))}</option>`).join("");
      verdicts();
      pollutants();
      draw();
    } catch (error) {
      app.fail(error);
    }
    view.dataset.ready = "1"; // tests and screenshots wait for it
  }

  function verdicts() {
    const verdict = (s) => `<span class="verdict ${esc(s)}">${esc(tValue("verdict", s))}</span>`;
    view.querySelector(".verdicts").innerHTML = `<p>${esc(t("inc.overall"))}: GB 18485 ${verdict(report.status.gb)} · 2010/75/EU ${verdict(report.status.eu)}</p>`
      + report.lines.map((l) => `<p>${esc(app.siteName(l.line_id))}: ${esc(t("inc.regulatory"))} ${verdict(l.regulatory?.status ?? "unknown")}${l.pending ? ` · ${esc(t("inc.pending"))}` : ""}</p>`).join("");
    view.querySelector("tbody").innerHTML = report.lines.flatMap((l) => l.checks.map((c) => `<tr>
      <td>${esc(app.siteName(l.line_id))}</td><td>${esc(tValue("standard", c.standard))}</td><td>${esc(tValue("pollutant", c.pollutant))}</td>
      <td>${esc(tValue("limit", c.limit_key))} ${fmtNum(c.limit_mg_m3, 1)} mg/m³</td>
      <td>${c.worst ? `${fmtNum(c.worst.value_mg_m3, 2)} mg/m³ (${esc(fmtTime(c.worst.at, report.timezone, { date: false }))})` : "—"}</td>
      <td>${verdict(c.status)}</td></tr>`)).join("") || `<tr><td colspan="6" class="empty">${esc(t("inc.noData"))}</td></tr>`;
  }

  function pollutants() {
    const line = report.lines.find((l) => l.line_id === lineSel.value);
    const found = [...new Set([...(line?.checks ?? []).map((c) => c.pollutant),
      ...averages.filter((a) => (a.line_id ?? a.device_id) === lineSel.value).map((a) => a.pollutant)])].sort();
    // keep the pollutant shown; else the first one that exceeded a limit (what a supervisor looks for first)
    const exceeded = (line?.checks ?? []).find((c) => c.status === "exceeded")?.pollutant;
    const keep = found.includes(pollSel.value) ? pollSel.value : exceeded ?? found[0];
    pollSel.innerHTML = found.map((p) => `<option value="${esc(p)}"${p === keep ? " selected" : ""}>${esc(tValue("pollutant", p))}</option>`).join("");
  }

  function draw() {
    const tz = report.timezone;
    const lineId = lineSel.value;
    const pollutant = pollSel.value;
    const line = report.lines.find((l) => l.line_id === lineId);
    const rows = averages.filter((a) => (a.line_id ?? a.device_id) === lineId && a.pollutant === pollutant);
    const series = (period, standard) => rows.filter((a) => a.period === period && a.standard === standard)
      .map((a) => [a.period_start, a.valid ? a.avg_zs_mg_m3 : null]);
    const checks = (line?.checks ?? []).filter((c) => c.pollutant === pollutant && c.limit_mg_m3 !== null);
    const limitLines = checks.map((c) => limitLine(c.limit_mg_m3, `${c.standard.toUpperCase()} ${tValue("limit", c.limit_key)}`,
      LIMIT_COLORS[c.limit_key] ?? "#c0392b"));
    // the daily averages as judged (EU: validated, the confidence interval subtracted), not the stored raw mean
    const daily = checks.filter((c) => ["gb.24h", "eu.daily"].includes(c.limit_key) && c.worst).map((c) => limitLine(
      +c.worst.value_mg_m3.toFixed(2), `${c.standard.toUpperCase()} ${t("inc.dailyAverage")}`, "#2980b9", false));
    view.querySelector(".chart-title").textContent = t("inc.chartTitle", {
      pollutant: tValue("pollutant", pollutant), line: app.siteName(lineId), day: daySel.value });
    plot.set({
      animation: false,
      grid: { left: 60, right: 24, top: 48, bottom: 40 },
      legend: { top: 0 },
      tooltip: { trigger: "axis", valueFormatter: (v) => (v === null ? "—" : `${fmtNum(v, 2)} mg/m³`) },
      xAxis: { type: "time", axisLabel: { formatter: (v) => fmtHour(v, tz), hideOverlap: true } },
      yAxis: { type: "value", name: "mg/m³", max: maxWithLimits([...limitLines, ...daily]) },
      series: [
        { type: "line", name: t("inc.halfHourly"), showSymbol: false, data: series("30min", "eu"),
          markLine: { symbol: "none", silent: true, data: spreadLabels([...limitLines, ...daily]) } },
        { type: "line", name: t("inc.hourly"), showSymbol: false, step: "start", data: series("1h", "gb") },
      ],
    });
    plot.instance.getDom().dataset.limitLines = String(limitLines.length);
  }

  async function download(kind) {
    const name = `${plantSel.value}-${daySel.value}`;
    try {
      const data = kind === "csv"
        ? await getBlob(`/plants/${encodeURIComponent(plantSel.value)}/compliance${query({ day: daySel.value, format: "csv" })}`)
        : plot.instance.getDataURL({ type: "png", pixelRatio: 2, backgroundColor: "#fff" });
      saveAs(data, `${name}${kind === "png" ? `-${lineSel.value}-${pollSel.value}` : ""}.${kind}`);
    } catch (error) {
      app.fail(error);
    }
  }

  plantSel.addEventListener("change", load);
  daySel.addEventListener("change", load);
  lineSel.addEventListener("change", () => { pollutants(); draw(); });
  pollSel.addEventListener("change", draw);
  // tied to the page's life (abort): the view element outlives the page, and a listener left on it would download
  // once per earlier visit
  view.addEventListener("click", (e) => {
    const action = e.target.closest("button[data-action]")?.dataset.action;
    if (action) download(action);
  }, { signal: abort.signal });
  load();
  return () => {
    abort.abort();
    plot.dispose();
  };
}
