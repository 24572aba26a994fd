// The dashboard's entry point: hash routes (shareable URLs), and the token gate: when the
// API answers 401 the page shows nothing but the token prompt.

import { api, ApiError, onUnauthorized, token } from "./api.js";
import { renderCompare } from "./compare.js";
import { renderJob } from "./job.js";
import { renderJobs } from "./jobs.js";
import { renderStudy } from "./study.js";
import { renderSubmit } from "./submit.js";
import { errorText, h, put } from "./util.js";

const view = document.getElementById("view");
const dialog = document.getElementById("token-dialog");
const tokenForm = document.getElementById("token-form");
const tokenInput = document.getElementById("token-input");
const tokenMessage = document.getElementById("token-message");
const authState = document.getElementById("auth-state");
const forget = document.getElementById("forget-token");

let cleanup = null;
let locked = false;

function stopView() {
  if (cleanup) { try { cleanup(); } catch { /* a view that already ended */ } }
  cleanup = null;
}

function showAuthState() {
  const has = Boolean(token.get());
  authState.textContent = has ? "token set for this tab" : "";
  forget.hidden = !has;
}

function lock(wrong) {
  stopView();
  put(view);
  locked = true;
  if (wrong) token.clear();
  showAuthState();
  tokenMessage.textContent = wrong
    ? "That token was refused (401): it is unknown or revoked. Check it and try again."
    : "This service needs an API token to show anything.";
  tokenMessage.classList.toggle("wrong", wrong);
  tokenInput.value = "";
  if (!dialog.open) dialog.showModal();
  tokenInput.focus();
}

onUnauthorized(lock);

export function navigate(hash, replace = false) {
  if (replace) {
    history.replaceState(null, "", hash);
    route();
  } else if (location.hash === hash) {
    route();
  } else {
    location.hash = hash;
  }
}

function route() {
  if (locked) return;
  stopView();
  const raw = location.hash.replace(/^#\/?/, "") || "jobs";
  const [path, query = ""] = raw.split("?");
  const parts = path.split("/").filter(Boolean).map(decodeURIComponent);
  const params = new URLSearchParams(query);
  for (const link of document.querySelectorAll("[data-nav]")) {
    link.classList.toggle("active", link.dataset.nav === parts[0]);
  }
  const page = h("div");
  put(view, page);
  document.title = `QUANTA · ${parts[0] || "jobs"}`;
  switch (parts[0]) {
    case "job": cleanup = renderJob(page, parts[1], navigate); break;
    case "study": cleanup = renderStudy(page, parts[1], navigate); break;
    case "compare": cleanup = renderCompare(page, params, navigate); break;
    case "submit": cleanup = renderSubmit(page, parts[1], params, navigate); break;
    case "jobs":
    case "studies":
      // A job's own address is #/job/ID; #/jobs/ID (as the API's /v1/jobs/ID) leads there.
      if (parts[1]) { navigate(`#/${parts[0] === "studies" ? "study" : "job"}/${encodeURIComponent(parts[1])}`, true); return; }
      cleanup = renderJobs(page, params, navigate); break;
    default: put(view, h("h1", {}, "Not found"), h("p", {}, h("a", { href: "#/jobs" }, "Back to the jobs")));
  }
}

/** Ask the API once before drawing anything: without a valid token nothing is shown. */
async function unlock() {
  try {
    await api("/v1/jobs?limit=1");
  } catch (error) {
    if (error instanceof ApiError && error.status === 401) return;  // lock() already ran
    put(view, h("div", { class: "error-box" }, `The API does not answer: ${errorText(error)}`));
    return;
  }
  locked = false;
  if (dialog.open) dialog.close();
  showAuthState();
  route();
}

tokenForm.addEventListener("submit", (event) => {
  event.preventDefault();
  const value = tokenInput.value.trim();
  if (!value) return;
  token.set(value);
  unlock();
});
dialog.addEventListener("cancel", (event) => event.preventDefault());  // no way around it
forget.addEventListener("click", () => { token.clear(); locked = false; showAuthState(); unlock(); });
window.addEventListener("hashchange", route);
matchMedia("(prefers-color-scheme: dark)").addEventListener("change", route);
document.body.dataset.ready = "true";
showAuthState();
unlock();
