// The jobs table: one page of the API's list at a time (its `next` link), refreshed
// every few seconds while the tab is visible; filters and page live in the URL.

import { api, ApiError } from "./api.js";
import {
  ACTIVE, badge, bar, duration, errorText, fraction, h, jobHref, shortId, specSummary, when, put } from "./util.js";

const STATUSES = ["queued", "running", "succeeded", "failed", "cancelled"];
const KINDS = ["source", "transfer", "study"];
const LIMIT = 50;
const REFRESH_MS = 3000;

export async function cancelJob(job, after) {
  const what = job.kind === "study" ? "this study and all its queued and running jobs" : "this job";
  if (!confirm(`Cancel ${what}?`)) return;
  try {
    await api(`/v1/jobs/${job.id}/cancel`, { method: "POST" });
  } catch (error) {
    if (!(error instanceof ApiError && error.status === 401)) alert(errorText(error));
  }
  after?.();
}

export function renderJobs(root, params, navigate) {
  const status = params.get("status") || "";
  const kind = params.get("kind") || "";
  const offset = Math.max(0, Number(params.get("offset")) || 0);
  const query = new URLSearchParams({ limit: String(LIMIT), offset: String(offset) });
  if (status) query.set("status", status);
  if (kind) query.set("kind", kind);

  const go = (changes) => {
    const next = new URLSearchParams({ status, kind, offset: String(offset), ...changes });
    for (const [key, value] of [...next]) if (!value || value === "0") next.delete(key);
    navigate(`#/jobs${next.toString() ? `?${next}` : ""}`);
  };
  const select = (name, values, current) => h("select", {
    id: `filter-${name}`, "aria-label": `Filter by ${name}`,
    onchange: (e) => go({ [name]: e.target.value, offset: "0" }),
  }, h("option", { value: "" }, `any ${name}`),
  values.map((v) => h("option", { value: v, selected: v === current }, v)));

  const body = h("tbody");
  const total = h("span", { class: "muted", id: "jobs-total" });
  const prev = h("button", { type: "button", disabled: offset === 0,
    onclick: () => go({ offset: String(Math.max(0, offset - LIMIT)) }) }, "← Newer");
  const next = h("button", { type: "button", disabled: true }, "Older →");
  const problem = h("div");
  put(root, 
    h("h1", {}, "Jobs"),
    h("div", { class: "toolbar" },
      h("label", {}, "Status", select("status", STATUSES, status)),
      h("label", {}, "Kind", select("kind", KINDS, kind)),
      h("a", { class: "button primary", href: "#/submit/source" }, "Submit a job"),
      h("span", { class: "spacer" }), total),
    problem,
    h("table", { id: "jobs-table" },
      h("thead", {}, h("tr", {},
        h("th", {}, "Job"), h("th", {}, "Kind"), h("th", {}, "Status"), h("th", {}, "Spec"),
        h("th", {}, "Progress"), h("th", {}, "Created"), h("th", { class: "num" }, "Duration"),
        h("th", {}, ""))),
      body),
    h("div", { class: "pager" }, prev, next));

  let timer = null;
  let stopped = false;
  const controller = new AbortController();
  const refresh = async () => {
    if (stopped) return;
    try {
      const page = await api(`/v1/jobs?${query}`, { signal: controller.signal });
      if (stopped) return;
      put(problem);
      const first = page.items.length ? offset + 1 : 0;
      total.textContent = `${first}–${offset + page.items.length} of ${page.total} job${page.total === 1 ? "" : "s"}`;
      next.disabled = !page.next;
      next.onclick = () => {
        const following = new URL(page.next, location.origin).searchParams.get("offset");
        go({ offset: following || String(offset + LIMIT) });
      };
      put(body, ...page.items.map((job) => row(job, refresh)));
      if (!page.items.length) {
        body.append(h("tr", {}, h("td", { colspan: "8", class: "muted" },
          status || kind ? "No job matches these filters." : "No job yet: submit one.")));
      }
    } catch (error) {
      if (stopped || error.name === "AbortError") return;
      if (error instanceof ApiError && error.status === 401) return;
      put(problem, h("div", { class: "error-box" }, errorText(error)));
    }
    if (!stopped) timer = setTimeout(tick, REFRESH_MS);
  };
  const tick = () => {
    if (document.visibilityState === "hidden") { timer = setTimeout(tick, REFRESH_MS); return; }
    refresh();
  };
  refresh();
  return () => { stopped = true; clearTimeout(timer); controller.abort(); };
}

function row(job, refresh) {
  const parent = job.parent_id
    ? h("div", { class: "small muted" }, "in study ", h("a", { href: `#/study/${job.parent_id}` }, shortId(job.parent_id)))
    : null;
  return h("tr", { dataset: { job: job.id, status: job.status } },
    h("td", {}, h("a", { href: jobHref(job), class: "mono" }, shortId(job.id)), parent),
    h("td", {}, job.kind),
    h("td", {}, badge(job.status), job.cancel_requested && ACTIVE.has(job.status)
      ? h("div", { class: "small muted" }, "cancelling…") : null),
    h("td", { class: "small" }, specSummary(job)),
    h("td", {}, bar(fraction(job)), " ", h("span", { class: "small muted" }, progressText(job))),
    h("td", { class: "small" }, when(job.created_at)),
    h("td", { class: "num small" }, duration(job)),
    h("td", {}, ACTIVE.has(job.status) && !job.cancel_requested
      ? h("button", { type: "button", class: "danger small", "data-cancel": job.id,
        onclick: () => cancelJob(job, refresh) }, "Cancel")
      : null));
}

export function progressText(job) {
  const p = job.progress;
  if (!p) return "";
  if (job.kind === "study") return `${p.done}/${p.total} jobs`;
  const runs = p.nb_of_runs > 1 ? `run ${p.run + 1}/${p.nb_of_runs} · ` : "";
  return `${runs}epoch ${p.epoch}/${p.nb_of_epochs}`;
}
