// Line charts on uPlot (vendored, MIT): labelled axes, the page's light or dark colours,
// widths that follow the container, and bands for confidence intervals.

import { h, put } from "./util.js";

export function color(index) {
  return cssVar(`--c${index % 8}`);
}

export function cssVar(name) {
  return getComputedStyle(document.documentElement).getPropertyValue(name).trim();
}

/** Longest tick label drawn whole (longer ones end in "…"; the legend names them whole). */
const MAX_TICK = 24;

function withAlpha(colour, alpha) {
  const hex = colour.replace("#", "");
  if (hex.length !== 6) return colour;
  const [r, g, b] = [0, 2, 4].map((i) => parseInt(hex.slice(i, i + 2), 16));
  return `rgba(${r},${g},${b},${alpha})`;
}

/** The y range: `yRange`, widened to hold every value and interval bound of `data`, so
 *  that no interval is cut (few runs give Student-t intervals beyond 0 and 1). */
function fittedRange(yRange, data) {
  let [low, high] = yRange;
  for (const ys of data.slice(1)) {
    for (const v of ys) {
      if (v === null || v === undefined || !Number.isFinite(v)) continue;
      low = Math.min(low, v);
      high = Math.max(high, v);
    }
  }
  const pad = low < yRange[0] || high > yRange[1] ? 0.02 * (high - low) : 0;
  return [low - (low < yRange[0] ? pad : 0), high + (high > yRange[1] ? pad : 0)];
}

/** Vertical whiskers with caps from each point's interval low to high (uPlot draw hook). */
function whiskers(intervals) {
  return (u) => {
    const { ctx } = u;
    ctx.save();
    for (const { index, low, high, colour } of intervals) {
      if (!u.series[index + 1].show) continue;
      ctx.strokeStyle = colour;
      ctx.lineWidth = 1.5 * devicePixelRatio;
      u.data[0].forEach((xv, i) => {
        const lo = u.data[low + 1][i], hi = u.data[high + 1][i];
        if (lo === null || lo === undefined || hi === null || hi === undefined) return;
        const x = u.valToPos(xv, "x", true), y0 = u.valToPos(lo, "y", true), y1 = u.valToPos(hi, "y", true);
        const cap = 5 * devicePixelRatio;
        ctx.beginPath();
        ctx.moveTo(x, y0); ctx.lineTo(x, y1);
        ctx.moveTo(x - cap, y0); ctx.lineTo(x + cap, y0);
        ctx.moveTo(x - cap, y1); ctx.lineTo(x + cap, y1);
        ctx.stroke();
      });
    }
    ctx.restore();
  };
}

/**
 * A chart in `container`. `series`: [{label, color, dash, band: [lowIndex, highIndex]?,
 * hidden (a CI bound: drawn only as the band), points, scale}], `data`: [xs, ...ys].
 * With `intervals`, a series with a band is drawn as points with whiskers, unjoined: its x
 * are separate measurements (layers), not a curve to read between them. `xValues(x)` names
 * the ticks of a discrete x axis (long names are slanted).
 * Returns {update(data), destroy()}.
 */
export function lineChart(container, { title, xLabel, yLabel, y2Label, series, data, xValues,
  yRange, height = 280, xDiscrete = false, intervals = false }) {
  const fg = cssVar("--fg"), grid = cssVar("--grid"), muted = cssVar("--muted");
  const axis = (label, scale, side) => ({
    label, scale, side, stroke: muted, labelSize: 22, size: 50,
    grid: { stroke: grid, width: 1, show: side !== 1 },
    ticks: { stroke: grid, width: 1 },
    font: "12px system-ui, sans-serif", labelFont: "600 12px system-ui, sans-serif",
  });
  const xAxis = { ...axis(xLabel, "x", 2), size: 40 };
  const xName = (v) => (xValues ? xValues(v) : v);
  const tick = (v) => { const t = String(xName(v)); return t.length > MAX_TICK ? `${t.slice(0, MAX_TICK - 1)}…` : t; };
  let padLeft = null, fullHeight = height;
  if (xDiscrete) {
    xAxis.incrs = [1];
    xAxis.values = (u, splits) => {
      const ticks = splits.map((v) => (xValues ? tick(v) : v));
      wrapper.dataset.xTicks = JSON.stringify(ticks.map(String));  // the ticks as drawn
      return ticks;
    };
    // Layer names: slanted up to their tick (as the service's plots), the chart taller by
    // what they take below it, room on the left for the first; crowded ones thinned.
    const lengths = data[0].map((v) => tick(v).length);
    if (Math.max(0, ...lengths) > 4) {
      Object.assign(xAxis, { rotate: 30, space: 16, incrs: [1, 2, 5, 10],
        size: 24 + 3.4 * Math.max(...lengths) });
      fullHeight += xAxis.size - 40;
      padLeft = Math.max(0, 5.7 * lengths[0] - 60) || null;
    }
  }
  const axes = [xAxis, axis(yLabel, "y", 3)];
  if (y2Label) axes.push(axis(y2Label, "y2", 1));
  const bands = [];
  const drawn = [];
  const uSeries = [{ label: xLabel, value: (u, v) => (v === null || v === undefined ? "--" : xName(v)) }];
  series.forEach((s, i) => {
    const colour = s.color || color(i);
    if (s.hidden) {
      uSeries.push({ label: s.label, stroke: "transparent", width: 0, points: { show: false },
        scale: s.scale || "y", value: (u, v) => (v === null || v === undefined ? "–" : v.toFixed(3)) });
      return;
    }
    const band = s.band;
    const alone = intervals && band;
    uSeries.push({
      label: s.label, stroke: colour, width: s.width ?? 2, dash: s.dash, scale: s.scale || "y",
      spanGaps: !alone, paths: alone ? () => null : undefined,
      points: { show: alone || (s.points ?? true), size: s.pointSize ?? (alone ? 9 : 6), fill: colour },
      // The value under the cursor, with its confidence interval when the series has one.
      value: (u, v, si, idx) => {
        if (v === null || v === undefined) return "–";
        if (!band || idx === null || idx === undefined) return v.toFixed(3);
        const lo = u.data[band[0] + 1]?.[idx], hi = u.data[band[1] + 1]?.[idx];
        return lo === null || lo === undefined ? v.toFixed(3) : `${v.toFixed(3)} [${lo.toFixed(3)}, ${hi.toFixed(3)}]`;
      },
    });
    if (alone) drawn.push({ index: i, low: band[0], high: band[1], colour });
    else if (band) bands.push({ series: [band[1] + 1, band[0] + 1], fill: withAlpha(colour, 0.16) });
  });
  const scales = { x: { time: false } };
  if (xDiscrete) {
    scales.x.range = (u, min, max) => [min - 0.3, max + 0.3];
  }
  let current = data;
  // What the chart shows, for people's tools and tests: each x named, each series's values.
  const expose = (next) => {
    wrapper.dataset.x = JSON.stringify(next[0].map((v) => String(xName(v))));
    wrapper.dataset.series = JSON.stringify(Object.fromEntries(series.map((s, i) => [s.label, next[i + 1]])));
  };
  scales.y = { range: yRange ? () => fittedRange(yRange, current) : undefined, auto: !yRange };
  if (y2Label) scales.y2 = { range: [0, 1] };
  const wrapper = h("div", { class: "chart" });
  put(container, wrapper);
  expose(data);
  const width = () => Math.max(320, (container.clientWidth || 600) - 4);
  const options = {
    title, width: width(), height: fullHeight, series: uSeries, axes, scales, bands,
    padding: [null, null, null, padLeft],
    cursor: { drag: { x: true, y: false } },
    legend: { live: true },
    hooks: {
      ...(drawn.length ? { draw: [whiskers(drawn)] } : {}),
      // What the chart shows, for people's tools and tests: its y range as drawn.
      setScale: [(u, key) => {
        if (key !== "y") return;
        wrapper.dataset.yMin = String(u.scales.y.min);
        wrapper.dataset.yMax = String(u.scales.y.max);
      }],
    },
  };
  if (drawn.length) wrapper.dataset.intervals = "true";
  const plot = new window.uPlot(options, data, wrapper);
  // CI bounds are drawn as bands only: their values show beside the mean's, not as series.
  const rows = wrapper.querySelectorAll(".u-legend .u-series");
  series.forEach((s, i) => { if (s.hidden && rows[i + 1]) rows[i + 1].style.display = "none"; });
  wrapper.querySelector(".u-title")?.style.setProperty("color", fg);
  const observer = new ResizeObserver(() => {
    const w = width();
    if (Math.abs(w - plot.width) > 2) plot.setSize({ width: w, height: fullHeight });
  });
  observer.observe(container);
  return {
    plot,
    update(next) { current = next; expose(next); plot.setData(next); },
    destroy() { observer.disconnect(); plot.destroy(); },
  };
}

/** Destroy every chart of a view (its cleanup). */
export function destroyAll(charts) {
  for (const chart of charts.splice(0)) chart?.destroy();
}
