// A study: the transferability curve and the accuracies per layer, computed in the page
// from the children that have ended (Student's t, as the service does) and replaced by
// the service's own summary once the study has succeeded; the (layer x run) grid; the table.
//
// Cost per update stays small for 7 x 30 children: the children are listed once, then
// the study's event stream says which child changed, and only a child that ended is
// fetched again (for its result).

import { all, api, ApiError, follow } from "./api.js";
import { destroyAll, lineChart } from "./charts.js";
import { cancelJob } from "./jobs.js";
import {
  ACTIVE, badge, bar, BUILTIN_LAYERS, ci, describe, downloadLink, errorText, fraction, h, layerName,
  mergedOrder, num, shortId, specSummary, studyEntries, TERMINAL, when, put } from "./util.js";

const ACCURACY = "categorical_accuracy";
const CHILD_FETCHES = 4;

export function childKey(child) {
  return `${layerName(child.spec.layer_to_transfer)}:${child.study_run ?? 0}`;
}

/** A study's entries in order: its spec's, and any other its children measure. */
export function entriesOf(spec, children) {
  const entries = studyEntries(spec);
  const more = children.map((c) => layerName(c.spec.layer_to_transfer)).filter((e) => !entries.includes(e));
  return mergedOrder([entries.filter((e) => e !== "all"), more.filter((e) => e !== "all")])
    .concat(entries.includes("all") || more.includes("all") ? ["all"] : []);
}

/** Per entry, the statistics of the children that succeeded (summary.json's `entries`). */
export function statsFromChildren(spec, children) {
  const out = {};
  for (const entry of entriesOf(spec, children)) {
    const done = children.filter((c) => c.status === "succeeded" && c.result?.runs?.length
      && layerName(c.spec.layer_to_transfer) === entry)
      .sort((a, b) => (a.study_run ?? 0) - (b.study_run ?? 0));
    const runs = done.map((c) => c.result.runs[0]);
    // All at once: the built-in networks' 0-6, a network's layers as its runs name them.
    const named = mergedOrder(runs.map((r) => Object.keys(r.quantas || {})));
    const layers = entry !== "all" ? [entry] : spec.source_model ? named : BUILTIN_LAYERS;
    const lambda = {};
    for (const layer of layers) lambda[layer] = describe(runs.map((r) => r.quantas?.[layer]?.source));
    const witnessed = runs.filter((r) => r.witness_metrics);
    out[entry] = {
      runs: done.map((c) => c.study_run),
      lambda_s: lambda,
      target_accuracy: describe(runs.map((r) => r.target_metrics?.[ACCURACY])),
      witness_accuracy: witnessed.length ? describe(witnessed.map((r) => r.witness_metrics[ACCURACY])) : null,
      transfer_gain: witnessed.length
        ? describe(witnessed.map((r) => r.target_metrics?.[ACCURACY] - r.witness_metrics[ACCURACY])) : null,
    };
  }
  return out;
}

/**
 * Where layers sit on a chart's x axis: the built-in networks' at their numbers 0-6 ("all"
 * at 7), a network's named layers one after the other in their order (`lists`, each in
 * graph order), "all" after them. `tick(x)` names a position.
 */
export function layerAxis(lists, withAll = false) {
  const keys = mergedOrder(lists.map((list) => list.filter((k) => k !== "all")));
  const numbered = keys.every((k) => /^\d+$/.test(k));
  if (numbered) keys.sort((a, b) => a - b);
  const at = new Map(keys.map((k, i) => [k, numbered ? Number(k) : i]));
  if (withAll) at.set("all", numbered ? 7 : keys.length);
  const names = new Map([...at].map(([k, x]) => [x, k]));
  return { numbered, keys: [...at.keys()], x: [...at.values()],
    tick: (v) => names.get(v) ?? (numbered ? String(v) : "") };
}

/** The x positions and series of the transferability curve of one or more studies. */
export function curveData(studies) {
  const axis = layerAxis(studies.flatMap(({ entries }) => Object.entries(entries).map(([entry, e]) =>
    (entry === "all" ? Object.keys(e.lambda_s || {}) : [entry]))));
  const series = [], data = [axis.x];
  studies.forEach(({ entries, label, colorIndex, dash }) => {
    let variant = 0;
    const add = (name, stat, dashed) => {
      const base = series.length;
      // One study: a colour per curve; several: a colour per study, a dash per curve.
      const colour = cssColour(studies.length === 1 ? variant : colorIndex);
      variant += 1;
      series.push({ label: name, color: colour, dash: dashed, band: [base + 1, base + 2] },
        { label: `${name}: 95% CI low`, hidden: true }, { label: `${name}: 95% CI high`, hidden: true });
      const keys = axis.keys;
      data.push(keys.map((l) => stat(l)?.mean ?? null), keys.map((l) => stat(l)?.ci95?.[0] ?? null),
        keys.map((l) => stat(l)?.ci95?.[1] ?? null));
    };
    const single = Object.keys(entries).filter((e) => e !== "all");
    if (single.length || !entries.all) {
      add(`${label}λ_s, layer alone`, (l) => nonEmpty(entries[l]?.lambda_s?.[l]), dash);
    }
    if (entries.all) add(`${label}λ_s, all layers at once`, (l) => nonEmpty(entries.all.lambda_s?.[l]), [6, 4]);
  });
  return { series, data, xValues: axis.tick, numbered: axis.numbered };
}

/** Target and witness accuracy per entry: the layers, then "all" (at 7 for the built-in
 *  networks, after the named layers for a network of the user's). */
export function accuracyData(studies) {
  const axis = layerAxis(studies.map(({ entries }) => Object.keys(entries)),
    studies.some(({ entries }) => "all" in entries));
  const series = [], data = [axis.x];
  studies.forEach(({ entries, label, colorIndex }) => {
    let variant = 0;
    const add = (name, metric, dash) => {
      const base = series.length;
      const colour = cssColour(studies.length === 1 ? variant : colorIndex);
      variant += 1;
      series.push({ label: name, color: colour, dash, band: [base + 1, base + 2] },
        { label: `${name}: 95% CI low`, hidden: true }, { label: `${name}: 95% CI high`, hidden: true });
      const stat = (k) => nonEmpty(entries[k]?.[metric]);
      data.push(axis.keys.map((k) => stat(k)?.mean ?? null), axis.keys.map((k) => stat(k)?.ci95?.[0] ?? null),
        axis.keys.map((k) => stat(k)?.ci95?.[1] ?? null));
    };
    add(`${label}with transfer`, "target_accuracy");
    if (Object.values(entries).some((e) => e?.witness_accuracy?.n)) add(`${label}witness (no transfer)`, "witness_accuracy", [3, 3]);
  });
  return { series, data, xValues: axis.tick, numbered: axis.numbered };
}

function nonEmpty(stat) {
  return stat && stat.n ? stat : null;
}

function cssColour(index) {
  return getComputedStyle(document.documentElement).getPropertyValue(`--c${(index || 0) % 8}`).trim();
}

/** A study's statistics: the service's summary once it succeeded, else computed live. */
export async function studyStats(id, { signal } = {}) {
  const study = await api(`/v1/jobs/${id}`, { signal });
  if (study.kind !== "study") throw new ApiError(404, `job ${id} is a ${study.kind} job, not a study`);
  if (study.status === "succeeded") {
    const summary = await api(`/v1/jobs/${id}/summary`, { signal });
    return { study, entries: summary.entries, final: true };
  }
  const children = await all(`/v1/jobs/${id}/children?limit=500`, { signal });
  return { study, entries: statsFromChildren(study.spec, children), final: false };
}

export function renderStudy(root, id, navigate) {
  const controller = new AbortController();
  const charts = [];
  const children = new Map();  // id -> child job
  const cells = new Map();  // "entry:run" -> element
  const state = { study: null, summary: null, stale: new Set(), fetching: 0, following: false };
  const head = h("div");
  const curveBox = h("div", { class: "card", id: "chart-transferability" });
  const accuracyBox = h("div", { class: "card", id: "chart-accuracy" });
  const gridBox = h("div", { class: "card", id: "study-grid" });
  const tableBox = h("div", { class: "card", id: "study-table" });
  const missingBox = h("div");
  put(root, head, h("div", { class: "grid2" }, curveBox, accuracyBox), gridBox, tableBox, missingBox);

  let statsTimer = null;
  let headTimer = null;

  const entriesNow = () => state.summary?.entries ?? statsFromChildren(state.study.spec, [...children.values()]);

  const drawHead = () => {
    const study = state.study;
    const p = study.progress || {};
    const counts = ["queued", "running", "succeeded", "failed", "cancelled"]
      .filter((s) => p[s]).map((s) => `${p[s]} ${s}`).join(" · ");
    const files = study.status === "succeeded" ? [
      downloadLink(`/v1/jobs/${id}/artifacts/summary.csv`, `summary-${shortId(id)}.csv`, "summary.csv"),
      downloadLink(`/v1/jobs/${id}/artifacts/summary.json`, `summary-${shortId(id)}.json`, "summary.json"),
      downloadLink(`/v1/jobs/${id}/archive`, `quanta-${id}.zip`, "all files (zip)"),
    ] : [];
    put(head, 
      h("h1", {}, "Study ", h("span", { class: "mono" }, id), " ", badge(study.status)),
      h("p", {}, specSummary(study), h("span", { class: "muted" }, ` · created ${when(study.created_at)}`)),
      h("div", { class: "toolbar" },
        bar(fraction(study), true),
        h("span", { id: "study-progress", dataset: { done: String(p.done ?? 0), total: String(p.total ?? 0) } },
          `${p.done ?? 0} of ${p.total ?? 0} jobs ended`),
        h("span", { class: "muted small" }, counts),
        h("span", { class: "spacer" }),
        ACTIVE.has(study.status) && !study.cancel_requested
          ? h("button", { type: "button", class: "danger", id: "cancel-study",
            onclick: () => cancelJob(study, reload) }, "Cancel study") : null,
        h("a", { class: "button", href: `#/compare?ids=${id}` }, "Compare…")),
      study.error ? h("div", { class: "error-box" }, study.error) : null,
      files.length ? h("p", {}, "Download: ", files.flatMap((f, i) => (i ? [" · ", f] : [f]))) : null);
  };

  const drawStats = () => {
    const entries = entriesNow();
    const withData = Object.entries(entries).filter(([, e]) => Object.values(e.lambda_s || {}).some((s) => s?.n));
    curveBox.dataset.layers = withData.map(([k]) => k).join(",");
    curveBox.dataset.final = String(Boolean(state.summary));
    destroyAll(charts);
    const note = state.summary ? "from the study's summary" : "live: from the runs ended so far";
    const studies = [{ entries, label: "", colorIndex: 0 }];
    if (!withData.length) {
      put(curveBox, h("h3", {}, "Transferability"), h("p", { class: "empty-chart" }, "Drawn as the first runs end…"));
      put(accuracyBox, h("h3", {}, "Accuracy"), h("p", { class: "empty-chart" }, "Drawn as the first runs end…"));
    } else {
      const curve = curveData(studies);
      const inner = h("div");
      put(curveBox, inner, h("p", { class: "muted small" }, `Mean final λ_s of each measured layer with its 95% confidence interval (whiskers, drawn whole even past 0 or 1), ${note}. Layers are separate measurements: nothing is drawn between them.`));
      charts.push(lineChart(inner, { title: "Transferability: final λ_s per transferred layer",
        xLabel: curve.numbered ? "transferred layer (0–5 Conv2D, 6 Dense)" : "transferred layer",
        yLabel: "λ_s", yRange: [0, 1], xDiscrete: true, intervals: true, ...curve }));
      const acc = accuracyData(studies);
      const inner2 = h("div");
      put(accuracyBox, inner2, h("p", { class: "muted small" }, `Test accuracy of the target with transfer and of the witness trained from scratch, ${note}.`));
      charts.push(lineChart(inner2, { title: "Test accuracy per layer", xLabel: "transferred layer",
        yLabel: "test accuracy", yRange: [0, 1], xDiscrete: true, intervals: true, ...acc }));
    }
    drawTable(entries);
  };

  const drawTable = (entries) => {
    const total = Number(state.study.spec.nb_of_runs || 1);
    const rows = [];
    for (const [entry, e] of Object.entries(entries)) {
      const layers = Object.keys(e.lambda_s || {});
      layers.forEach((layer, i) => {
        const lam = e.lambda_s[layer];
        rows.push(h("tr", { dataset: { entry, layer } },
          h("td", {}, entry === "all" ? `all (layer ${layer})` : entry),
          h("td", { class: "num" }, i ? "" : `${e.runs?.length ?? 0}/${total}`),
          h("td", { class: "num" }, num(lam?.mean, 4)), h("td", { class: "num" }, num(lam?.std, 4)),
          h("td", { class: "num" }, ci(lam, 4)),
          h("td", { class: "num" }, i ? "" : num(e.target_accuracy?.mean)),
          h("td", { class: "num" }, i ? "" : num(e.witness_accuracy?.mean)),
          h("td", { class: "num" }, i ? "" : num(e.transfer_gain?.mean)),
          h("td", { class: "num" }, i ? "" : ci(e.transfer_gain))));
      });
    }
    put(tableBox, 
      h("div", { class: "toolbar" }, h("h2", { style: "margin:0" }, "Summary"),
        h("span", { class: "muted small" }, state.summary ? "final" : "so far"), h("span", { class: "spacer" }),
        h("button", { type: "button", id: "table-csv", onclick: () => saveTable(entries, "csv") }, "Table as CSV"),
        h("button", { type: "button", id: "table-json", onclick: () => saveTable(entries, "json") }, "Table as JSON")),
      h("table", {}, h("thead", {}, h("tr", {}, ["entry", "runs", "λ_s mean", "λ_s std", "λ_s 95% CI",
        "target acc.", "witness acc.", "gain", "gain 95% CI"].map((t, i) => h("th", { class: i ? "num" : "" }, t)))),
      h("tbody", {}, rows)));
  };

  const saveTable = (entries, format) => {
    let text;
    if (format === "json") text = JSON.stringify({ study: id, final: Boolean(state.summary), entries }, null, 1);
    else {
      const lines = [["entry", "quanta_layer", "runs", "lambda_s_mean", "lambda_s_std", "lambda_s_ci95_low",
        "lambda_s_ci95_high", "target_accuracy_mean", "witness_accuracy_mean", "transfer_gain_mean"].join(",")];
      for (const [entry, e] of Object.entries(entries)) {
        for (const [layer, lam] of Object.entries(e.lambda_s || {})) {
          lines.push([entry, layer, lam?.n ?? 0, lam?.mean ?? "", lam?.std ?? "", lam?.ci95?.[0] ?? "",
            lam?.ci95?.[1] ?? "", e.target_accuracy?.mean ?? "", e.witness_accuracy?.mean ?? "",
            e.transfer_gain?.mean ?? ""].join(","));
        }
      }
      text = `${lines.join("\n")}\n`;
    }
    const url = URL.createObjectURL(new Blob([text], { type: format === "json" ? "application/json" : "text/csv" }));
    const link = h("a", { href: url, download: `study-${shortId(id)}.${format}` });
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(url), 60000);
  };

  const cellTitle = (child) => {
    const lam = child.result?.runs?.[0]?.quantas;
    const layer = layerName(child.spec.layer_to_transfer);
    const value = lam && layer !== "all" ? ` · λ_s ${num(lam[layer]?.source, 3)}` : "";
    return `layer ${layer} · run ${child.study_run} · ${child.status}${value}`;
  };

  const drawGrid = () => {
    const spec = state.study.spec;
    const entries = entriesOf(spec, [...children.values()]);
    const runs = Number(spec.nb_of_runs || 1);
    const grid = h("div", { class: "cgrid", style: `grid-template-columns: max-content repeat(${runs}, 14px)` });
    grid.append(h("span", {}), ...Array.from({ length: runs }, (_, r) =>
      h("span", { class: "collabel" }, r % 5 === 0 ? String(r) : "")));
    cells.clear();
    const byKey = new Map([...children.values()].map((c) => [childKey(c), c]));
    for (const entry of entries) {
      grid.append(h("span", { class: "rowlabel" }, entry === "all" ? "all layers" : `layer ${entry}`));
      for (let r = 0; r < runs; r += 1) {
        const child = byKey.get(`${entry}:${r}`);
        const cell = child
          ? h("a", { class: `cell ${child.status}`, href: `#/job/${child.id}`, title: cellTitle(child),
            dataset: { job: child.id, status: child.status, entry, run: String(r) } })
          : h("span", { class: "cell", title: `layer ${entry} · run ${r}` });
        cells.set(`${entry}:${r}`, cell);
        grid.append(cell);
      }
    }
    put(gridBox, h("h2", { style: "margin-top:4px" }, `Jobs: ${entries.length} layer${entries.length === 1 ? "" : "s"} × ${runs} run${runs === 1 ? "" : "s"}`),
      h("div", { style: "overflow-x:auto" }, grid),
      h("div", { class: "legend-inline" }, ["queued", "running", "succeeded", "failed", "cancelled"].map((s) =>
        h("span", {}, h("span", { class: `cell ${s}` }), s))));
  };

  const updateCell = (child) => {
    const cell = cells.get(childKey(child));
    if (!cell) return;
    cell.className = `cell ${child.status}`;
    cell.dataset.status = child.status;
    cell.title = cellTitle(child);
  };

  const drawMissing = () => {
    const failed = [...children.values()].filter((c) => c.status === "failed" || c.status === "cancelled");
    put(missingBox, failed.length ? h("div", { class: "card" }, h("h2", {}, `Missing runs (${failed.length})`),
      h("table", {}, h("tbody", {}, failed.slice(0, 50).map((c) => h("tr", {},
        h("td", {}, h("a", { href: `#/job/${c.id}`, class: "mono" }, shortId(c.id))),
        h("td", {}, `layer ${layerName(c.spec.layer_to_transfer)} run ${c.study_run}`), h("td", {}, badge(c.status)),
        h("td", { class: "small" }, c.error || "")))))) : "");
  };

  const scheduleStats = () => {
    if (statsTimer) return;
    statsTimer = setTimeout(() => { statsTimer = null; drawStats(); drawMissing(); }, 250);
  };

  const scheduleHead = () => {
    if (headTimer) return;
    headTimer = setTimeout(async () => {
      headTimer = null;
      try {
        state.study = await api(`/v1/jobs/${id}`, { signal: controller.signal });
        drawHead();
      } catch { /* the next event tries again */ }
    }, 1000);
  };

  const pump = async () => {
    while (state.stale.size && state.fetching < CHILD_FETCHES && !controller.signal.aborted) {
      const [childId] = state.stale;
      state.stale.delete(childId);
      state.fetching += 1;
      api(`/v1/jobs/${childId}`, { signal: controller.signal }).then((child) => {
        children.set(child.id, child);
        updateCell(child);
        scheduleStats();
      }).catch(() => {}).finally(() => { state.fetching -= 1; pump(); });
    }
  };

  const onEvents = (events) => {
    let studyChanged = false;
    for (const { event, data } of events) {
      if (event !== "status") continue;
      if (data.job === id) { studyChanged = true; continue; }
      const child = children.get(data.job);
      if (!child || child.status === data.status) continue;
      if (TERMINAL.has(child.status) && !TERMINAL.has(data.status)) continue;  // an old event replayed
      child.status = data.status;
      updateCell(child);
      if (TERMINAL.has(data.status)) { state.stale.add(child.id); }
    }
    pump();
    if (studyChanged) reload(); else scheduleHead();
  };

  const reload = async () => {
    try {
      const study = await api(`/v1/jobs/${id}`, { signal: controller.signal });
      if (study.kind !== "study") { navigate(`#/job/${id}`, true); return; }
      const first = !state.study;
      state.study = study;
      drawHead();
      if (first || TERMINAL.has(study.status)) {
        const list = await all(`/v1/jobs/${id}/children?limit=500`, { signal: controller.signal });
        children.clear();
        for (const child of list) children.set(child.id, child);
        drawGrid();
      }
      if (study.status === "succeeded" && !state.summary) {
        state.summary = await api(`/v1/jobs/${id}/summary`, { signal: controller.signal });
      }
      drawStats();
      drawMissing();
      if (ACTIVE.has(study.status) && !state.following) {
        state.following = true;
        follow(`/v1/jobs/${id}/events`, onEvents, { signal: controller.signal,
          onEnd: () => { state.following = false; reload(); } });
      }
    } catch (error) {
      if (error.name === "AbortError" || (error instanceof ApiError && error.status === 401)) return;
      put(head, h("h1", {}, `Study ${id}`), h("div", { class: "error-box" }, errorText(error)));
    }
  };
  reload();
  return () => { controller.abort(); clearTimeout(statsTimer); clearTimeout(headTimer); destroyAll(charts); };
}
