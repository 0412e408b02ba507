// Shared UI helpers: DOM building, number formatting, form inputs, error boxes, debounced
// recomputation and parameter forms built from the catalogue's JSON schemas.

import { ApiError, catalog, isAbort, num } from "./api.js";

// ---------------------------------------------------------------------------------------
// DOM, numbers and form inputs
// ---------------------------------------------------------------------------------------

export const $ = (id) => document.getElementById(id);

export const el = (tag, props = {}, ...children) => {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (key === "dataset") Object.assign(node.dataset, value);
    else if (key === "style") node.setAttribute("style", value);
    else if (key in node) node[key] = value;
    else node.setAttribute(key, value);
  }
  node.append(...children);
  return node;
};

export function fmt(v, digits = 5) {
  if (v === null || v === undefined) return "–";
  const n = num(v);
  if (Number.isNaN(n)) return "NaN";
  if (!Number.isFinite(n)) return n > 0 ? "∞" : "−∞";
  if (n === 0) return "0";
  const a = Math.abs(n);
  if (a >= 1e6 || a < 1e-4) return n.toExponential(digits - 1).replace(/\.?0+e/, "e");
  return String(Number(n.toPrecision(digits)));
}

export const fmtPoint = (p, digits = 4) => `(${p.map((v) => fmt(v, digits)).join(", ")})`;

export const linspace = (lo, hi, n) => Array.from({ length: n }, (_, i) => (n === 1 ? lo : lo + ((hi - lo) * i) / (n - 1)));

const SUBSCRIPTS = "₀₁₂₃₄₅₆₇₈₉";
export const sub = (k) => String(k).replace(/\d/g, (d) => SUBSCRIPTS[Number(d)]);

export function readNumber(id, what) {
  const text = $(id).value.trim();
  const value = Number(text);
  if (text === "" || !Number.isFinite(value)) throw new InputError(`${what} must be a number.`);
  return value;
}

export function readInt(id, what, lo, hi) {
  const value = readNumber(id, what);
  if (!Number.isInteger(value) || value < lo || value > hi) {
    throw new InputError(`${what} must be a whole number from ${lo} to ${hi}.`);
  }
  return value;
}

// ---------------------------------------------------------------------------------------
// Errors in the page
// ---------------------------------------------------------------------------------------

/** A value in the page's own form that cannot be sent. */
export class InputError extends Error {
  constructor(message) {
    super(message);
    this.name = "InputError";
  }
}

export function showError(box, err) {
  box.replaceChildren();
  if (err instanceof ApiError) {
    const where = err.status ? ` (HTTP ${err.status})` : "";
    box.append(el("span", { className: "type" }, err.type), `${where}: ${err.message}`);
    const d = err.detail;
    const extra = [];
    if (Array.isArray(d.errors)) {
      for (const e of d.errors.slice(0, 6)) extra.push(`• ${(e.loc || []).join(".")}: ${e.msg}`);
    }
    for (const key of ["line", "column", "where", "limit", "position", "known"]) {
      if (d[key] === undefined || d[key] === null) continue;
      const value = Array.isArray(d[key]) ? d[key].slice(0, 30).join(", ") : JSON.stringify(d[key]);
      extra.push(`${key}: ${value}`);
    }
    if (err.status === 401) {
      extra.push("Enter an API key under Settings, in the header.");
      document.querySelector(".settings").open = true;
    }
    if (extra.length) box.append("\n" + extra.join("\n"));
  } else if (err instanceof InputError) {
    box.textContent = err.message;
  } else {
    box.textContent = `Something went wrong in the page: ${err && err.message ? err.message : String(err)}`;
  }
  box.hidden = false;
}

export const hideError = (box) => {
  box.hidden = true;
  box.replaceChildren();
};

// ---------------------------------------------------------------------------------------
// Recomputing: only the latest call shows
// ---------------------------------------------------------------------------------------

/**
 * Wrap an async computation so that only the latest call shows its result or error:
 * fn(stale) gets a function telling whether a newer call has started since.
 */
export function latest(fn, errorBox) {
  let seq = 0;
  let timer = null;
  const run = async () => {
    clearTimeout(timer);
    const mine = ++seq;
    const stale = () => mine !== seq;
    try {
      await fn(stale);
      if (!stale()) hideError(errorBox);
    } catch (e) {
      if (!stale() && !isAbort(e)) showError(errorBox, e);
    }
  };
  run.soon = (ms = 150) => {
    clearTimeout(timer);
    timer = setTimeout(run, ms);
  };
  return run;
}

// ---------------------------------------------------------------------------------------
// Parameter forms from the catalogue's JSON schemas, selects and live forms
// ---------------------------------------------------------------------------------------

/** Fill `fieldset` with one input per property of `schema`; returns a reader of the values. */
export function paramsForm(fieldset, schema, skip = []) {
  const legend = fieldset.querySelector("legend");
  fieldset.replaceChildren(legend);
  const readers = [];
  const properties = (schema && schema.properties) || {};
  for (const [name, prop] of Object.entries(properties)) {
    if (skip.includes(name)) continue;
    const label = el("label", { title: prop.description || "" });
    const caption = el("span", {}, name);
    const dflt = prop.default;
    let input;
    let read;
    if (Array.isArray(prop.enum)) {
      input = el("select", {}, ...prop.enum.map((v) => el("option", { value: String(v) }, String(v))));
      if (dflt !== undefined) input.selectedIndex = Math.max(0, prop.enum.indexOf(dflt));
      read = () => prop.enum[input.selectedIndex];
      label.append(caption, input);
    } else if (prop.type === "boolean") {
      input = el("input", { type: "checkbox", checked: Boolean(dflt) });
      read = () => input.checked;
      label.className = "check";
      label.append(input, caption);
    } else if (prop.type === "number" || prop.type === "integer") {
      const integer = prop.type === "integer";
      input = el("input", { type: "number", step: integer ? "1" : "any" });
      if (typeof prop.minimum === "number") input.min = String(prop.minimum);
      if (typeof prop.maximum === "number") input.max = String(prop.maximum);
      input.value = dflt === undefined || dflt === null ? "" : String(dflt);
      read = () => {
        const text = input.value.trim();
        if (text === "") return undefined;
        const value = Number(text);
        if (!Number.isFinite(value) || (integer && !Number.isInteger(value))) {
          throw new InputError(`${name} must be ${integer ? "a whole number" : "a number"}.`);
        }
        return value;
      };
      label.append(caption, input);
    } else {
      input = el("input", { type: "text", placeholder: "JSON (empty: the default)", spellcheck: false });
      input.value = dflt === undefined || dflt === null ? "" : JSON.stringify(dflt);
      read = () => {
        const text = input.value.trim();
        if (text === "") return undefined;
        try {
          return JSON.parse(text);
        } catch {
          throw new InputError(`${name} is not valid JSON.`);
        }
      };
      label.append(caption, input);
    }
    input.dataset.param = name;
    input.dataset.testid = `param-${name}`;
    if (prop.description) label.append(el("small", { className: "hint" }, prop.description));
    fieldset.append(label);
    readers.push([name, read]);
  }
  fieldset.classList.toggle("empty", readers.length === 0);
  return () => {
    const out = {};
    for (const [name, read] of readers) {
      const value = read();
      if (value !== undefined) out[name] = value;
    }
    return out;
  };
}

export function fillSelect(select, names, chosen) {
  select.replaceChildren(...names.map(([value, text]) => el("option", { value }, text)));
  if (names.some(([value]) => value === chosen)) select.value = chosen;
}

/** Load catalog `kind` into `tab.items`, list it in the select `selectId` (entry `label`s,
 *  `chosen` first picked), and have the tab choose again whenever the select changes. */
export async function catalogSelect(tab, kind, selectId, label, chosen) {
  const entries = (await catalog(kind))[kind];
  tab.items = new Map(entries.map((entry) => [entry.name, entry]));
  const select = $(selectId);
  fillSelect(select, entries.map((entry) => [entry.name, label(entry)]), chosen);
  select.addEventListener("change", () => tab.choose(select.value));
  return select;
}

/** Recompute (debounced) whenever anything in `form` changes; Enter does it at once. */
export function liveForm(form, run, ignore = []) {
  const changed = (event) => {
    if (ignore.includes(event.target)) return;
    run.soon(event.target.type === "range" ? 40 : 200);
  };
  form.addEventListener("input", changed);
  form.addEventListener("change", changed);
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    run();
  });
}
