// The public /v1 API, from the browser: every request carries the tab's token (if any),
// and a 401 anywhere hands control to the token prompt (main.js) before anything shows.

const TOKEN_KEY = "quanta.token";

export class ApiError extends Error {
  constructor(status, detail, method, path) {
    super(typeof detail === "string" ? detail : `${status} ${method} ${path}`);
    this.status = status;
    this.detail = detail;
  }
}

let unauthorized = () => {};

/** main.js installs the handler that hides the page and asks for a token. */
export function onUnauthorized(handler) {
  unauthorized = handler;
}

export const token = {
  get: () => sessionStorage.getItem(TOKEN_KEY) || "",
  set: (value) => sessionStorage.setItem(TOKEN_KEY, value),
  clear: () => sessionStorage.removeItem(TOKEN_KEY),
};

export function authHeaders(extra = {}) {
  const value = token.get();
  return value ? { ...extra, Authorization: `Bearer ${value}` } : { ...extra };
}

async function errorDetail(response) {
  try {
    const body = await response.json();
    return body && body.detail !== undefined ? body.detail : body;
  } catch {
    return `${response.status} ${response.statusText}`;
  }
}

/** fetch() a /v1 path; JSON in and out, ApiError on any non-2xx answer. */
export async function api(path, { method = "GET", json, body, signal, raw = false } = {}) {
  const headers = authHeaders(json !== undefined ? { "Content-Type": "application/json" } : {});
  const response = await fetch(path, {
    method, headers, signal, cache: "no-store",
    body: json !== undefined ? JSON.stringify(json) : body,
  });
  if (response.status === 401) {
    unauthorized(Boolean(token.get()));
    throw new ApiError(401, await errorDetail(response), method, path);
  }
  if (!response.ok) throw new ApiError(response.status, await errorDetail(response), method, path);
  if (raw) return response;
  const type = response.headers.get("content-type") || "";
  return type.includes("json") && !type.includes("jsonl") ? response.json() : response.text();
}

/** Every item of a paginated list, following its `next` links (at most `max` items). */
export async function all(path, { signal, max = 5000 } = {}) {
  const items = [];
  let next = path;
  while (next && items.length < max) {
    const page = await api(next, { signal });
    items.push(...page.items);
    next = page.next;
  }
  return items;
}

let schemaPromise = null;
/** The service's OpenAPI document (specs' JSON schemas), fetched once per page. */
export function openapi() {
  schemaPromise ??= fetch("/openapi.json").then((r) => {
    if (!r.ok) throw new ApiError(r.status, "cannot read /openapi.json", "GET", "/openapi.json");
    return r.json();
  });
  return schemaPromise;
}

function parseBlock(block) {
  let event = "message", id = null;
  const data = [];
  for (const line of block.split("\n")) {
    if (!line || line.startsWith(":")) continue;
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "event") event = value;
    else if (field === "data") data.push(value);
    else if (field === "id") id = Number(value);
  }
  if (!data.length) return null;
  let parsed;
  try { parsed = JSON.parse(data.join("\n")); } catch { parsed = data.join("\n"); }
  return { event, id, data: parsed };
}

/**
 * Follow a job's Server-Sent Events with fetch(), not EventSource, because EventSource
 * cannot send the Authorization header. Reconnects after a break, resuming after the
 * last event seen (`?after=`), until `event: end` or until `signal` aborts.
 * `onBatch(events)` gets the events of each chunk together, so a long replay costs one
 * redraw per chunk, not one per event.
 */
export function follow(path, onBatch, { signal, onEnd, onError } = {}) {
  let last = null;
  const run = async () => {
    while (!signal?.aborted) {
      try {
        const url = last === null ? path : `${path}?after=${last}`;
        const response = await fetch(url, { headers: authHeaders({ Accept: "text/event-stream" }),
          signal, cache: "no-store" });
        if (response.status === 401) { unauthorized(Boolean(token.get())); return; }
        if (!response.ok) throw new ApiError(response.status, await errorDetail(response), "GET", url);
        const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
        let buffer = "";
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buffer += value.replace(/\r\n?/g, "\n");
          const batch = [];
          let cut;
          while ((cut = buffer.indexOf("\n\n")) >= 0) {
            const parsed = parseBlock(buffer.slice(0, cut));
            buffer = buffer.slice(cut + 2);
            if (!parsed) continue;
            if (parsed.id !== null && !Number.isNaN(parsed.id)) last = parsed.id;
            if (parsed.event === "end") {
              if (batch.length) onBatch(batch);
              onEnd?.(parsed.data);
              return;
            }
            batch.push(parsed);
          }
          if (batch.length) onBatch(batch);
        }
      } catch (error) {
        if (signal?.aborted) return;
        onError?.(error);
        if (error instanceof ApiError && error.status >= 400 && error.status < 500) return;
      }
      await new Promise((resolve) => setTimeout(resolve, 2000));
    }
  };
  run();
}

/** Download a /v1 file: a plain link cannot send the token, so fetch it and save the blob. */
export async function download(path, filename) {
  const response = await api(path, { raw: true });
  const blob = await response.blob();
  const url = URL.createObjectURL(blob);
  const link = Object.assign(document.createElement("a"), { href: url, download: filename });
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60000);
}
