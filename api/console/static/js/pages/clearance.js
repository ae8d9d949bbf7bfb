// Daily clearance (日产日清, issue 15): for a district or street and a local day, every scheduled point and
// category's status, the streets' counts and on-time share, the planned routes' adherence per truck, and the
// tonnage lifted at the points against the tonnage weighed at the area's weighbridges (/reports/clearance). The
// judgement is the API's (sanitel/clearance.py judge_clearance); this page only shows it.
import { get, query } from "../api.js";
import { chart } from "../charts.js";
import { esc, fmtNum, fmtTime, t, translate, tValue } from "../i18n.js";
import { areaOptions, csvLink, handleCsvLinks, isDay, reportAreas, yesterday } from "../reports.js";

// The statuses the report gives, worst first; a status the API adds later is shown by its own name after these.
const STATUSES = ["missed", "overdue", "late", "on_time", "pending", "no_data"];
const NOT_STATUSES = new Set(["street_id", "scheduled", "on_time_pct"]); // the other fields of a street's counts

function status(value) {
  return `<span class="status" data-status="${esc(value)}">${esc(tValue("status", value))}</span>`;
}

// Status columns: those the API counts, in STATUSES order, then any unknown one.
function statusColumns(totals) {
  const counted = Object.keys(totals).filter((k) => !NOT_STATUSES.has(k) && typeof totals[k] === "number");
  return [...STATUSES.filter((s) => counted.includes(s)), ...counted.filter((s) => !STATUSES.includes(s)).sort()];
}

// Every category named under its bar: wrapped at spaces to its slot ("Unknown category"), or slanted where a slot is
// narrower than one word (a phone's five slots: "Hazardous" would break inside the word).
function categoryLabels(chartWidth, count) {
  const slot = (chartWidth - 80) / Math.max(1, count);
  return slot < 80 ? { interval: 0, rotate: 35 } : { interval: 0, overflow: "break", width: slot };
}

const pct = (value) => (value === null || value === undefined ? "—" : `${fmtNum(value, 1)} %`);
const kg = (value) => `${fmtNum(value, 1)} kg`;

export function render(view, app) {
  const abort = new AbortController();
  const areas = reportAreas(app);
  const all = [...areas.districts, ...areas.streets];
  const first = all.find((s) => s.site_id === app.param("site")) ?? all[0];
  view.innerHTML = `
    <div class="page-head"><h1 data-i18n="clearance.title">Daily clearance</h1>
      <label><span data-i18n="report.area">District or street</span> <select name="site">${areaOptions(areas, first?.site_id)}</select></label>
      <label><span data-i18n="common.day">Day</span> <input type="date" name="day" required value="${esc(app.param("day") ?? yesterday(first?.timezone))}"></label>
      <span class="summary" data-role="as-of"></span></div>
    ${all.length ? "" : `<p class="empty" data-i18n="clearance.noArea">No district or street is registered.</p>`}
    <dl class="stats" data-role="totals"></dl>
    <div class="charts two">
      <figure><figcaption data-i18n="clearance.tonnage">Tonnage picked up and weighed</figcaption>
        <div class="chart" data-chart="tonnage" role="img" data-i18n-label="clearance.tonnageChart"></div></figure>
      <section><div class="section-head"><h2 data-i18n="clearance.tonnageTable">Tonnage by category</h2><span data-role="csv-tonnage"></span></div>
        <div class="table-wrap"><table class="tonnage"><thead><tr><th data-i18n="clearance.category">Category</th>
          <th data-i18n="clearance.collected">Picked up (lifter scale)</th><th data-i18n="clearance.received">Weighed (weighbridge)</th>
          <th data-i18n="clearance.difference">Difference</th></tr></thead><tbody></tbody></table></div></section>
    </div>
    <section><div class="section-head"><h2 data-i18n="clearance.routes">Route adherence per truck</h2><span data-role="csv-routes"></span></div>
      <div class="table-wrap"><table class="routes"><thead><tr><th data-i18n="clearance.route">Route</th>
        <th data-i18n="clearance.truck">Truck</th><th data-i18n="clearance.planned">Planned</th>
        <th data-i18n="clearance.visited">Visited</th><th data-i18n="clearance.inOrder">In plan order</th>
        <th data-i18n="clearance.adherence">Adherence</th><th data-i18n="clearance.skipped">Skipped</th></tr></thead>
        <tbody></tbody></table></div></section>
    <section><div class="section-head"><h2 data-i18n="clearance.streets">Streets</h2><span data-role="csv-streets"></span></div>
      <div class="table-wrap"><table class="streets"><thead></thead><tbody></tbody></table></div></section>
    <section><div class="section-head"><h2 data-i18n="clearance.points">Sorting points</h2><span data-role="csv-points"></span></div>
      <div class="table-wrap"><table class="points"><thead><tr><th data-i18n="clearance.point">Point</th>
        <th data-i18n="clearance.street">Street</th><th data-i18n="clearance.category">Category</th>
        <th data-i18n="clearance.deadline">Deadline</th><th data-i18n="clearance.status">Status</th>
        <th data-i18n="clearance.firstPickup">First pickup</th><th data-i18n="clearance.pickups">Pickups</th>
        <th data-i18n="clearance.weight">Weight</th></tr></thead><tbody></tbody></table></div></section>
    <section class="invalid" hidden><h2 data-i18n="clearance.invalid">Schedules that do not validate</h2><ul></ul></section>
    <p class="sub" data-i18n="clearance.help"></p>`;
  translate(view);
  const tonnage = chart(view.querySelector("[data-chart=tonnage]"));
  const site = view.querySelector("[name=site]");
  const day = view.querySelector("[name=day]");
  const stopCsvLinks = handleCsvLinks(view, app);
  let generation = 0;

  async function show() {
    const mine = ++generation;
    delete view.dataset.ready;
    if (!site.value || !isDay(day.value)) {
      view.dataset.ready = "1";
      return;
    }
    try {
      const path = `/reports/clearance${query({ site_id: site.value, day: day.value })}`;
      const report = await get(path, abort.signal);
      if (mine !== generation) return;
      const tz = report.timezone;
      view.querySelector("[data-role=as-of]").textContent = t(report.day_over ? "clearance.final" : "clearance.running",
        { time: fmtTime(report.as_of, tz) });
      totals(report.totals);
      streets(report.streets, statusColumns(report.totals));
      points(report.points, tz);
      routes(report.routes);
      weights(report.tonnage);
      invalid(report.invalid_schedules ?? []);
      for (const section of ["points", "streets", "routes", "tonnage"]) {
        const table = t(`clearance.${section}`);
        view.querySelector(`[data-role=csv-${section}]`).innerHTML = csvLink(`${path}&format=csv&section=${section}`,
          `clearance-${report.site_id}-${report.day}-${section}.csv`, table);
      }
    } catch (error) {
      app.fail(error);
    }
    if (mine === generation) view.dataset.ready = "1"; // tests and screenshots wait for it
  }

  function totals(counts) {
    const stat = (label, value, extra = "") => `<div${extra}><dt>${label}</dt><dd>${value}</dd></div>`;
    view.querySelector("[data-role=totals]").innerHTML = stat(esc(t("clearance.onTimePct")), esc(pct(counts.on_time_pct)), ` data-total="on_time_pct"`)
      + stat(esc(t("clearance.scheduled")), counts.scheduled, ` data-total="scheduled"`)
      + statusColumns(counts).map((s) => stat(status(s), counts[s], ` data-total="${esc(s)}"`)).join("");
  }

  function streets(rows, columns) {
    const table = view.querySelector("table.streets");
    table.querySelector("thead").innerHTML = `<tr><th>${esc(t("clearance.street"))}</th><th>${esc(t("clearance.scheduled"))}</th>
      ${columns.map((s) => `<th>${status(s)}</th>`).join("")}<th>${esc(t("clearance.onTimePct"))}</th></tr>`;
    table.querySelector("tbody").innerHTML = rows.map((r) => `<tr data-street="${esc(r.street_id ?? "")}">
      <td>${esc(r.street_id === null ? t("clearance.noStreet") : app.siteName(r.street_id))}</td><td>${r.scheduled}</td>
      ${columns.map((s) => `<td data-count="${esc(s)}">${r[s] ?? "—"}</td>`).join("")}<td data-col="on_time_pct">${esc(pct(r.on_time_pct))}</td></tr>`).join("")
      || `<tr><td colspan="${columns.length + 3}" class="empty">${esc(t("clearance.none"))}</td></tr>`;
  }

  function points(rows, tz) {
    view.querySelector("table.points tbody").innerHTML = rows.map((p) => `<tr data-point="${esc(p.point_id)}" data-category="${esc(p.category)}">
      <td>${esc(app.siteName(p.point_id))}</td><td>${esc(p.street_id === null ? "—" : app.siteName(p.street_id))}</td>
      <td>${esc(tValue("category", p.category))}</td><td>${esc(p.by)}</td><td>${status(p.status)}</td>
      <td>${esc(p.first_pickup_at ? fmtTime(p.first_pickup_at, tz, { date: false }) : "—")}</td>
      <td>${p.pickups}</td><td>${esc(kg(p.weight_kg))}</td></tr>`).join("")
      || `<tr><td colspan="8" class="empty">${esc(t("clearance.none"))}</td></tr>`;
  }

  function routes(rows) {
    view.querySelector("table.routes tbody").innerHTML = rows.map((r) => `<tr data-route="${esc(r.route_id)}">
      <td>${esc(r.route_id)}</td><td>${esc(r.truck_id)}</td><td>${r.planned}</td><td>${r.visited}</td><td>${r.in_plan_order}</td>
      <td data-col="adherence_pct">${esc(pct(r.adherence_pct))}</td>
      <td>${esc(r.skipped.map((p) => app.siteName(p)).join(", ") || "—")}</td></tr>`).join("")
      || `<tr><td colspan="7" class="empty">${esc(t("clearance.noRoutes"))}</td></tr>`;
  }

  function weights(rows) {
    view.querySelector("table.tonnage tbody").innerHTML = rows.map((r) => `<tr data-category="${esc(r.category)}">
      <td>${esc(tValue("category", r.category))}</td><td data-col="collected_kg">${esc(kg(r.collected_kg))}</td>
      <td data-col="received_kg">${esc(kg(r.received_kg))}</td><td data-col="difference_kg">${esc(kg(r.difference_kg))}</td></tr>`).join("")
      || `<tr><td colspan="4" class="empty">${esc(t("clearance.noTonnage"))}</td></tr>`;
    const names = rows.map((r) => tValue("category", r.category));
    tonnage.set({
      animation: false, grid: { left: 10, right: 16, top: 36, bottom: 36, containLabel: true }, legend: { bottom: 0 },
      tooltip: { trigger: "axis", valueFormatter: (v) => kg(v) },
      xAxis: { type: "category", data: names, axisLabel: categoryLabels(tonnage.instance.getWidth(), names.length) },
      yAxis: { type: "value", name: "kg" },
      series: [
        { type: "bar", name: t("clearance.collected"), data: rows.map((r) => r.collected_kg), itemStyle: { color: "#0b63b6" } },
        { type: "bar", name: t("clearance.received"), data: rows.map((r) => r.received_kg), itemStyle: { color: "#16a085" } },
      ],
      graphic: rows.length ? [] : [{ type: "text", left: "center", top: "middle", style: { text: t("clearance.noTonnage"), fill: "#5b6775" } }],
    });
    // what the chart was drawn from, for tests (a canvas has no text to read)
    tonnage.instance.getDom().dataset.drawn = JSON.stringify(rows.map((r) => [r.category, r.collected_kg, r.received_kg]));
  }

  function invalid(items) {
    const box = view.querySelector("section.invalid");
    box.hidden = items.length === 0;
    box.querySelector("ul").innerHTML = items.map((i) => `<li><strong>${esc(app.siteName(i.point_id))}</strong>: ${esc(i.error)}</li>`).join("");
  }

  site.addEventListener("change", show);
  day.addEventListener("change", show);
  show();
  return () => {
    abort.abort();
    stopCsvLinks();
    tonnage.dispose();
  };
}
