// One job: its state, live per-epoch charts (from the event stream while it runs, from its
// JSONL files once it ended), the final quantas, and its files.

import { api, ApiError, follow } from "./api.js";
import { destroyAll, lineChart } from "./charts.js";
import { cancelJob, progressText } from "./jobs.js";
import {
  ACTIVE, badge, bar, BUILTIN_LAYERS, bytes, downloadLink, duration, errorText, fraction, h, layerName,
  num, shortId, specSummary, TERMINAL, when, put } from "./util.js";

const PREVIEW_CHARS = 200000;

/** The layers a transfer mixes: its one layer, or all at once: the built-in networks' 0-6,
 *  or for a network of the user's the layers its results name (`seen`, in their order). */
export function transferredLayers(spec, seen = []) {
  const layer = layerName(spec.layer_to_transfer);
  if (layer !== "all") return [layer];
  return spec.source_model ? [...new Set(seen)] : BUILTIN_LAYERS;
}

function lastJsonLine(text) {
  const lines = text.split("\n").filter((line) => line.trim());
  return lines.length ? JSON.parse(lines[lines.length - 1]) : null;
}

export function renderJob(root, id, navigate) {
  const controller = new AbortController();
  const charts = [];
  const state = { job: null, epochs: new Map(), witness: new Map(), following: false };
  const head = h("div");
  const chartsBox = h("div", { class: "grid2" });
  const finals = h("div");
  const files = h("div");
  const preview = h("div", { id: "artifact-preview" });
  put(root, head, chartsBox, finals, files, preview);
  let redrawPending = false;

  const store = (run, epoch) => {
    if (!state.epochs.has(run)) state.epochs.set(run, new Map());
    const runs = state.epochs.get(run);
    if (!runs.has(epoch)) runs.set(epoch, { metrics: {}, quantas: {} });
    return runs.get(epoch);
  };

  const drawHead = () => {
    const job = state.job;
    const facts = [
      ["Kind", job.kind], ["Spec", specSummary(job)],
      ["Progress", h("span", {}, bar(fraction(job), true), " ", progressText(job))],
      ["Attempts", String(job.attempts)], ["Worker", job.worker || "–"],
      ["Created", when(job.created_at)], ["Started", when(job.started_at) || "–"],
      ["Finished", when(job.finished_at) || "–"], ["Duration", duration(job) || "–"],
    ];
    if (job.parent_id) {
      facts.unshift(["Study", h("a", { href: `#/study/${job.parent_id}` }, shortId(job.parent_id)),
        ` run ${job.study_run}`]);
    }
    const actions = [];
    if (ACTIVE.has(job.status) && !job.cancel_requested) {
      actions.push(h("button", { type: "button", class: "danger", id: "cancel-job",
        onclick: () => cancelJob(job, reloadJob) }, "Cancel"));
    }
    if (job.kind === "source" && job.status === "succeeded") {
      actions.push(h("a", { class: "button primary", href: `#/submit/study?from=${job.id}` },
        "Study its transferability"), h("a", { class: "button", href: `#/submit/transfer?from=${job.id}` },
        "Transfer job"));
    }
    put(head, 
      h("h1", {}, `${job.kind} job `, h("span", { class: "mono" }, job.id), " ", badge(job.status)),
      job.cancel_requested && ACTIVE.has(job.status) ? h("p", { class: "muted" }, "Cancel requested: it stops at its next batch.") : null,
      job.error ? h("div", { class: "error-box", id: "job-error" }, job.error) : null,
      h("div", { class: "grid2" },
        h("div", { class: "card" }, h("dl", { class: "facts" },
          facts.map(([k, ...v]) => [h("dt", {}, k), h("dd", {}, ...v)]))),
        h("div", { class: "card" }, h("h3", {}, "Spec"), h("dl", { class: "facts small" },
          Object.entries(job.spec).map(([k, v]) => [h("dt", {}, k),
            h("dd", { class: "mono" }, typeof v === "object" && v !== null ? JSON.stringify(v) : String(v))])))),
      actions.length ? h("div", { class: "toolbar" }, actions) : null);
  };

  // The layers results name: the final runs' quantas, then the epochs' (live or from files).
  const layers = () => transferredLayers(state.job.spec, [
    ...(state.job.result?.runs || []).flatMap((run) => Object.keys(run.quantas || {})),
    ...[...state.epochs.values()].flatMap((m) => [...m.values()].flatMap((e) => Object.keys(e.quantas)))]);

  const chartBox = (cls) => {
    const box = h("div", { class: `card ${cls}` });
    chartsBox.append(box);
    return box;
  };

  const drawCharts = () => {
    destroyAll(charts);
    put(chartsBox);
    const job = state.job;
    const spec = job.spec;
    const runs = job.kind === "source" ? 1 : Number(spec.nb_of_runs || 1);
    const epochs = Number(job.kind === "source" ? spec.nb_of_epochs : spec.nb_of_target_epochs) || 1;
    const xs = Array.from({ length: epochs + 1 }, (_, i) => i);
    const value = (run, epoch, pick) => {
      const entry = state.epochs.get(run)?.get(epoch);
      const v = entry ? pick(entry) : undefined;
      return v === undefined || v === null ? null : Number(v);
    };
    const runLabel = (r) => (runs > 1 ? ` r${r}` : "");
    const seen = [...state.epochs.values()].some((m) => m.size);
    if (job.kind !== "source") {
      const series = [], data = [xs];
      layers().forEach((layer, li) => {
        for (let r = 0; r < runs; r += 1) {
          series.push({ label: `layer ${layer}${runLabel(r)}`, color: colourOf(li), dash: r ? [6, 3] : undefined });
          data.push(xs.map((e) => value(r, e, (entry) => entry.quantas[layer]?.source)));
        }
      });
      const box = chartBox("chart-lambda");
      box.dataset.points = String(data.slice(1).flat().filter((v) => v !== null).length);
      charts.push(lineChart(box, { title: "λ_s per epoch (share of the source's features)",
        xLabel: "epoch", yLabel: "λ_s", xDiscrete: true, yRange: [0, 1],
        series, data }));
    }
    const metricNames = new Set();
    for (const runMap of state.epochs.values()) for (const e of runMap.values()) Object.keys(e.metrics).forEach((k) => metricNames.add(k));
    const lossSeries = [], lossData = [xs], accSeries = [], accData = [xs];
    for (let r = 0; r < runs; r += 1) {
      lossSeries.push({ label: `loss${runLabel(r)}`, color: colourOf(r) });
      lossData.push(xs.map((e) => value(r, e, (entry) => entry.metrics.loss)));
      accSeries.push({ label: `train accuracy${runLabel(r)}`, color: colourOf(r) });
      accData.push(xs.map((e) => value(r, e, (entry) => entry.metrics.categorical_accuracy)));
      for (const name of metricNames) {
        if (name === "val_categorical_accuracy" || name === "test_categorical_accuracy") {
          accSeries.push({ label: `test accuracy${runLabel(r)}`, color: colourOf(r), dash: [2, 3] });
          accData.push(xs.map((e) => value(r, e, (entry) => entry.metrics[name])));
        }
      }
      if (state.witness.has(r)) {
        accSeries.push({ label: `witness accuracy${runLabel(r)}`, color: colourOf(r), dash: [6, 3] });
        accData.push(xs.map((e) => { const m = state.witness.get(r).get(e); return m ? Number(m.categorical_accuracy) : null; }));
      }
    }
    charts.push(lineChart(chartBox("chart-loss"), { title: "Training loss per epoch", xLabel: "epoch",
      yLabel: "loss", xDiscrete: true, series: lossSeries, data: lossData }));
    charts.push(lineChart(chartBox("chart-accuracy"), { title: "Accuracy per epoch", xLabel: "epoch",
      yLabel: "accuracy", xDiscrete: true, yRange: [0, 1], series: accSeries, data: accData }));
    if (!seen) chartsBox.prepend(h("p", { class: "muted", style: "grid-column:1/-1" },
      ACTIVE.has(job.status) ? "Waiting for the first epoch…" : "No epoch was recorded."));
  };

  const scheduleCharts = () => {
    if (redrawPending) return;
    redrawPending = true;
    requestAnimationFrame(() => { redrawPending = false; drawCharts(); });
  };

  const drawFinals = () => {
    const job = state.job;
    const runs = job.result?.runs;
    if (!runs?.length) {
      const metrics = job.result?.test_metrics;
      put(finals, metrics ? h("div", { class: "card" }, h("h2", {}, "Test metrics"),
        metricsTable(metrics)) : "");
      return;
    }
    const shown = layers();
    put(finals, h("div", { class: "card" }, h("h2", {}, "Final quantas"),
      h("table", { id: "final-quantas" },
        h("thead", {}, h("tr", {}, h("th", {}, "run"), shown.map((l) => h("th", { class: "num" }, `λ_s layer ${l}`)),
          h("th", { class: "num" }, "test accuracy"), h("th", { class: "num" }, "witness accuracy"),
          h("th", { class: "num" }, "transfer gain"))),
        h("tbody", {}, runs.map((run) => h("tr", {}, h("td", {}, String(run.run)),
          shown.map((l) => h("td", { class: "num" }, num(run.quantas?.[l]?.source, 4))),
          h("td", { class: "num" }, num(run.target_metrics?.categorical_accuracy)),
          h("td", { class: "num" }, num(run.witness_metrics?.categorical_accuracy)),
          h("td", { class: "num" }, num(run.transfer_gain))))))));
  };

  const showPreview = async (artifact) => {
    put(preview, h("h2", {}, artifact.path), h("p", { class: "muted" }, "Loading…"));
    try {
      if (artifact.path.endsWith(".png")) {
        const response = await api(artifact.url, { raw: true });
        const url = URL.createObjectURL(await response.blob());
        put(preview, h("h2", {}, artifact.path), h("img", { class: "preview", src: url, alt: artifact.path }));
      } else if (/\.(jsonl|json|csv|txt)$/.test(artifact.path)) {
        const text = await api(artifact.url, { raw: true }).then((r) => r.text());
        const shown = text.length > PREVIEW_CHARS ? `${text.slice(0, PREVIEW_CHARS)}\n… (${bytes(text.length)} in all)` : text;
        put(preview, h("h2", {}, artifact.path), h("pre", { class: "preview", id: "preview-text" }, shown));
      } else {
        put(preview, h("h2", {}, artifact.path), h("p", { class: "muted" },
          `A binary file (${bytes(artifact.size)}): `, downloadLink(artifact.url, artifact.path.split("/").pop(), "download it")));
      }
      preview.scrollIntoView({ behavior: "smooth", block: "start" });
    } catch (error) {
      put(preview, h("div", { class: "error-box" }, errorText(error)));
    }
  };

  const drawFiles = (listing) => {
    const job = state.job;
    const items = listing?.items || [];
    put(files, h("div", { class: "card" },
      h("h2", {}, `Files (${items.length})`, listing?.partial && items.length ? h("span", { class: "muted small" }, " partial: the job did not succeed") : null),
      TERMINAL.has(job.status)
        ? h("p", {}, downloadLink(`/v1/jobs/${job.id}/archive`, `quanta-${job.id}.zip`, "Download everything (zip)"))
        : h("p", { class: "muted" }, "Files are listed when the job ends."),
      items.length ? h("table", { id: "artifacts" },
        h("thead", {}, h("tr", {}, h("th", {}, "path"), h("th", { class: "num" }, "size"), h("th", {}, "SHA-256"), h("th", {}, ""))),
        h("tbody", {}, items.map((a) => h("tr", { dataset: { path: a.path } },
          h("td", {}, h("a", { href: `#/job/${job.id}`, class: "mono", "data-open": a.path,
            onclick: (e) => { e.preventDefault(); showPreview(a); } }, a.path)),
          h("td", { class: "num" }, bytes(a.size)),
          h("td", { class: "sha" }, a.sha256),
          h("td", {}, downloadLink(a.url, a.path.split("/").pop(), "download")))))) : null));
  };

  // Epochs from the job's own files: the λ_s history starts before the first epoch.
  const loadFromFiles = async (listing) => {
    const job = state.job;
    const paths = new Map((listing?.items || []).map((a) => [a.path, a]));
    const fetchLast = async (suffix) => {
      const match = [...paths.keys()].find((p) => p.endsWith(`/${suffix}`) || p === suffix);
      if (!match) return null;
      const text = await api(paths.get(match).url, { raw: true, signal: controller.signal }).then((r) => r.text());
      return lastJsonLine(text);
    };
    const fromFiles = new Map();
    const witness = new Map();
    const metricsInto = (record, run, target) => {
      for (const [epoch, metrics] of Object.entries(record || {})) {
        if (!target.has(run)) target.set(run, new Map());
        if (!target.get(run).has(Number(epoch) + 1)) target.get(run).set(Number(epoch) + 1, { metrics: {}, quantas: {} });
        Object.assign(target.get(run).get(Number(epoch) + 1).metrics, metrics);
      }
    };
    if (job.kind === "source") {
      metricsInto(await fetchLast("training_metrics_of_source.jsonl"), 0, fromFiles);
    } else {
      const label = layerName(job.spec.layer_to_transfer);
      const runs = Number(job.spec.nb_of_runs || 1);
      for (let r = 0; r < runs; r += 1) {
        const quantas = await fetchLast(`quantas_r_${r}_l_${label}.jsonl`);
        for (const [layer, record] of Object.entries(quantas || {})) {
          (record.quantas?.source || []).forEach((value, epoch) => {
            if (!fromFiles.has(r)) fromFiles.set(r, new Map());
            if (!fromFiles.get(r).has(epoch)) fromFiles.get(r).set(epoch, { metrics: {}, quantas: {} });
            fromFiles.get(r).get(epoch).quantas[layer] = { source: value, target: record.quantas.target?.[epoch] };
          });
        }
        metricsInto(await fetchLast(`training_metrics_of_target_r_${r}_l_${label}.jsonl`), r, fromFiles);
        // With test_every_epoch: the test split's metrics after each epoch.
        const tested = await fetchLast(`testing_metrics_of_target_per_epoch_r_${r}_l_${label}.jsonl`);
        metricsInto(Object.fromEntries(Object.entries(tested || {}).map(([epoch, m]) =>
          [epoch, Object.fromEntries(Object.entries(m).map(([k, v]) => [`test_${k}`, v]))])), r, fromFiles);
        const w = new Map();
        metricsInto(await fetchLast(`training_metrics_of_witness_r_${r}_l_${label}.jsonl`), r, w);
        if (w.has(r)) witness.set(r, new Map([...w.get(r)].map(([e, v]) => [e, v.metrics])));
      }
    }
    if (fromFiles.size) state.epochs = fromFiles;
    state.witness = witness;
  };

  const loadEnded = async () => {
    let listing = null;
    try {
      listing = await api(`/v1/jobs/${id}/artifacts`, { signal: controller.signal });
      await loadFromFiles(listing);
    } catch (error) {
      if (error.name === "AbortError" || (error instanceof ApiError && error.status === 401)) return;
      put(files, h("div", { class: "error-box" }, errorText(error)));
    }
    drawCharts();
    drawFiles(listing);
  };

  const startFollowing = () => {
    if (state.following) return;
    state.following = true;
    follow(`/v1/jobs/${id}/events`, (events) => {
      let statusChanged = false;
      for (const { event, data } of events) {
        if (event === "epoch" && data.job === id) {
          const entry = store(Number(data.run || 0), Number(data.epoch));
          Object.assign(entry.metrics, data.metrics || {});
          Object.assign(entry.quantas, data.quantas || {});
          state.job.progress = { ...(state.job.progress || {}), ...pickProgress(data) };
        } else if (event === "status") {
          statusChanged = true;
        }
      }
      scheduleCharts();
      if (statusChanged) reloadJob(); else drawHead();
    }, { signal: controller.signal, onEnd: () => { state.following = false; reloadJob(); } });
  };

  const reloadJob = async () => {
    try {
      const job = await api(`/v1/jobs/${id}`, { signal: controller.signal });
      if (job.kind === "study") { navigate(`#/study/${id}`, true); return; }
      const wasActive = state.job && ACTIVE.has(state.job.status);
      state.job = job;
      drawHead();
      drawFinals();
      if (ACTIVE.has(job.status)) {
        if (!state.following) { drawCharts(); drawFiles(null); }
        startFollowing();
      } else if (wasActive || !state.loaded) {
        state.loaded = true;
        await loadEnded();
      }
    } catch (error) {
      if (error.name === "AbortError" || (error instanceof ApiError && error.status === 401)) return;
      put(head, h("h1", {}, `Job ${id}`), h("div", { class: "error-box" }, errorText(error)));
    }
  };
  reloadJob();
  return () => { controller.abort(); destroyAll(charts); };
}

function pickProgress(data) {
  const out = {};
  for (const key of ["run", "nb_of_runs", "epoch", "nb_of_epochs", "fraction"]) if (key in data) out[key] = data[key];
  return out;
}

function colourOf(index) {
  return getComputedStyle(document.documentElement).getPropertyValue(`--c${index % 8}`).trim();
}

export function metricsTable(metrics) {
  return h("table", { class: "metrics" }, h("tbody", {}, Object.entries(metrics).map(([k, v]) =>
    h("tr", {}, h("th", {}, k), h("td", { class: "num" }, num(v, 4))))));
}

export { layerName };
