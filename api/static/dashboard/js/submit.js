// Submit forms, generated from the specs' JSON schemas in /openapi.json: whatever the API
// accepts, the form offers (defaults, ranges and help text from the schema), and the
// API's own 422 field errors are shown beside the fields they name.

import { api, ApiError, openapi } from "./api.js";
import { bytes, errorText, h, jobHref, layerValue, shortId, specSummary, put } from "./util.js";

const KINDS = ["source", "transfer", "study"];

/** Where a new form starts, where it differs from the spec's own defaults (the seed's
 *  tool's): the offline `digits` task, which runs anywhere, and quantas that learn 30 times
 *  faster than the network, so that λ_s moves in a few epochs (at 1 it barely does). */
const FORM_START = { source_task: "digits", target_task: "digits", quanta_learning_rate_multiplier: 30 };

/** A field error as people read it; pydantic's wording for a few of its types. */
export function readable(item) {
  switch (item.type) {
    case "missing": return "required";
    case "model_attributes_type": case "dict_type": case "model_type":
      return "choose a finished job or an upload";
    case "union_tag_invalid": case "literal_error": case "enum":
      return item.msg.replace(/^Input should be /, "expected ");
    default:
      return item.msg.replace(/^Value error, /, "").replace(/^Input should be /, "should be ");
  }
}

function resolver(doc) {
  const schemas = doc.components?.schemas || {};
  return (schema) => {
    let s = schema;
    while (s && s.$ref) s = schemas[s.$ref.split("/").pop()];
    return s || {};
  };
}

/** The spec schema of each job kind, found through POST /v1/jobs's discriminator. */
export async function specSchemas() {
  const doc = await openapi();
  const resolve = resolver(doc);
  const body = resolve(doc.paths["/v1/jobs"].post.requestBody.content["application/json"].schema);
  const out = {};
  const mapping = body.discriminator?.mapping || {};
  const variants = Object.keys(mapping).length
    ? Object.entries(mapping).map(([kind, ref]) => [kind, resolve({ $ref: ref })])
    : (body.oneOf || body.anyOf || []).map((v) => { const r = resolve(v); return [r.properties?.kind?.const, r]; });
  for (const [kind, create] of variants) if (kind) out[kind] = resolve(create.properties.spec);
  return { schemas: out, resolve };
}

function rangeText(s) {
  const parts = [];
  if (s.type === "integer") parts.push("integer");
  if (s.exclusiveMinimum !== undefined) parts.push(`> ${s.exclusiveMinimum}`);
  if (s.minimum !== undefined) parts.push(`≥ ${s.minimum}`);
  if (s.exclusiveMaximum !== undefined) parts.push(`< ${s.exclusiveMaximum}`);
  if (s.maximum !== undefined) parts.push(`≤ ${s.maximum}`);
  return parts.join(", ");
}

function fieldShell(name, schema, required, control, extra = []) {
  const error = h("div", { class: "ferr", id: `err-${name}`, role: "alert" });
  const range = [];
  const variants = (schema.anyOf || [schema]).filter((v) => v.type !== "null");
  const isNumber = (v) => v.type === "integer" || v.type === "number";
  // A number's range; not for a layer, which may also be a name.
  if (variants.length && variants.every(isNumber)) range.push(rangeText(variants[0]));
  if (schema.default !== undefined && schema.default !== null) range.push(`default ${JSON.stringify(schema.default)}`);
  else if (!required) range.push("optional");
  const shell = h("div", { class: "field", dataset: { field: name } },
    h("label", { for: `f-${name}` }, h("code", {}, name), required ? h("span", { class: "req", title: "required" }, " *") : null),
    control, ...extra,
    range.length ? h("div", { class: "range" }, range.join(" · ")) : null,
    schema.description ? h("div", { class: "help" }, schema.description) : null,
    error);
  return {
    shell,
    setError(text) {
      shell.classList.toggle("invalid", Boolean(text));
      error.textContent = text || "";
    },
  };
}

function uploadControl(name, onUploaded, setError) {
  const status = h("span", { class: "small muted" });
  const input = h("input", { type: "file", id: `upload-${name}`, "aria-label": `Upload a file for ${name}`,
    onchange: async () => {
      const file = input.files?.[0];
      if (!file) return;
      status.textContent = `uploading ${file.name}…`;
      setError("");
      const form = new FormData();
      form.append("file", file, file.name);
      try {
        const upload = await api("/v1/uploads", { method: "POST", body: form });
        status.textContent = `uploaded ${upload.filename} (${bytes(upload.size)}, ${upload.kind}) as ${shortId(upload.id)}`;
        onUploaded(upload);
      } catch (error) {
        status.textContent = "";
        if (!(error instanceof ApiError && error.status === 401)) setError(errorText(error).replace(/^body\.file: /, ""));
      }
    } });
  return h("span", { class: "row" }, input, status);
}

/** One control per property; each knows how to read, fill and flag itself. */
function widget(name, schema, required, ctx) {
  const { resolve } = ctx;
  const variants = (schema.anyOf || schema.oneOf || [schema]).map(resolve);
  const nullable = variants.some((v) => v.type === "null");
  const real = variants.filter((v) => v.type !== "null");
  const refs = real.filter((v) => v.type === "object" && (v.properties?.job || v.properties?.upload));
  const enums = real.filter((v) => v.type === "string" && (v.enum || v.const !== undefined));
  const arrays = real.filter((v) => v.type === "array");
  const id = `f-${name}`;
  const def = schema.default;

  // A file: a finished job's output, or an upload; a network may also be named
  // (keras.applications.NAME: a string of a pattern).
  const named = real.find((v) => v.type === "string" && v.pattern && !v.enum);
  if (refs.length && refs.length + (named ? 1 : 0) === real.length) {
    const canJob = refs.some((v) => v.properties.job);
    const canUpload = refs.some((v) => v.properties.upload);
    const wantsRun = /"run"/.test(schema.description || "");
    const hint = named ? named.pattern.replace(/^\^|\$$/g, "").replace(/\\\./g, ".").replace(/\[.*$/, "NAME") : "";
    const choice = h("select", { id, "aria-label": `${name}: what it names` },
      nullable || !required ? h("option", { value: "" }, "none") : null,
      canJob ? h("option", { value: "job", selected: required }, "a finished job") : null,
      canUpload ? h("option", { value: "upload" }, "an upload") : null,
      named ? h("option", { value: "name" }, hint) : null);
    const jobId = h("input", { type: "text", id: `${id}-job`, placeholder: "job id", size: "34", list: `${id}-jobs` });
    const jobs = h("datalist", { id: `${id}-jobs` });
    const run = h("input", { type: "number", id: `${id}-run`, min: "0", step: "1", placeholder: "run 0", style: "width:7em" });
    const uploadId = h("input", { type: "text", id: `${id}-upload`, placeholder: "upload id", size: "34", list: `${id}-uploads` });
    const uploads = h("datalist", { id: `${id}-uploads` });
    const nameInput = h("input", { type: "text", id: `${id}-name`, placeholder: hint, size: "40" });
    let field, read;
    const picked = () => ctx.picked(name, read().value ?? null);
    const uploader = uploadControl(name, (upload) => { uploadId.value = upload.id; picked(); }, (t) => field.setError(t));
    const jobRow = h("div", { class: "row" }, jobId, wantsRun ? run : null, jobs);
    const uploadRow = h("div", { class: "row" }, uploadId, uploads, uploader);
    const nameRow = h("div", { class: "row" }, nameInput);
    const sync = () => {
      jobRow.hidden = choice.value !== "job";
      uploadRow.hidden = choice.value !== "upload";
      nameRow.hidden = choice.value !== "name";
    };
    for (const control of [choice, jobId, uploadId, nameInput]) control.addEventListener("change", () => { sync(); picked(); });
    field = fieldShell(name, schema, required, choice, [jobRow, uploadRow, nameRow]);
    sync();
    ctx.suggestJobs(name, jobs);
    if (canUpload) ctx.suggestUploads(name, uploads);
    read = () => {
      if (choice.value === "job" && jobId.value.trim()) {
        const value = { job: jobId.value.trim() };
        if (wantsRun && run.value !== "") value.run = Number(run.value);
        return { value };
      }
      if (choice.value === "upload" && uploadId.value.trim()) return { value: { upload: uploadId.value.trim() } };
      if (choice.value === "name" && nameInput.value.trim()) return { value: nameInput.value.trim() };
      return required ? { value: null } : { omit: true };
    };
    return { ...field, name, read,
      fill(value) {
        if (value && value.job) { choice.value = "job"; jobId.value = value.job; if (value.run !== undefined) run.value = value.run; }
        else if (value && value.upload) { choice.value = "upload"; uploadId.value = value.upload; }
        else if (typeof value === "string" && named) { choice.value = "name"; nameInput.value = value; }
        sync();
        picked();
      } };
  }

  // A task: a name, or an uploaded dataset.
  if (enums.length && refs.length) {
    const names = enums.flatMap((v) => v.enum || [v.const]);
    const select = h("select", { id },
      required ? null : h("option", { value: "" }, "none"),
      names.map((n) => h("option", { value: n, selected: n === def }, n)),
      h("option", { value: "__upload" }, "an uploaded dataset…"));
    const uploadId = h("input", { type: "text", id: `${id}-upload`, placeholder: "upload id", size: "34" });
    let field;
    const uploader = uploadControl(name, (upload) => { uploadId.value = upload.id; }, (t) => field.setError(t));
    const uploadRow = h("div", { class: "row" }, uploadId, uploader);
    const sync = () => { uploadRow.hidden = select.value !== "__upload"; };
    select.addEventListener("change", sync);
    field = fieldShell(name, schema, required, select, [uploadRow]);
    sync();
    return { ...field, name,
      read() {
        if (select.value === "__upload") return uploadId.value.trim() ? { value: { upload: uploadId.value.trim() } } : { value: null };
        if (!select.value) return { omit: true };
        return select.value === def && !required ? { omit: true } : { value: select.value };
      },
      fill(value) {
        if (value && typeof value === "object") { select.value = "__upload"; uploadId.value = value.upload; }
        else select.value = value;
        sync();
      } };
  }

  // A layer: a built-in network's number, or a layer's name in a network of the user's:
  // the network's transferable layers to choose from once known (`network(layers)`), else
  // typed. A negative number: every layer at once.
  const integer = real.find((v) => v.type === "integer");
  if (integer && real.length === 2 && real.some((v) => v.type === "string")) {
    const number = h("input", { type: "number", id, step: "1", value: def ?? null });
    const select = h("select", { id: `${id}-name`, hidden: true });
    const text = h("input", { type: "text", id: `${id}-text`, hidden: true, size: "30",
      placeholder: "a layer's name, or -1 for all at once" });
    const field = fieldShell(name, schema, required, h("span", {}, number, select, text));
    return { ...field, name,
      read() {
        const raw = [number, select, text].find((c) => !c.hidden).value.trim();
        if (raw === "") return required ? { value: null } : { omit: true };
        return { value: layerValue(raw) };
      },
      fill(value) { number.value = value ?? ""; },
      network(layers) {
        number.hidden = layers !== null;
        select.hidden = !layers?.length;
        text.hidden = layers === null || layers.length > 0;
        if (layers?.length) {
          put(select, h("option", { value: "" }, "choose a layer"),
            layers.map((l) => h("option", { value: l.name }, `${l.name} (${l.class})`)),
            h("option", { value: "-1" }, "all at once (every transferable layer)"));
        }
      } };
  }

  // A list of layers: the built-in networks' numbers, or a network's layer names (as for
  // one layer above), maybe with named choices ("all").
  if (arrays.length) {
    const items = resolve(arrays[0].items || {});
    const numbers = (items.anyOf || [items]).map(resolve).find((v) => v.type === "integer") || items;
    const consts = enums.flatMap((v) => v.enum || [v.const]);
    const lo = numbers.minimum ?? 0, hi = numbers.maximum ?? lo + 9;
    const boxes = [];
    let names = [];
    const named = consts.map((c) => h("input", { type: "checkbox", value: c, id: `${id}-${c}`, checked: def === c }));
    for (let v = lo; v <= hi; v += 1) {
      boxes.push(h("input", { type: "checkbox", value: String(v), id: `${id}-${v}`,
        checked: Array.isArray(def) && def.includes(v) }));
    }
    const sync = () => { const on = named.some((n) => n.checked); [...boxes, ...names].forEach((b) => { b.disabled = on; }); };
    named.forEach((n) => n.addEventListener("change", () => { named.forEach((o) => { if (o !== n) o.checked = false; }); sync(); }));
    // Both sets of boxes flow among the named choices (display: contents), one set shown.
    const numbered = h("span", { style: "display:contents" }, boxes.map((b) => h("label", {}, b, ` ${b.value}`)));
    const byName = h("span", { style: "display:contents", id: `${id}-names`, hidden: true });
    const text = h("input", { type: "text", id: `${id}-text`, hidden: true, size: "40",
      placeholder: "layer names, comma-separated" });
    const control = h("div", { class: "choices", id },
      named.map((n) => h("label", {}, n, ` ${n.value}`)), numbered, byName, text);
    sync();
    const field = fieldShell(name, schema, required, control);
    return { ...field, name,
      read() {
        const on = named.find((n) => n.checked);
        if (on) return { value: on.value };
        let values;
        if (!text.hidden) values = text.value.split(",").map((v) => v.trim()).filter(Boolean).map(layerValue);
        else if (!byName.hidden) values = names.filter((b) => b.checked).map((b) => b.value);
        else values = boxes.filter((b) => b.checked).map((b) => Number(b.value));
        if (!values.length) return required ? { value: [] } : { omit: true };
        return { value: values };
      },
      fill(value) {
        named.forEach((n) => { n.checked = n.value === value; });
        boxes.forEach((b) => { b.checked = Array.isArray(value) && value.includes(Number(b.value)); });
        names.forEach((b) => { b.checked = Array.isArray(value) && value.includes(b.value); });
        sync();
      },
      network(layers) {
        numbered.hidden = layers !== null;
        byName.hidden = !layers?.length;
        text.hidden = layers === null || layers.length > 0;
        names = (layers || []).map((l) => h("input", { type: "checkbox", value: l.name, id: `${id}-${l.name}` }));
        put(byName, names.map((b, i) => h("label", { title: `${layers[i].class}, output ${JSON.stringify(layers[i].output_shape)}` },
          b, ` ${b.value}`)));
        sync();
      } };
  }

  const main = real[0] || {};
  if (main.type === "boolean") {
    const box = h("input", { type: "checkbox", id, checked: def === true });
    const field = fieldShell(name, schema, required, h("span", {}, box));
    return { ...field, name,
      read: () => (box.checked === (def === true) && !required ? { omit: true } : { value: box.checked }),
      fill(value) { box.checked = Boolean(value); } };
  }
  if (enums.length) {
    const names = enums.flatMap((v) => v.enum || [v.const]);
    const select = h("select", { id },
      nullable || (!required && def === undefined) ? h("option", { value: "" }, "none") : null,
      names.map((n) => h("option", { value: n, selected: n === def }, n)));
    const field = fieldShell(name, schema, required, select);
    return { ...field, name,
      read: () => (!select.value || (select.value === def && !required) ? { omit: true } : { value: select.value }),
      fill(value) { select.value = value; } };
  }
  if (main.type === "integer" || main.type === "number") {
    const min = main.minimum ?? main.exclusiveMinimum;
    const input = h("input", { type: "number", id, step: main.type === "integer" ? "1" : "any",
      min: min !== undefined ? String(min) : null, max: main.maximum !== undefined ? String(main.maximum) : null,
      value: def !== undefined && def !== null ? String(def) : null,
      placeholder: def === undefined || def === null ? (nullable ? "none" : "") : String(def) });
    const field = fieldShell(name, schema, required, input);
    return { ...field, name,
      read() {
        if (input.value === "") return required ? { value: null } : { omit: true };
        const value = Number(input.value);
        return value === def && !required ? { omit: true } : { value };
      },
      fill(value) { input.value = value === null || value === undefined ? "" : String(value); } };
  }
  if (main.type === "string") {
    const input = h("input", { type: "text", id, value: typeof def === "string" ? def : null });
    const field = fieldShell(name, schema, required, input);
    return { ...field, name,
      read: () => (input.value === "" || (input.value === def && !required) ? { omit: true } : { value: input.value }),
      fill(value) { input.value = value ?? ""; } };
  }
  const area = h("textarea", { id, rows: "2", placeholder: "JSON" });
  const field = fieldShell(name, schema, required, area);
  return { ...field, name,
    read() {
      if (!area.value.trim()) return { omit: true };
      try { return { value: JSON.parse(area.value) }; } catch { return { value: area.value }; }
    },
    fill(value) { area.value = JSON.stringify(value); } };
}

/** Which field a 422 error names: the part of `loc` after "spec". */
export function fieldOf(loc) {
  const at = (loc || []).indexOf("spec");
  return at >= 0 && at + 1 < loc.length ? String(loc[at + 1]) : null;
}

export function renderSubmit(root, kind, params, navigate) {
  kind = KINDS.includes(kind) ? kind : "source";
  const controller = new AbortController();
  const tabs = h("div", { class: "tabs" }, KINDS.map((k) =>
    h("a", { href: `#/submit/${k}`, class: k === kind ? "active" : "", id: `tab-${k}` },
      { source: "Source training", transfer: "Transfer", study: "Study" }[k])));
  const body = h("div", {}, h("p", { class: "muted" }, "Reading the specs' schema…"));
  put(root, h("h1", {}, "Submit a job"), tabs, body);

  (async () => {
    const { schemas, resolve } = await specSchemas();
    const schema = schemas[kind];
    if (!schema) throw new Error(`the API has no ${kind} jobs`);
    const required = new Set(schema.required || []);
    const names = Object.keys(schema.properties || {});
    names.sort((a, b) => Number(required.has(b)) - Number(required.has(a)));
    const suggestions = new Map();
    const ctx = {
      resolve,
      suggestJobs(name, list) {
        const wanted = name.startsWith("source_") || kind === "source" ? "source" : "transfer";
        if (!suggestions.has(wanted)) {
          suggestions.set(wanted, api(`/v1/jobs?status=succeeded&kind=${wanted}&limit=20`, { signal: controller.signal })
            .then((p) => p.items).catch(() => []));
        }
        suggestions.get(wanted).then((jobs) => put(list, ...jobs.map((j) =>
          h("option", { value: j.id }, `${shortId(j.id)} ${specSummary(j)}`))));
      },
      /** The uploads of the kind a field takes (a built-in network's weights, or a model). */
      suggestUploads(name, list) {
        const wanted = name === "source_weights" ? "weights" : "model";
        api(`/v1/uploads?kind=${wanted}&limit=50`, { signal: controller.signal }).then((p) => put(list,
          ...p.items.map((u) => h("option", { value: u.id }, `${u.filename} (${bytes(u.size)})`)))).catch(() => {});
      },
      picked(name, value) { if (name === "source_model") chooseNetwork(value); },
    };
    // The source_model's layers for the layer fields: null (none: the built-in networks'
    // numbers), the transferable layers of an uploaded network, or [] (named, not listed).
    let asked = 0;
    const chooseNetwork = async (ref) => {
      const mine = ++asked;
      const show = (layers) => {
        if (mine !== asked) return;  // another network was chosen meanwhile
        widgets.filter((w) => w.network).forEach((w) => w.network(layers));
        form.dispatchEvent(new Event("change"));
      };
      byName.get("source_model")?.setError("");
      if (!ref?.upload) { show(ref ? [] : null); return; }
      try {
        const network = await api(`/v1/uploads/${encodeURIComponent(ref.upload)}/layers`, { signal: controller.signal });
        show(network.layers.filter((l) => l.transferable));
      } catch (error) {
        if (error.name === "AbortError" || (error instanceof ApiError && error.status === 401)) return;
        if (mine === asked) byName.get("source_model")?.setError(errorText(error).replace(/^path\.upload_id: /, ""));
        show([]);
      }
    };
    const widgets = names.map((n) => widget(n, schema.properties[n], required.has(n), ctx));
    const byName = new Map(widgets.map((w) => [w.name, w]));
    const general = h("div", { id: "form-errors" });
    const submit = h("button", { type: "submit", class: "primary", id: "submit-job" }, `Submit ${kind} job`);
    const preview = h("code", { class: "small muted", id: "spec-preview" });
    const form = h("form", { class: "spec", novalidate: true, id: `form-${kind}` }, widgets.map((w) => w.shell),
      h("div", { class: "form-actions" }, submit, general), h("div", { class: "form-actions" }, preview));
    const collect = () => {
      const spec = {};
      for (const w of widgets) {
        const { value, omit } = w.read();
        if (!omit) spec[w.name] = value;
      }
      return spec;
    };
    form.addEventListener("input", () => { preview.textContent = JSON.stringify({ kind, spec: collect() }); });
    form.addEventListener("change", () => { preview.textContent = JSON.stringify({ kind, spec: collect() }); });
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      widgets.forEach((w) => w.setError(""));
      put(general);
      submit.disabled = true;
      try {
        const job = await api("/v1/jobs", { method: "POST", json: { kind, spec: collect() } });
        navigate(jobHref(job));
      } catch (error) {
        submit.disabled = false;
        if (error instanceof ApiError && error.status === 401) return;
        const unplaced = [];
        if (Array.isArray(error.detail)) {
          const messages = new Map();
          for (const item of error.detail) {
            const name = fieldOf(item.loc);
            if (name && byName.has(name)) {
              if (!messages.has(name)) messages.set(name, new Set());
              messages.get(name).add(readable(item));
            } else unplaced.push(`${(item.loc || []).filter((p) => p !== "body").join(".")}: ${readable(item)}`);
          }
          for (const [name, set] of messages) byName.get(name).setError([...set].join("; "));
          const first = messages.keys().next().value;
          if (first) byName.get(first).shell.scrollIntoView({ block: "center" });
        } else unplaced.push(errorText(error));
        if (unplaced.length) put(general, h("div", { class: "error-box" }, unplaced.join("\n")));
        else put(general, h("span", { class: "ferr" }, `${error.status}: see the fields marked in red`));
      }
    });
    for (const [name, value] of Object.entries(FORM_START)) if (byName.has(name)) byName.get(name).fill(value);
    // ?from=ID: a finished source job, to measure its transferability. The form is shown only
    // once filled, so what the user (or a test) first sees is what will be submitted.
    const from = params.get("from");
    if (from) {
      const source = await api(`/v1/jobs/${from}`, { signal: controller.signal });
      const fill = (name, value) => { if (byName.has(name) && value !== undefined) byName.get(name).fill(value); };
      fill("source_task", source.spec.source_task);
      fill("target_task", source.spec.source_task);
      fill("width_multiplier", source.spec.width_multiplier);
      if (kind === "source") fill("train_from_previous_training", { job: from });
      else fill("source_weights", { job: from });
    }
    put(body, form);
    preview.textContent = JSON.stringify({ kind, spec: collect() });
  })().catch((error) => {
    if (error.name === "AbortError" || (error instanceof ApiError && error.status === 401)) return;
    put(body, h("div", { class: "error-box" }, errorText(error)));
  });
  return () => controller.abort();
}
