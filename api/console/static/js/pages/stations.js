// Transfer stations: boundary H2S, NH3 (GB 14554-93) and noise (GB 12348-2008, day and night) over the last 24 h,
// 5-minute averages, with the station's effective limits (/sites/{id}/limits) as mark lines.
import { get, getAll, query } from "../api.js";
import { chart, limitLine, maxWithLimits, spreadLabels } from "../charts.js";
import { esc, fmtHour, fmtNum, fmtTime, t, translate } from "../i18n.js";

const METRICS = [
  { metric: "h2s_mg_m3", unit: "mg/m³", digits: 3 },
  { metric: "nh3_mg_m3", unit: "mg/m³", digits: 2 },
  { metric: "noise_dba", unit: "dB(A)", digits: 1 },
];

export function render(view, app) {
  const abort = new AbortController();
  const stations = app.sitesOfKind("transfer_station").sort((a, b) => a.name.localeCompare(b.name));
  const wanted = app.param("site");
  view.innerHTML = `
    <div class="page-head"><h1 data-i18n="stations.title">Transfer stations</h1>
      <label><span data-i18n="stations.station">Station</span> <select name="station">
        ${stations.map((s) => `<option value="${esc(s.site_id)}"${s.site_id === wanted ? " selected" : ""}>${esc(s.name)}</option>`).join("")}</select></label>
      <span class="summary"></span></div>
    ${stations.length ? "" : `<p class="empty" data-i18n="stations.none">No transfer station is registered.</p>`}
    <div class="charts">${METRICS.map((m) => `<figure><figcaption data-i18n="metric.${m.metric}"></figcaption>
      <div class="chart" data-metric="${m.metric}" role="img" data-i18n-label="metric.${m.metric}"></div></figure>`).join("")}</div>`;
  translate(view);
  const charts = METRICS.map((m) => ({ ...m, plot: chart(view.querySelector(`[data-metric=${m.metric}]`)) }));
  const select = view.querySelector("[name=station]");
  let generation = 0;

  async function show(siteId) {
    const mine = ++generation;
    const tz = app.siteTz(siteId);
    const to = new Date();
    const from = new Date(to.getTime() - 24 * 3600 * 1000);
    try {
      const [devices, limits] = await Promise.all([
        getAll(`/devices${query({ site_id: siteId, kind: "transfer_station" })}`, 50, abort.signal),
        get(`/sites/${encodeURIComponent(siteId)}/limits`, abort.signal),
      ]);
      if (mine !== generation) return;
      const device = devices[0];
      view.querySelector(".summary").textContent = device
        ? t("stations.device", { id: device.device_id, seen: fmtTime(device.last_received, tz) }) : t("stations.noDevice");
      await Promise.all(charts.map(async (c) => {
        const history = device ? await get(`/devices/${encodeURIComponent(device.device_id)}/history${query({
          metric: c.metric, bucket: "5m", from: from.toISOString(), to: to.toISOString(), timezone: tz })}`, abort.signal)
          : { points: [] };
        if (mine !== generation) return;
        const lines = limits.limits.filter((l) => l.metric === c.metric).map((l) => limitLine(l.threshold,
          `${l.period ? t(`period.${l.period}`) : t("stations.limit")} ${l.source ?? ""}`.trim(),
          l.period === "night" ? "#8e44ad" : "#c0392b"));
        c.plot.set({
          animation: false,
          grid: { left: 60, right: 24, top: 36, bottom: 40 },
          tooltip: { trigger: "axis", valueFormatter: (v) => `${fmtNum(v, c.digits)} ${c.unit}` },
          xAxis: { type: "time", min: from.getTime(), max: to.getTime(), axisLabel: { formatter: (v) => fmtHour(v, tz), hideOverlap: true } },
          yAxis: { type: "value", name: c.unit, scale: c.metric === "noise_dba", max: maxWithLimits(lines) },
          series: [{ type: "line", name: t(`metric.${c.metric}`), showSymbol: false, connectNulls: false,
            data: history.points.map((p) => [p.ts, p.value]), markLine: { symbol: "none", silent: true, data: spreadLabels(lines) } }],
        });
      }));
    } catch (error) {
      app.fail(error);
    }
    view.dataset.ready = "1"; // tests and screenshots wait for it
  }
  select.addEventListener("change", () => show(select.value));
  if (stations.length) show(select.value);
  else view.dataset.ready = "1";
  return () => {
    abort.abort();
    charts.forEach((c) => c.plot.dispose());
  };
}
