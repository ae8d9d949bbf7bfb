// Sorting points: per point and local day, RFID deposits, households taking part (participation rate) and the
// AI cameras' detections by type (/reports/sorting-points).
import { get, query } from "../api.js";
import { chart } from "../charts.js";
import { esc, fmtNum, localDay, t, translate, tValue } from "../i18n.js";

export function render(view, app) {
  const abort = new AbortController();
  const scopes = [...app.sitesOfKind("district"), ...app.sitesOfKind("estate"), ...app.sitesOfKind("urban_village")];
  const first = scopes.find((s) => s.site_id === app.param("site")) ?? scopes[0];
  view.innerHTML = `
    <div class="page-head"><h1 data-i18n="sorting.title">Sorting points</h1>
      <label><span data-i18n="sorting.area">Area</span> <select name="site">${scopes.map((s) => `<option value="${esc(s.site_id)}"${s === first ? " selected" : ""}>${esc(s.name)}</option>`).join("")}</select></label>
      <label><span data-i18n="common.day">Day</span> <input type="date" name="day" value="${app.param("day") ?? localDay(new Date(), first?.timezone)}"></label></div>
    <div class="charts two">
      <figure><figcaption data-i18n="sorting.participation">Participation</figcaption><div class="chart" data-chart="participation" role="img" data-i18n-label="sorting.participation"></div></figure>
      <figure><figcaption data-i18n="sorting.detections">Camera detections</figcaption><div class="chart" data-chart="detections" role="img" data-i18n-label="sorting.detections"></div></figure>
    </div>
    <div class="table-wrap"><table class="points"><thead><tr><th data-i18n="sorting.point">Point</th>
      <th data-i18n="sorting.households">Households</th><th data-i18n="sorting.active">Active</th>
      <th data-i18n="sorting.rate">Participation</th><th data-i18n="sorting.deposits">Deposits</th>
      <th data-i18n="sorting.weight">Weight by category</th><th data-i18n="sorting.detections">Detections</th></tr></thead><tbody></tbody></table></div>`;
  translate(view);
  const participation = chart(view.querySelector("[data-chart=participation]"));
  const detections = chart(view.querySelector("[data-chart=detections]"));
  const site = view.querySelector("[name=site]");
  const day = view.querySelector("[name=day]");

  async function show() {
    if (!site.value || !day.value) {
      view.dataset.ready = "1";
      return;
    }
    try {
      const report = await get(`/reports/sorting-points${query({ site_id: site.value, day: day.value })}`, abort.signal);
      const points = report.points;
      // the axis names points by id (short, and what differs between them); the table has their names
      const names = points.map((p) => p.point_id);
      const labels = { rotate: points.length > 8 ? 30 : 0, interval: 0, hideOverlap: true };
      participation.set({
        animation: false, grid: { left: 10, right: 16, top: 16, bottom: 10, containLabel: true },
        tooltip: { trigger: "axis", valueFormatter: (v) => `${fmtNum(v, 1)} %` },
        xAxis: { type: "category", data: names, axisLabel: labels },
        yAxis: { type: "value", max: 100, axisLabel: { formatter: "{value} %" } },
        series: [{ type: "bar", name: t("sorting.rate"),
          data: points.map((p) => (p.participation_rate === null ? null : +(p.participation_rate * 100).toFixed(1))) }],
      });
      const types = [...new Set(points.flatMap((p) => Object.keys(p.detections_by_type)))].sort();
      detections.set({
        animation: false, grid: { left: 10, right: 16, top: 56, bottom: 10, containLabel: true }, legend: { top: 0 },
        tooltip: { trigger: "axis" },
        xAxis: { type: "category", data: names, axisLabel: labels },
        yAxis: { type: "value", minInterval: 1 },
        series: types.map((type) => ({ type: "bar", stack: "d", name: tValue("detection", type),
          data: points.map((p) => p.detections_by_type[type] ?? 0) })),
      });
      view.querySelector("tbody").innerHTML = points.map((p) => `<tr><td>${esc(p.name ?? p.point_id)}</td>
        <td>${p.households_registered ?? "—"}</td><td>${p.households_active}</td>
        <td>${p.participation_rate === null ? "—" : `${fmtNum(p.participation_rate * 100, 1)} %`}</td><td>${p.deposits}</td>
        <td>${Object.entries(p.weight_kg_by_category).map(([c, kg]) => `${esc(tValue("category", c))} ${fmtNum(kg, 1)} kg`).join(", ") || "—"}</td>
        <td>${Object.entries(p.detections_by_type).map(([k, n]) => `${esc(tValue("detection", k))} ${n}`).join(", ") || "—"}</td></tr>`).join("")
        || `<tr><td colspan="7" class="empty">${esc(t("sorting.none"))}</td></tr>`;
    } catch (error) {
      app.fail(error);
    }
    view.dataset.ready = "1"; // tests and screenshots wait for it
  }
  site.addEventListener("change", show);
  day.addEventListener("change", show);
  show();
  return () => {
    abort.abort();
    participation.dispose();
    detections.dispose();
  };
}
