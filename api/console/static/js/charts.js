// ECharts (copied from npm into /console/vendor by scripts/install.sh): one place that creates and disposes
// charts, so every page resizes them with their box and frees them when the page is left.
import * as echarts from "../vendor/echarts.esm.min.js";

export function chart(el) {
  const instance = echarts.init(el, null, { renderer: "canvas" });
  const observer = new ResizeObserver(() => instance.resize());
  observer.observe(el);
  return {
    instance,
    set: (option) => instance.setOption(option, { notMerge: true }),
    dispose: () => {
      observer.disconnect();
      instance.dispose();
    },
  };
}

// A horizontal limit line for markLine, labelled with the value and where it comes from.
export function limitLine(value, label, color = "#c0392b", dashed = true, position = "insideEndTop") {
  return { yAxis: value, name: label, lineStyle: { color, type: dashed ? "dashed" : "solid", width: 1.5 },
    label: { formatter: `${label}: ${value}`, position, color } };
}

// Labels of lines at nearby values would print over each other: from the lowest line up, each takes the next of
// these places along the line.
const PLACES = ["insideEndTop", "insideStartTop", "insideMiddleTop", "insideEndBottom", "insideStartBottom"];
export function spreadLabels(lines) {
  return [...lines].sort((a, b) => a.yAxis - b.yAxis).map((line, i) => ({ ...line,
    label: { ...line.label, position: PLACES[i % PLACES.length] } }));
}

// A value axis that always shows its limit lines (markLine does not stretch an axis).
export function maxWithLimits(lines) {
  const top = Math.max(0, ...lines.map((l) => l.yAxis));
  return (extent) => {
    const data = Number.isFinite(extent.max) ? extent.max : 0;
    const wanted = Math.max(data, top * 1.15);
    if (wanted <= 0) return undefined; // no data and no limit: ECharts' own choice
    const step = 10 ** Math.floor(Math.log10(wanted)) / 2; // a round end: 0.07, 350, 75 …
    return Math.ceil(wanted / step) * step;
  };
}
