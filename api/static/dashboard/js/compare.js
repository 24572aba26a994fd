// Compare studies: their transferability curves and accuracies on the same axes. The URL
// holds the ids (#/compare?ids=A,B), so a comparison can be shared.

import { api, ApiError } from "./api.js";
import { destroyAll, lineChart } from "./charts.js";
import { h, num, ci, errorText, shortId, specSummary, taskName, when, badge, put } from "./util.js";
import { accuracyData, curveData, layerAxis, studyStats } from "./study.js";

const REFRESH_MS = 5000;

export function renderCompare(root, params, navigate) {
  const ids = (params.get("ids") || "").split(",").map((s) => s.trim()).filter(Boolean);
  const controller = new AbortController();
  const charts = [];
  const picker = h("div", { class: "picker", id: "study-picker" }, h("span", { class: "muted" }, "Loading studies…"));
  const pasted = h("input", { type: "text", id: "compare-ids", size: "60", value: ids.join(","),
    placeholder: "study ids, comma-separated" });
  const curveBox = h("div", { class: "card", id: "compare-curve" });
  const accuracyBox = h("div", { class: "card", id: "compare-accuracy" });
  const tableBox = h("div", { class: "card" });
  const problem = h("div");
  const differences = h("div", { id: "compare-differences" });
  const apply = () => {
    const chosen = [...picker.querySelectorAll("input:checked")].map((i) => i.value);
    const typed = pasted.value.split(",").map((s) => s.trim()).filter(Boolean);
    const all = [...new Set([...typed.filter((t) => !picker.querySelector(`input[value="${CSS.escape(t)}"]`)), ...chosen])];
    navigate(`#/compare?ids=${all.join(",")}`);
  };
  put(root, h("h1", {}, "Compare studies"),
    h("p", { class: "muted" }, "Pick two or more studies; the page's address keeps them, to share."),
    picker,
    h("div", { class: "toolbar" }, h("label", {}, "Ids", pasted),
      h("button", { type: "button", class: "primary", id: "compare-go", onclick: apply }, "Compare")),
    problem, differences, ids.length ? h("div", { class: "grid2" }, curveBox, accuracyBox) : null,
    ids.length ? tableBox : null);

  api("/v1/jobs?kind=study&limit=100", { signal: controller.signal }).then((page) => {
    const known = new Set(page.items.map((s) => s.id));
    const extra = ids.filter((i) => !known.has(i));
    put(picker, ...page.items.map((s) => h("label", {},
      h("input", { type: "checkbox", value: s.id, checked: ids.includes(s.id), onchange: () => {
        const chosen = [...picker.querySelectorAll("input:checked")].map((i) => i.value);
        pasted.value = [...new Set([...extra, ...chosen])].join(",");
      } }), " ", h("span", { class: "mono" }, shortId(s.id)), " ", badge(s.status), " ", specSummary(s),
      h("span", { class: "muted small" }, ` · ${when(s.created_at)}`))));
    if (!page.items.length) put(picker, h("span", { class: "muted" }, "No study yet."));
  }).catch((error) => {
    if (!(error instanceof ApiError && error.status === 401) && error.name !== "AbortError") {
      put(picker, h("div", { class: "error-box" }, errorText(error)));
    }
  });

  let timer = null;
  const draw = async () => {
    if (!ids.length) return;
    let again = true;
    try {
      again = await drawOnce();
    } catch (error) {
      if (error.name === "AbortError" || (error instanceof ApiError && error.status === 401)) return;
      put(problem, h("div", { class: "error-box" }, errorText(error)));
    }
    if (again && !controller.signal.aborted) timer = setTimeout(draw, REFRESH_MS);
  };
  /** Draw the studies as they are now; true while some of them may still change. */
  const drawOnce = async () => {
    const loaded = await Promise.all(ids.map((id) => studyStats(id, { signal: controller.signal })));
    put(problem);
    // What else than the seed differs between the studies: the service's own rule.
    const compared = await api(`/v1/studies/compare?ids=${ids.map(encodeURIComponent).join(",")}&partial=true`,
      { signal: controller.signal });
    const differing = compared.spec_differences.filter((d) => Object.keys(d.fields).length);
    put(differences, ...differing.map((d) => h("div", { class: "warn-box" },
      `${shortId(d.b)} differs from ${shortId(d.a)} in more than the seed: `,
      Object.entries(d.fields).map(([k, [a, b]]) => `${k} ${JSON.stringify(a)} → ${JSON.stringify(b)}`).join(", "),
      ". A difference between their λ_s may come from that, not from chance.")));
    const studies = loaded.map((s, i) => ({
      entries: s.entries, colorIndex: i,
      label: `${shortId(s.study.id)} ${taskName(s.study.spec.source_task)}→${taskName(s.study.spec.target_task)}: `,
    }));
    // Layers in order: by number, or by name in the studies' (graph) order; "all" last.
    const entries = layerAxis(loaded.map((s) => Object.keys(s.entries)),
      loaded.some((s) => "all" in s.entries)).keys;
    put(tableBox, h("h2", {}, "Mean final λ_s per layer (95% CI)"),
      h("div", { style: "overflow-x:auto" }, h("table", { id: "compare-table" }, h("thead", {}, h("tr", {}, h("th", {}, "study"), h("th", {}, "status"),
        entries.map((e) => h("th", { class: "num" }, e === "all" ? "all (mean of layers)" : `layer ${e}`)))),
      h("tbody", {}, loaded.map((s) => h("tr", {},
        h("td", {}, h("a", { href: `#/study/${s.study.id}`, class: "mono" }, shortId(s.study.id)), " ", specSummary(s.study)),
        h("td", {}, badge(s.study.status), s.final ? "" : h("span", { class: "muted small" }, " live")),
        entries.map((e) => {
          const entry = s.entries[e];
          if (!entry) return h("td", { class: "num" }, "–");
          const lams = Object.entries(entry.lambda_s || {});
          const stat = e === "all" ? null : entry.lambda_s?.[e];
          const mean = e === "all" ? avg(lams.map(([, v]) => v?.mean)) : stat?.mean;
          return h("td", { class: "num", title: stat ? ci(stat, 4) : "" }, num(mean), stat?.n ? h("div", { class: "small muted" }, ci(stat)) : null);
        })))))));
    destroyAll(charts);
    const c = h("div"), a = h("div");
    put(curveBox, c);
    put(accuracyBox, a);
    curveBox.dataset.studies = String(loaded.length);
    // A chart that cannot be drawn must not hide the table: say why in the console.
    try {
      charts.push(lineChart(c, { title: "Transferability: final λ_s per layer", xLabel: "transferred layer",
        yLabel: "λ_s", yRange: [0, 1], xDiscrete: true, intervals: true, ...curveData(studies) }));
      charts.push(lineChart(a, { title: "Test accuracy per layer", xLabel: "transferred layer",
        yLabel: "test accuracy", yRange: [0, 1], xDiscrete: true, intervals: true,
        ...accuracyData(studies) }));
    } catch (error) {
      console.error("compare: a chart could not be drawn", error, error.stack);
    }
    return loaded.some((s) => !s.final && s.study.status !== "failed" && s.study.status !== "cancelled");
  };
  draw();
  return () => { controller.abort(); clearTimeout(timer); destroyAll(charts); };
}

function avg(values) {
  const x = values.filter((v) => v !== null && v !== undefined);
  return x.length ? x.reduce((a, b) => a + b, 0) / x.length : null;
}
