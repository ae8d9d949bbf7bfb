// The weekly street sanitation index (issue 15; docs/sanitation-index.md): per street and ISO week, the components
// (0-100, 100 = nothing went wrong), their weighted index, the ranking and the change from the week before
// (/reports/sanitation-index). Components and weights are the API's: this page names and explains the ones it
// knows and shows any other by its own name; it computes nothing but each component's share of a bar.
import { get, query } from "../api.js";
import { chart } from "../charts.js";
import { esc, fmtNum, has, t, translate, tValue } from "../i18n.js";
import { areaOptions, csvLink, handleCsvLinks, isWeek, lastWeek, reportAreas } from "../reports.js";

const COLORS = ["#0b63b6", "#d35400", "#8e44ad", "#16a085", "#b7950b", "#5d6d7e", "#c0392b"];
const CHART_STREETS = 40; // the chart ranks at most this many streets (a city has hundreds); the table has all

const score = (value) => (value === null || value === undefined ? "—" : fmtNum(value, 1));
const weightPct = (weight) => `${fmtNum(weight * 100, 0)} %`;

function change(value) {
  if (value === null || value === undefined) return `<span class="change none" title="${esc(t("index.noChange"))}">—</span>`;
  const way = value > 0 ? "up" : value < 0 ? "down" : "same";
  const arrow = { up: "▲", down: "▼", same: "=" }[way];
  const sign = { up: "+", down: "−", same: "±" }[way];
  return `<span class="change ${way}" title="${esc(t(`index.change.${way}`))}"><span aria-hidden="true">${arrow}</span> ${sign}${fmtNum(Math.abs(value), 1)}</span>`;
}

export function render(view, app) {
  const abort = new AbortController();
  const areas = reportAreas(app);
  const wanted = app.param("site") ?? "";
  const tz = app.siteTz(wanted || areas.districts[0]?.site_id);
  view.innerHTML = `
    <div class="page-head"><h1 data-i18n="index.title">Street sanitation index</h1>
      <label><span data-i18n="report.area">District or street</span> <select name="site">${areaOptions(areas, wanted, t("index.allStreets"))}</select></label>
      <label><span data-i18n="index.week">Week</span> <input type="week" name="week" required value="${esc(app.param("week") ?? lastWeek(tz))}"></label>
      <span data-role="csv"></span></div>
    <section class="about card"><h2 data-i18n="index.about">How the index is made</h2>
      <p data-i18n="index.aboutText"></p><ul class="components"></ul></section>
    <figure><figcaption data-role="chart-title" data-i18n="index.chart">Index by street</figcaption>
      <div class="chart index-chart" role="img" data-i18n-label="index.chartLabel"></div></figure>
    <div class="table-wrap"><table class="ranking"><thead></thead><tbody></tbody></table></div>
    <p class="sub" data-i18n="index.missing"></p>`;
  translate(view);
  const plot = chart(view.querySelector(".index-chart"));
  const site = view.querySelector("[name=site]");
  const week = view.querySelector("[name=week]");
  const stopCsvLinks = handleCsvLinks(view, app);
  let generation = 0;

  async function show() {
    const mine = ++generation;
    delete view.dataset.ready;
    if (!isWeek(week.value)) {
      view.dataset.ready = "1";
      return;
    }
    try {
      const params = { week: week.value, site_id: site.value };
      const report = await get(`/reports/sanitation-index${query(params)}`, abort.signal);
      if (mine !== generation) return;
      const components = Object.keys(report.weights);
      explain(report.weights);
      table(report.streets, report.weights);
      draw(report.streets.filter((s) => s.index !== null), report.weights, components);
      view.querySelector("[data-role=csv]").innerHTML = csvLink(`/reports/sanitation-index${query({ ...params, format: "csv" })}`,
        `sanitation-index-${report.week}${site.value ? `-${site.value}` : ""}.csv`, t("index.title"));
    } catch (error) {
      app.fail(error);
    }
    if (mine === generation) view.dataset.ready = "1"; // tests and screenshots wait for it
  }

  function explain(weights) {
    view.querySelector("ul.components").innerHTML = Object.entries(weights).map(([name, weight]) => `<li data-component="${esc(name)}">
      <strong>${esc(tValue("component", name))}</strong> <span class="weight">${esc(t("index.weight"))} ${esc(weightPct(weight))}</span>
      ${has(`component.about.${name}`) ? `<span class="sub">— ${esc(t(`component.about.${name}`))}</span>` : ""}</li>`).join("");
  }

  function table(streets, weights) {
    const names = Object.keys(weights);
    const ranking = view.querySelector("table.ranking");
    ranking.querySelector("thead").innerHTML = `<tr><th data-i18n="index.rank"></th><th data-i18n="index.street"></th>
      <th data-i18n="index.district"></th><th data-i18n="index.index"></th><th data-i18n="index.change"></th>
      ${names.map((n) => `<th class="component">${esc(tValue("component", n))} <span class="sub">${esc(weightPct(weights[n]))}</span></th>`).join("")}
      <th data-i18n="index.previous"></th></tr>`;
    translate(ranking);
    ranking.querySelector("tbody").innerHTML = streets.map((s) => `<tr data-street="${esc(s.street_id)}">
      <td data-col="rank">${s.rank ?? "—"}</td><td>${esc(s.name ?? app.siteName(s.street_id))}</td>
      <td>${esc(s.district_id ? app.siteName(s.district_id) : "—")}</td><td data-col="index"><strong>${score(s.index)}</strong></td>
      <td data-col="change">${change(s.change)}</td>
      ${names.map((n) => `<td data-component="${esc(n)}">${score(s.components[n])}</td>`).join("")}
      <td data-col="previous_index">${score(s.previous_index)}</td></tr>`).join("")
      || `<tr><td colspan="${names.length + 6}" class="empty">${esc(t("index.none"))}</td></tr>`;
  }

  // One bar per street, split into each component's share of the index: weight × score over the weights of the
  // components the street has (the API's renormalisation), so the segments add up to the index.
  function draw(ranked, weights, components) {
    const shown = ranked.slice(0, CHART_STREETS);
    const box = plot.instance.getDom();
    view.querySelector("[data-role=chart-title]").textContent = ranked.length > shown.length
      ? t("index.chartFirst", { shown: shown.length, total: ranked.length }) : t("index.chart");
    const share = (street, name) => {
      const total = components.filter((n) => street.components[n] !== null && street.components[n] !== undefined)
        .reduce((sum, n) => sum + weights[n], 0);
      const value = street.components[name];
      return value === null || value === undefined || !total ? 0 : +(weights[name] * value / total).toFixed(2);
    };
    const labels = shown.map((s) => `${s.rank}. ${s.name ?? app.siteName(s.street_id)}`);
    // a phone shows every component's name on a few lines rather than a legend one scrolls through
    const legendLines = box.clientWidth < 600 ? Math.ceil(components.length / 2) : 1;
    box.style.height = `${Math.max(220, 40 + legendLines * 24 + shown.length * 30)}px`;
    plot.instance.resize();
    plot.set({
      animation: false, legend: { top: 0, type: legendLines > 1 ? "plain" : "scroll",
        data: components.map((name) => tValue("component", name)) },
      grid: { left: 10, right: 48, top: 16 + legendLines * 24, bottom: 10, containLabel: true },
      tooltip: { trigger: "axis", axisPointer: { type: "shadow" }, formatter: (items) => tooltip(shown[items[0]?.dataIndex], weights) },
      xAxis: { type: "value", min: 0, max: 100 },
      yAxis: { type: "category", inverse: true, data: labels, axisLabel: { width: 160, overflow: "truncate" } },
      series: [
        ...components.map((name, i) => ({ type: "bar", stack: "index", name: tValue("component", name),
          itemStyle: { color: COLORS[i % COLORS.length] }, data: shown.map((s) => share(s, name)) })),
        { type: "scatter", name: t("index.index"), symbolSize: 0, silent: true, data: shown.map((s, i) => [s.index, i]),
          label: { show: true, position: "right", formatter: (p) => fmtNum(p.value[0], 1), fontWeight: "bold" } },
      ],
      graphic: shown.length ? [] : [{ type: "text", left: "center", top: "middle", style: { text: t("index.none"), fill: "#5b6775" } }],
    });
    box.dataset.drawn = JSON.stringify(shown.map((s) => [s.street_id, s.index])); // for tests: a canvas has no text
  }

  function tooltip(street, weights) {
    if (!street) return "";
    const rows = Object.keys(weights).map((n) => `${esc(tValue("component", n))} (${esc(weightPct(weights[n]))}): ${score(street.components[n])}`);
    return [`<strong>${esc(street.name ?? street.street_id)}</strong>`, `${esc(t("index.index"))}: ${score(street.index)}`, ...rows].join("<br>");
  }

  site.addEventListener("change", show);
  week.addEventListener("change", show);
  show();
  return () => {
    abort.abort();
    stopCsvLinks();
    plot.dispose();
  };
}
