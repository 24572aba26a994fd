// Line charts on uPlot (vendored, MIT): labelled axes, the page's light or dark colours,
// widths that follow the container, and bands for confidence intervals.

import { h, put } from "./util.js";

export function color(index) {
  return cssVar(`--c${index % 8}`);
}

export function cssVar(name) {
  return getComputedStyle(document.documentElement).getPropertyValue(name).trim();
}

function withAlpha(colour, alpha) {
  const hex = colour.replace("#", "");
  if (hex.length !== 6) return colour;
  const [r, g, b] = [0, 2, 4].map((i) => parseInt(hex.slice(i, i + 2), 16));
  return `rgba(${r},${g},${b},${alpha})`;
}

/**
 * A chart in `container`. `series`: [{label, color, dash, band: [lowIndex, highIndex]?,
 * hidden (a CI bound: drawn only as the band), points, scale}], `data`: [xs, ...ys].
 * Returns {update(data), destroy()}.
 */
export function lineChart(container, { title, xLabel, yLabel, y2Label, series, data, xValues,
  yRange, height = 280, xDiscrete = false }) {
  const fg = cssVar("--fg"), grid = cssVar("--grid"), muted = cssVar("--muted");
  const axis = (label, scale, side) => ({
    label, scale, side, stroke: muted, labelSize: 22, size: 50,
    grid: { stroke: grid, width: 1, show: side !== 1 },
    ticks: { stroke: grid, width: 1 },
    font: "12px system-ui, sans-serif", labelFont: "600 12px system-ui, sans-serif",
  });
  const xAxis = { ...axis(xLabel, "x", 2), size: 40 };
  if (xDiscrete) {
    xAxis.incrs = [1];
    xAxis.values = (u, splits) => splits.map((v) => (xValues ? xValues(v) : v));
  }
  const axes = [xAxis, axis(yLabel, "y", 3)];
  if (y2Label) axes.push(axis(y2Label, "y2", 1));
  const bands = [];
  const uSeries = [{ label: xLabel }];
  series.forEach((s, i) => {
    const colour = s.color || color(i);
    if (s.hidden) {
      uSeries.push({ label: s.label, stroke: "transparent", width: 0, points: { show: false },
        scale: s.scale || "y", value: (u, v) => (v === null || v === undefined ? "–" : v.toFixed(3)) });
      return;
    }
    const band = s.band;
    uSeries.push({
      label: s.label, stroke: colour, width: s.width ?? 2, dash: s.dash, scale: s.scale || "y",
      spanGaps: true, points: { show: s.points ?? true, size: s.pointSize ?? 6, fill: colour },
      // The value under the cursor, with its confidence interval when the series has one.
      value: (u, v, si, idx) => {
        if (v === null || v === undefined) return "–";
        if (!band || idx === null || idx === undefined) return v.toFixed(3);
        const lo = u.data[band[0] + 1]?.[idx], hi = u.data[band[1] + 1]?.[idx];
        return lo === null || lo === undefined ? v.toFixed(3) : `${v.toFixed(3)} [${lo.toFixed(3)}, ${hi.toFixed(3)}]`;
      },
    });
    if (s.band) bands.push({ series: [s.band[1] + 1, s.band[0] + 1], fill: withAlpha(colour, 0.16) });
  });
  const scales = { x: { time: false } };
  if (xDiscrete) {
    scales.x.range = (u, min, max) => [min - 0.3, max + 0.3];
  }
  scales.y = { range: yRange ? () => yRange : undefined, auto: !yRange };
  if (y2Label) scales.y2 = { range: [0, 1] };
  const wrapper = h("div", { class: "chart" });
  put(container, wrapper);
  const width = () => Math.max(320, (container.clientWidth || 600) - 4);
  const options = {
    title, width: width(), height, series: uSeries, axes, scales, bands,
    cursor: { drag: { x: true, y: false } },
    legend: { live: true },
  };
  const plot = new window.uPlot(options, data, wrapper);
  // CI bounds are drawn as bands only: their values show beside the mean's, not as series.
  const rows = wrapper.querySelectorAll(".u-legend .u-series");
  series.forEach((s, i) => { if (s.hidden && rows[i + 1]) rows[i + 1].style.display = "none"; });
  wrapper.querySelector(".u-title")?.style.setProperty("color", fg);
  const observer = new ResizeObserver(() => {
    const w = width();
    if (Math.abs(w - plot.width) > 2) plot.setSize({ width: w, height });
  });
  observer.observe(container);
  return {
    plot,
    update(next) { plot.setData(next); },
    destroy() { observer.disconnect(); plot.destroy(); },
  };
}

/** Destroy every chart of a view (its cleanup). */
export function destroyAll(charts) {
  for (const chart of charts.splice(0)) chart?.destroy();
}
