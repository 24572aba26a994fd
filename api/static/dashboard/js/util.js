// DOM building (text only: nothing the API returns is ever parsed as HTML), formatting,
// and the statistics the study pages compute while runs are still finishing.

import { download } from "./api.js";

export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") el.className = value;
    else if (key === "text") el.textContent = value;
    else if (key === "style") el.style.cssText = value;  // CSSOM: allowed by the page's CSP
    else if (key === "dataset") Object.assign(el.dataset, value);
    else if (key.startsWith("on") && typeof value === "function") el.addEventListener(key.slice(2), value);
    else if (typeof value === "boolean") el.toggleAttribute(key, value);
    else el.setAttribute(key, String(value));
  }
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : String(child));
  }
  return el;
}

/** replaceChildren without the "null" text nodes it would make of absent parts. */
export function put(el, ...children) {
  el.replaceChildren(...children.flat(Infinity).filter((c) => c !== null && c !== undefined && c !== false));
  return el;
}

export const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);
export const ACTIVE = new Set(["queued", "running"]);

export function badge(status) {
  return h("span", { class: `badge ${status}`, dataset: { status } }, status);
}

export function bar(fraction, wide = false) {
  const pct = Math.max(0, Math.min(1, Number(fraction) || 0)) * 100;
  return h("span", { class: wide ? "bar wide" : "bar", title: `${pct.toFixed(0)}%`,
    role: "progressbar", "aria-valuenow": pct.toFixed(0), "aria-valuemin": "0", "aria-valuemax": "100" },
  h("span", { style: `width:${pct.toFixed(1)}%` }));
}

export function fraction(job) {
  if (job.status === "succeeded") return 1;
  return job.progress?.fraction ?? 0;
}

/** API datetimes are UTC; older rows may lack the offset. */
export function parseTime(value) {
  if (!value) return null;
  const text = /[zZ]|[+-]\d\d:?\d\d$/.test(value) ? value : `${value}Z`;
  const time = Date.parse(text);
  return Number.isNaN(time) ? null : time;
}

export function when(value) {
  const time = parseTime(value);
  if (time === null) return "";
  const date = new Date(time);
  const today = new Date();
  const sameDay = date.toDateString() === today.toDateString();
  return sameDay ? date.toLocaleTimeString() : date.toLocaleString();
}

export function seconds(s) {
  if (s === null || s === undefined || !Number.isFinite(s)) return "";
  if (s < 60) return `${s.toFixed(s < 10 ? 1 : 0)} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${Math.round(s % 60)} s`;
  return `${Math.floor(s / 3600)} h ${Math.round((s % 3600) / 60)} min`;
}

export function duration(job, now = Date.now()) {
  const start = parseTime(job.started_at);
  if (start === null) return "";
  const end = parseTime(job.finished_at) ?? (TERMINAL.has(job.status) ? parseTime(job.updated_at) : now);
  return seconds((end - start) / 1000);
}

export function bytes(n) {
  if (n < 1024) return `${n} B`;
  const units = ["KiB", "MiB", "GiB", "TiB"];
  let value = n / 1024, unit = 0;
  while (value >= 1024 && unit < units.length - 1) { value /= 1024; unit += 1; }
  return `${value.toFixed(value < 10 ? 1 : 0)} ${units[unit]}`;
}

export function num(value, digits = 3) {
  if (value === null || value === undefined || value === "") return "–";
  const n = Number(value);
  return Number.isFinite(n) ? n.toFixed(digits) : String(value);
}

export function shortId(id) {
  return id ? id.slice(0, 8) : "";
}

export function taskName(task) {
  if (task && typeof task === "object") return `upload ${shortId(task.upload)}`;
  return task ?? "?";
}

/** The built-in networks' transferable layers: the six Conv2D layers, then the Dense one. */
export const BUILTIN_LAYERS = ["0", "1", "2", "3", "4", "5", "6"];

/** A layer as a spec holds it: a number (negative: all at once) or a layer's name ("3" is 3). */
export function layerValue(layer) {
  return typeof layer === "string" && /^-?\d+$/.test(layer) ? Number(layer) : layer;
}

/** A layer's key in results and file names: its number or name, "all" for all at once. */
export function layerName(layer) {
  const value = layerValue(layer);
  return value === "all" || (typeof value === "number" && value < 0) ? "all" : String(value);
}

/** A study's entries in order: its layers (the built-in networks' by number, a network's
 *  names as the service stores them: in graph order), then "all" (every layer at once). */
export function studyEntries(spec) {
  const chosen = spec.layers === "all" ? [0, 1, 2, 3, 4, 5, 6] : (spec.layers || []).map(layerValue);
  const numbers = [...new Set(chosen.filter((l) => typeof l === "number" && l >= 0))].sort((a, b) => a - b);
  const entries = [...new Set(chosen.filter((l) => typeof l === "string")), ...numbers.map(String)];
  // With a source_model the service measures all at once for include_all_at_once only.
  if (spec.include_all_at_once || (!spec.source_model && chosen.includes(-1))) entries.push("all");
  return entries;
}

/** Lists of layer keys merged into one order that keeps each list's own order (lists of
 *  one network's layers, each in graph order, merge into graph order): a new key goes
 *  after the key before it in its list, or, first in its list, before the first of its
 *  list's keys already placed (else last). */
export function mergedOrder(lists) {
  const out = [];
  for (const list of lists) {
    list.forEach((key, i) => {
      if (out.includes(key)) return;
      const next = list.slice(i + 1).map((k) => out.indexOf(k)).find((at) => at >= 0);
      out.splice(i ? out.indexOf(list[i - 1]) + 1 : next ?? out.length, 0, key);
    });
  }
  return out;
}

/** What a spec's source network is called: a network of the user's, if any. */
export function networkName(spec) {
  const model = spec.source_model;
  if (!model) return "";
  if (typeof model === "string") return model.replace(/^keras\.applications\./, "");
  return model.upload ? `upload ${shortId(model.upload)}` : `job ${shortId(model.job)}'s model`;
}

export function specSummary(job) {
  const s = job.spec || {};
  const width = s.width_multiplier && s.width_multiplier !== 1 ? ` · width ${s.width_multiplier}` : "";
  const samples = s.nb_of_samples || s.nb_of_target_samples;
  const n = samples ? ` · ${samples} samples` : "";
  if (job.kind === "source") {
    return `${taskName(s.source_task)} · ${s.nb_of_epochs ?? 1} epochs${n}${width}`;
  }
  const network = s.source_model ? ` · network ${networkName(s)}` : "";
  const tasks = `${taskName(s.source_task)} → ${taskName(s.target_task)}${network}`;
  const runs = `${s.nb_of_runs ?? 1} run${(s.nb_of_runs ?? 1) === 1 ? "" : "s"} × ${s.nb_of_target_epochs ?? 1} epochs`;
  if (job.kind === "study") {
    const layers = s.layers === "all" ? "all" : (s.layers || []).join(",");
    const extra = s.include_all_at_once ? "+all" : "";
    return `${tasks} · layers ${layers}${extra} · ${runs}${s.witness ? " · witness" : ""}${width}`;
  }
  const run = job.study_run !== null && job.study_run !== undefined ? ` · study run ${job.study_run}` : "";
  return `${tasks} · layer ${layerName(s.layer_to_transfer)} · ${runs}${run}${s.witness ? " · witness" : ""}${width}`;
}

export function jobHref(job) {
  return job.kind === "study" ? `#/study/${job.id}` : `#/job/${job.id}`;
}

/** A link that downloads with the token (fetch + blob) when one is set. */
export function downloadLink(path, filename, label) {
  return h("a", {
    href: path, download: filename,
    onclick: (event) => {
      event.preventDefault();
      download(path, filename).catch((error) => alert(`Download failed: ${error.message}`));
    },
  }, label ?? filename);
}

// --- statistics: Student's t, as the service's summary (quanta/summary.py) ------------
const T975 = [12.7062, 4.3027, 3.1824, 2.7764, 2.5706, 2.4469, 2.3646, 2.306, 2.2622, 2.2281,
  2.201, 2.1788, 2.1604, 2.1448, 2.1314, 2.1199, 2.1098, 2.1009, 2.093, 2.086, 2.0796, 2.0739,
  2.0687, 2.0639, 2.0595, 2.0555, 2.0518, 2.0484, 2.0452, 2.0423];

/** The 97.5% quantile of Student's t with `df` degrees of freedom. */
export function t975(df) {
  if (df <= T975.length) return T975[df - 1];
  const z = 1.959964;  // Cornish-Fisher expansion around the normal quantile
  const z3 = z ** 3, z5 = z ** 5, z7 = z ** 7;
  return z + (z3 + z) / (4 * df) + (5 * z5 + 16 * z3 + 3 * z) / (96 * df ** 2)
    + (3 * z7 + 19 * z5 + 17 * z3 - 15 * z) / (384 * df ** 3);
}

/** n, mean, sample std and 95% CI of the mean, as `describe` in quanta/summary.py. */
export function describe(values) {
  const x = values.filter((v) => v !== null && v !== undefined && Number.isFinite(Number(v))).map(Number);
  const n = x.length;
  if (!n) return { n: 0, mean: null, std: null, ci95: null, values: [] };
  const mean = x.reduce((a, b) => a + b, 0) / n;
  if (n === 1) return { n, mean, std: 0, ci95: [mean, mean], values: x };
  const std = Math.sqrt(x.reduce((a, b) => a + (b - mean) ** 2, 0) / (n - 1));
  const half = t975(n - 1) * std / Math.sqrt(n);
  return { n, mean, std, ci95: [mean - half, mean + half], values: x };
}

export function ci(stat, digits = 3) {
  if (!stat || !stat.n) return "–";
  // One run has no interval: the service sends ci95 (and std) as null then.
  if (!stat.ci95) return "[n/a]";
  return `[${num(stat.ci95[0], digits)}, ${num(stat.ci95[1], digits)}]`;
}

export function errorText(error) {
  if (!error) return "";
  const detail = error.detail;
  if (Array.isArray(detail)) return detail.map((d) => `${(d.loc || []).join(".")}: ${d.msg}`).join("\n");
  return `${error.status ? `${error.status}: ` : ""}${typeof detail === "string" ? detail : error.message}`;
}

export function message(text, cls = "notice") {
  return h("div", { class: cls }, text);
}
