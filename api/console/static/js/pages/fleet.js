// Fleet: sweepers and collection trucks at their last position on a plain lon/lat plot (no map tiles are reachable
// on site) — sweepers as dots coloured by state of charge, trucks as triangles, offline ones grey; below, the device
// table (kind, site, online, last seen), filterable.
import { get, getAll, query } from "../api.js";
import { chart } from "../charts.js";
import { esc, fmtNum, fmtTime, t, translate } from "../i18n.js";

const KINDS = ["sweeper", "transfer_station", "bin", "camera", "cems", "truck"];

export function render(view, app) {
  const abort = new AbortController();
  view.innerHTML = `
    <div class="page-head"><h1 data-i18n="fleet.title">Fleet</h1><span class="summary"></span></div>
    <div class="chart fleet-chart" role="img" data-i18n-label="fleet.chartLabel"></div>
    <form class="filters" role="search">
      <label><span data-i18n="fleet.search">Search</span> <input name="q" type="search" autocomplete="off" data-i18n-placeholder="fleet.searchHint"></label>
      <label><span data-i18n="fleet.kind">Kind</span> <select name="kind"><option value="" data-i18n="common.all">All</option>
        ${KINDS.map((k) => `<option value="${k}" data-i18n="kind.${k}">${k}</option>`).join("")}</select></label>
      <label><span data-i18n="fleet.status">Status</span> <select name="online"><option value="" data-i18n="common.all">All</option>
        <option value="true" data-i18n="fleet.online">Online</option><option value="false" data-i18n="fleet.offline">Offline</option></select></label>
    </form>
    <div class="table-wrap"><table class="devices"><thead><tr>
      <th data-i18n="fleet.device">Device</th><th data-i18n="fleet.kind">Kind</th><th data-i18n="fleet.site">Site</th>
      <th data-i18n="fleet.status">Status</th><th data-i18n="fleet.lastSeen">Last seen</th></tr></thead><tbody></tbody></table></div>
    <p class="more" hidden></p>`;
  translate(view);
  const plot = chart(view.querySelector(".fleet-chart"));
  const form = view.querySelector(".filters");
  let devices = [];

  const drawTable = () => {
    const data = new FormData(form);
    const q = String(data.get("q") || "").toLowerCase();
    const kind = data.get("kind");
    const online = data.get("online");
    const rows = devices.filter((d) => (!kind || d.kind === kind)
      && (!online || String(d.online === true) === online)
      && (!q || d.device_id.toLowerCase().includes(q) || (d.name ?? "").toLowerCase().includes(q)
        || app.siteName(d.site_id).toLowerCase().includes(q)));
    const shown = rows.slice(0, 300);
    view.querySelector("tbody").innerHTML = shown.map((d) => `<tr>
      <td>${esc(d.device_id)}${d.name ? ` <span class="sub">${esc(d.name)}</span>` : ""}</td>
      <td>${esc(t(`kind.${d.kind}`))}</td><td>${esc(d.site_id ? app.siteName(d.site_id) : "—")}</td>
      <td><span class="dot ${d.online === true ? "on" : "off"}"></span>${esc(t(d.online === true ? "fleet.online" : d.online === false ? "fleet.offline" : "fleet.never"))}</td>
      <td>${esc(fmtTime(d.last_received, app.siteTz(d.site_id)))}</td></tr>`).join("");
    const more = view.querySelector(".more");
    more.hidden = rows.length <= shown.length;
    more.textContent = t("fleet.more", { shown: shown.length, total: rows.length });
  };
  form.addEventListener("input", drawTable);
  form.addEventListener("submit", (e) => e.preventDefault());

  const plotted = (async () => {
    try {
      const [sweepers, trucks] = await Promise.all(["sweeper", "truck"].map(
        (kind) => get(`/fleet/positions${query({ kind })}`, abort.signal)));
      drawPlot(plot, sweepers, trucks, app);
      const count = (key, positions) => t(key, { n: positions.items.length,
        on: positions.items.filter((p) => p.online).length });
      view.querySelector(".summary").textContent = [count("fleet.summary", sweepers),
        ...(trucks.items.length ? [count("fleet.trucksSummary", trucks)] : [])].join(" · ");
    } catch (error) {
      app.fail(error);
    }
  })();
  const listed = getAll("/devices", 20000, abort.signal).then((list) => {
    devices = list;
    drawTable();
  }).catch(app.fail);
  Promise.all([plotted, listed]).then(() => { view.dataset.ready = "1"; }); // tests and screenshots wait for it
  return () => {
    abort.abort();
    plot.dispose();
  };
}

function drawPlot(plot, sweepers, trucks, app) {
  const placed = (positions) => positions.items.filter((p) => p.lat !== null && p.lon !== null);
  const point = (p) => [p.lon, p.lat, p.soc_pct, p.device_id, p.name ?? "", p.last_seen, p.site_id];
  const online = placed(sweepers).filter((p) => p.online).map(point);
  const trucksOnline = placed(trucks).filter((p) => p.online).map(point);
  const offline = [...placed(sweepers), ...placed(trucks)].filter((p) => !p.online).map(point);
  const extent = joinExtents(sweepers.extent, trucks.extent);
  // the city's extent with a margin, on round values (axis ends otherwise read 22.5658)
  const margin = (lo, hi) => Math.max((hi - lo) * 0.05, 0.005);
  const axis = (name, lo, hi, gap) => ({ type: "value", name, scale: true, nameLocation: "middle", nameGap: gap,
    ...(extent ? { min: Math.floor((lo - margin(lo, hi)) * 100) / 100, max: Math.ceil((hi + margin(lo, hi)) * 100) / 100 } : {}) });
  plot.set({
    animation: false,
    grid: { left: 70, right: 20, top: 30, bottom: 95 },
    tooltip: { formatter: (p) => `${esc(p.value[3])} ${esc(p.value[4])}${p.value[2] === null ? "" : `<br>${esc(t("fleet.soc"))}: ${fmtNum(p.value[2], 0)} %`}<br>${esc(fmtTime(p.value[5], app.siteTz(p.value[6])))}` },
    legend: { data: [t("fleet.online"), t("fleet.trucks"), t("fleet.offline")], top: 0 },
    xAxis: axis(t("fleet.lon"), extent?.min_lon, extent?.max_lon, 28),
    yAxis: axis(t("fleet.lat"), extent?.min_lat, extent?.max_lat, 52),
    visualMap: { type: "continuous", min: 0, max: 100, dimension: 2, seriesIndex: 0, orient: "horizontal", left: "center",
      bottom: 0, itemHeight: 120, text: ["100 %", `${t("fleet.soc")} 0 %`], calculable: false,
      inRange: { color: ["#c0392b", "#f1c40f", "#27ae60"] } },
    series: [
      { name: t("fleet.online"), type: "scatter", symbolSize: 8, data: online, itemStyle: { color: "#27ae60" },
        large: online.length > 2000 },
      { name: t("fleet.trucks"), type: "scatter", symbol: "triangle", symbolSize: 10, data: trucksOnline,
        itemStyle: { color: "#1f4e79" }, large: trucksOnline.length > 2000 },
      { name: t("fleet.offline"), type: "scatter", symbolSize: 8, data: offline, itemStyle: { color: "#9e9e9e" } },
    ],
  });
}

// the extent of both fleets (either may have none)
function joinExtents(a, b) {
  if (!a || !b) return a ?? b;
  return { min_lat: Math.min(a.min_lat, b.min_lat), max_lat: Math.max(a.max_lat, b.max_lat),
    min_lon: Math.min(a.min_lon, b.min_lon), max_lon: Math.max(a.max_lon, b.max_lon) };
}
