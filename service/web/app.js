// Gradient Service playground: plain JavaScript, no build step, no request outside this origin.
//
// Four tabs, each a small object with start() (run once, when the tab is first shown):
// activations, losses, optimisers (live trajectories from the SSE stream of POST /v1/optimize)
// and expressions. Every API error is shown in the page; nothing is thrown uncaught.
"use strict";

(() => {
  // ---------------------------------------------------------------------------------------
  // Helpers
  // ---------------------------------------------------------------------------------------

  const $ = (id) => document.getElementById(id);

  const el = (tag, props = {}, ...children) => {
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

  /** A number from the wire: non-finite values travel as "NaN", "Infinity", "-Infinity". */
  const num = (v) => (typeof v === "number" ? v : typeof v === "string" ? Number(v) : NaN);
  /** For plotting: finite numbers, and null (a gap) for everything else. */
  const finite = (v) => {
    const n = num(v);
    return Number.isFinite(n) ? n : null;
  };

  function fmt(v, digits = 5) {
    if (v === null || v === undefined) return "–";
    const n = num(v);
    if (Number.isNaN(n)) return "NaN";
    if (!Number.isFinite(n)) return n > 0 ? "∞" : "−∞";
    if (n === 0) return "0";
    const a = Math.abs(n);
    if (a >= 1e6 || a < 1e-4) return n.toExponential(digits - 1).replace(/\.?0+e/, "e");
    return String(Number(n.toPrecision(digits)));
  }

  const fmtPoint = (p, digits = 4) => `(${p.map((v) => fmt(v, digits)).join(", ")})`;

  const linspace = (lo, hi, n) => Array.from({ length: n }, (_, i) => (n === 1 ? lo : lo + ((hi - lo) * i) / (n - 1)));

  const SUBSCRIPTS = "₀₁₂₃₄₅₆₇₈₉";
  const sub = (k) => String(k).replace(/\d/g, (d) => SUBSCRIPTS[Number(d)]);

  function readNumber(id, what) {
    const text = $(id).value.trim();
    const value = Number(text);
    if (text === "" || !Number.isFinite(value)) throw new InputError(`${what} must be a number.`);
    return value;
  }

  function readInt(id, what, lo, hi) {
    const value = readNumber(id, what);
    if (!Number.isInteger(value) || value < lo || value > hi) {
      throw new InputError(`${what} must be a whole number from ${lo} to ${hi}.`);
    }
    return value;
  }

  // ---------------------------------------------------------------------------------------
  // Errors and the API
  // ---------------------------------------------------------------------------------------

  /** An error answered by the service: the body is {"error": {"type", "message", ...}}. */
  class ApiError extends Error {
    constructor(status, body) {
      const error =
        body && typeof body === "object" && body.error && typeof body.error === "object"
          ? body.error
          : { type: "http_error", message: String(body ?? `HTTP ${status}`) };
      super(error.message || `HTTP ${status}`);
      this.name = "ApiError";
      this.status = status;
      this.type = error.type || "error";
      this.detail = error;
    }
  }

  /** A value in the page's own form that cannot be sent. */
  class InputError extends Error {
    constructor(message) {
      super(message);
      this.name = "InputError";
    }
  }

  const isAbort = (e) => e && e.name === "AbortError";

  function showError(box, err) {
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

  const hideError = (box) => {
    box.hidden = true;
    box.replaceChildren();
  };

  let apiKey = "";
  try {
    apiKey = sessionStorage.getItem("gradient-api-key") || "";
  } catch {
    apiKey = "";
  }

  function headers(extra) {
    const result = { ...extra };
    if (apiKey) result.Authorization = `Bearer ${apiKey}`;
    return result;
  }

  async function send(path, init) {
    try {
      return await fetch(path, init);
    } catch (e) {
      if (isAbort(e)) throw e;
      throw new ApiError(0, { error: { type: "network_error", message: `The service did not answer (${e.message}).` } });
    }
  }

  async function readJson(response) {
    const text = await response.text();
    let data = null;
    if (text) {
      try {
        data = JSON.parse(text);
      } catch {
        data = null;
      }
    }
    if (!response.ok) {
      throw new ApiError(response.status, data ?? { error: { type: "http_error", message: text || response.statusText } });
    }
    if (data === null) {
      throw new ApiError(response.status, { error: { type: "invalid_response", message: "The answer is not JSON." } });
    }
    return data;
  }

  /** GET path, or POST body to path as JSON; resolves to the parsed answer or throws ApiError. */
  async function api(path, body, signal) {
    const init = { method: body === undefined ? "GET" : "POST", headers: headers({ Accept: "application/json" }), signal };
    if (body !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    return readJson(await send(path, init));
  }

  const catalogs = new Map();
  function catalog(name) {
    if (!catalogs.has(name)) {
      const request = api(`/v1/${name}`).catch((e) => {
        catalogs.delete(name);
        throw e;
      });
      catalogs.set(name, request);
    }
    return catalogs.get(name);
  }

  /**
   * POST /v1/optimize with Accept: text/event-stream, read with fetch and a stream reader
   * (EventSource cannot POST). Calls onProgress(data) for every `progress` event and
   * onResult(body) for the `result` event; an `error` event throws its ApiError.
   */
  async function streamOptimize(body, signal, onProgress, onResult) {
    const response = await send("/v1/optimize", {
      method: "POST",
      headers: headers({ "Content-Type": "application/json", Accept: "text/event-stream" }),
      body: JSON.stringify(body),
      signal,
    });
    const type = response.headers.get("content-type") || "";
    if (!response.ok || !type.includes("text/event-stream") || !response.body) {
      onResult(await readJson(response)); // an error, or a server that did not stream
      return;
    }
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    let kind = "";
    let data = [];
    let finished = false;

    const dispatch = () => {
      const eventKind = kind || "message";
      const payload = data.join("\n");
      kind = "";
      data = [];
      if (!payload) return;
      let parsed;
      try {
        parsed = JSON.parse(payload);
      } catch {
        throw new ApiError(0, { error: { type: "invalid_event", message: `A ${eventKind} event is not JSON.` } });
      }
      if (eventKind === "progress") onProgress(parsed);
      else if (eventKind === "result") {
        finished = true;
        onResult(parsed);
      } else if (eventKind === "error") {
        finished = true;
        throw new ApiError(0, parsed); // the stream itself answered 200: the error came later
      }
    };

    const line = (text) => {
      if (text === "") return dispatch();
      if (text.startsWith(":")) return undefined; // a comment (keep-alive)
      const colon = text.indexOf(":");
      const field = colon < 0 ? text : text.slice(0, colon);
      let value = colon < 0 ? "" : text.slice(colon + 1);
      if (value.startsWith(" ")) value = value.slice(1);
      if (field === "event") kind = value;
      else if (field === "data") data.push(value);
      return undefined;
    };

    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value;
        const lines = buffer.split("\n");
        buffer = lines.pop();
        for (const text of lines) line(text.endsWith("\r") ? text.slice(0, -1) : text);
      }
      if (buffer) line(buffer);
      dispatch();
    } catch (e) {
      reader.cancel().catch(() => undefined);
      throw e;
    }
    if (!finished) {
      throw new ApiError(0, { error: { type: "stream_ended", message: "The event stream ended before its result." } });
    }
  }

  /**
   * Wrap an async computation so that only the latest call shows its result or error:
   * fn(stale) gets a function telling whether a newer call has started since.
   */
  function latest(fn, errorBox) {
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
  // Plotting
  // ---------------------------------------------------------------------------------------

  const PLOT_CONFIG = { responsive: true, displaylogo: false, modeBarButtonsToRemove: ["select2d", "lasso2d"] };
  const FONT = { family: 'system-ui, -apple-system, "Segoe UI", Roboto, Arial, sans-serif', size: 12, color: "#1d2433" };
  const AXIS = { gridcolor: "#edf0f5", zerolinecolor: "#c3c9d6", linecolor: "#c3c9d6", automargin: true };
  const INK = { f: "#2563eb", df: "#dc2626", d2f: "#059669" };
  // One colour per optimiser (catalogue order); picked to stand out on the light landscape.
  const PALETTE = ["#f59e0b", "#e11d48", "#10b981", "#8b5cf6", "#111827", "#db2777", "#0d9488", "#a16207", "#65a30d", "#64748b"];
  const LANDSCAPE_SCALE = [
    [0, "#fbfdff"],
    [0.25, "#dbe7f6"],
    [0.5, "#a7bfdf"],
    [0.75, "#6683b3"],
    [1, "#2c3e6b"],
  ];

  const DIVERGING = [
    [0, "#b2182b"],
    [0.25, "#ef8a62"],
    [0.5, "#ffffff"],
    [0.75, "#67a9cf"],
    [1, "#2166ac"],
  ];

  const axis = (title, extra = {}) => ({ ...AXIS, title: { text: title }, ...extra });

  function layout(extra) {
    return {
      font: FONT,
      paper_bgcolor: "rgba(0,0,0,0)",
      plot_bgcolor: "#ffffff",
      margin: { l: 60, r: 24, t: 56, b: 50 },
      legend: { orientation: "h", x: 0, y: 1.0, yanchor: "bottom", bgcolor: "rgba(255,255,255,0.7)" },
      hoverlabel: { font: { family: FONT.family } },
      ...extra,
    };
  }

  const plot = (node, data, plotLayout) => Plotly.react(node, data, plotLayout, PLOT_CONFIG);

  const hasWebGL = (() => {
    try {
      const canvas = document.createElement("canvas");
      return Boolean(canvas.getContext("webgl2") || canvas.getContext("webgl"));
    } catch {
      return false;
    }
  })();

  // ---------------------------------------------------------------------------------------
  // Parameter forms from the catalogue's JSON schemas
  // ---------------------------------------------------------------------------------------

  /** Fill `fieldset` with one input per property of `schema`; returns a reader of the values. */
  function paramsForm(fieldset, schema, skip = []) {
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

  function fillSelect(select, names, chosen) {
    select.replaceChildren(...names.map(([value, text]) => el("option", { value }, text)));
    if (names.some(([value]) => value === chosen)) select.value = chosen;
  }

  /** Load catalog `kind` into `tab.items`, list it in the select `selectId` (entry `label`s,
   *  `chosen` first picked), and have the tab choose again whenever the select changes. */
  async function catalogSelect(tab, kind, selectId, label, chosen) {
    const entries = (await catalog(kind))[kind];
    tab.items = new Map(entries.map((entry) => [entry.name, entry]));
    const select = $(selectId);
    fillSelect(select, entries.map((entry) => [entry.name, label(entry)]), chosen);
    select.addEventListener("change", () => tab.choose(select.value));
    return select;
  }

  /** Recompute (debounced) whenever anything in `form` changes; Enter does it at once. */
  function liveForm(form, run, ignore = []) {
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

  // ---------------------------------------------------------------------------------------
  // Activations: f, f' and f'' over a range
  // ---------------------------------------------------------------------------------------

  const Activations = {
    items: new Map(),
    readParams: () => ({}),
    elementwise: true,

    async start() {
      const label = (a) => (a.elementwise ? a.name : `${a.name} (not elementwise)`);
      const select = await catalogSelect(this, "activations", "activation-name", label, "gelu");
      liveForm($("activation-form"), this.run, [select]);
      this.choose(select.value);
    },

    choose(name) {
      const spec = this.items.get(name);
      if (!spec) return;
      // A non-elementwise function is shown on one short vector, whose Jacobian stays readable.
      const [lo, hi, n] = spec.elementwise ? ["-5", "5", "201"] : ["-2", "2", "9"];
      if (spec.elementwise !== this.elementwise) {
        $("activation-lo").value = lo;
        $("activation-hi").value = hi;
        $("activation-n").value = n;
      }
      this.elementwise = spec.elementwise;
      $("activation-formula").textContent = spec.formula;
      this.readParams = paramsForm($("activation-params"), spec.params);
      $("activation-note").textContent = spec.elementwise
        ? "Autograd's first derivative is the VJP with ones; the second comes from differentiating it again."
        : `${name} is not elementwise: every output depends on every input. The points form one vector; ` +
          "the red curve is the VJP with ones, Σⱼ ∂fⱼ/∂xᵢ, and the heatmap below is the whole Jacobian.";
      this.run();
    },

    run: latest(async (stale) => {
      const spec = Activations.items.get($("activation-name").value);
      if (!spec) return;
      const lo = readNumber("activation-lo", "'from'");
      const hi = readNumber("activation-hi", "'to'");
      const n = readInt("activation-n", "points", 2, spec.elementwise ? 2000 : 400);
      if (!(hi > lo)) throw new InputError("'to' must be greater than 'from'.");
      const x = linspace(lo, hi, n);
      const body = {
        input: x,
        params: Activations.readParams(),
        second_order: spec.elementwise,
        jacobian: !spec.elementwise,
      };
      const res = await api(`/v1/activations/${encodeURIComponent(spec.name)}`, body);
      if (stale()) return;
      const name = spec.name;
      const mode = n <= 40 ? "lines+markers" : "lines";
      const traces = [
        {
          x,
          y: res.output.map(finite),
          mode,
          name: spec.elementwise ? `${name}(x)` : `${name}(x)ᵢ`,
          line: { color: INK.f, width: 2.6 },
        },
        {
          x,
          y: res.grad.map(finite),
          mode,
          name: spec.elementwise ? "f′(x)" : "Σⱼ ∂fⱼ/∂xᵢ",
          line: { color: INK.df, width: 2 },
        },
      ];
      if (res.grad2) {
        traces.push({ x, y: res.grad2.map(finite), mode, name: "f″(x)", line: { color: INK.d2f, width: 2, dash: "dot" } });
      }
      await plot(
        $("activation-plot"),
        traces,
        layout({
          title: { text: spec.elementwise ? `${name} and its derivatives` : `${name} of one ${n}-vector` },
          xaxis: axis(spec.elementwise ? "x" : "xᵢ"),
          yaxis: axis(""),
          hovermode: "x unified",
        }),
      );
      const jac = $("activation-jacobian");
      jac.hidden = !res.jacobian;
      if (res.jacobian) {
        await plot(
          jac,
          [
            {
              type: "heatmap",
              x,
              y: x,
              z: res.jacobian.map((row) => row.map(finite)),
              text: res.jacobian.map((row) => row.map((v) => fmt(v, 2))),
              texttemplate: n <= 12 ? "%{text}" : "",
              colorscale: DIVERGING,
              zmid: 0,
              hovertemplate: "∂f(x=%{y:.3g}) / ∂x=%{x:.3g}: %{z:.4g}<extra></extra>",
              colorbar: { thickness: 12 },
            },
          ],
          layout({
            title: { text: `Jacobian ∂fᵢ/∂xⱼ of ${name}` },
            xaxis: axis("xⱼ", { constrain: "domain", showgrid: false, zeroline: false }),
            yaxis: axis("fᵢ at xᵢ", { autorange: "reversed", scaleanchor: "x", constrain: "domain", showgrid: false, zeroline: false }),
          }),
        );
      }
    }, $("activation-error")),
  };

  // ---------------------------------------------------------------------------------------
  // Losses: the loss and its gradient as a prediction sweeps against a fixed target
  // ---------------------------------------------------------------------------------------

  const DEFAULT_TARGET = { min: -3, max: 3, step: 0.05, value: 0 };
  const LOSS_VIEWS = {
    binary_cross_entropy: {
      sweep: [0.01, 0.99],
      target: { min: 0, max: 1, step: 0.01, value: 1 },
      x: "prediction p in [0, 1]",
      best: (t) => t,
    },
    binary_cross_entropy_with_logits: {
      sweep: [-6, 6],
      target: { min: 0, max: 1, step: 0.01, value: 1 },
      x: "prediction: a logit",
      best: (t) => Math.log(t / (1 - t)),
    },
    kl_div: {
      sweep: [-6, 0],
      target: { min: 0, max: 1, step: 0.01, value: 0.5 },
      x: "prediction: a log-probability",
      best: (t, p) => (p.log_target ? null : Math.log(t)),
    },
    poisson_nll: {
      sweep: [-3, 3],
      target: { min: 0, max: 10, step: 0.1, value: 2 },
      x: "prediction: a log-rate (log_input) or a rate",
      best: (t, p) => (p.log_input === false ? t : Math.log(t)),
    },
    soft_margin: { sweep: [-4, 4], target: { min: -1, max: 1, step: 2, value: 1 }, x: "prediction: a score" },
    entropy: { sweep: [0.01, 0.99], x: "p, in the distribution [p, 1 − p]" },
    cross_entropy: { sweep: [-6, 6], others: [1, 0], x: "logit z₀ (the other logits fixed)" },
    nll: { sweep: [-6, 0], others: [-1, -2], x: "log-probability of class 0 (the others fixed)" },
  };

  const Losses = {
    items: new Map(),
    readParams: () => ({}),
    mode: "float",

    async start() {
      const select = await catalogSelect(this, "losses", "loss-name", (l) => l.name, "binary_cross_entropy");
      $("loss-others").addEventListener("input", () => this.classes());
      $("loss-target").addEventListener("input", () => this.showTarget());
      liveForm($("loss-form"), this.run, [select]);
      this.choose(select.value);
    },

    view() {
      return LOSS_VIEWS[$("loss-name").value] || { sweep: [-4, 4], x: "prediction" };
    },

    choose(name) {
      const spec = this.items.get(name);
      if (!spec) return;
      const view = this.view();
      this.mode = spec.target === "float" ? "float" : spec.target === "none" ? "none" : "index";
      $("loss-formula").textContent = spec.formula;
      this.readParams = paramsForm($("loss-params"), spec.params, ["reduction"]);
      $("loss-lo").value = String(view.sweep[0]);
      $("loss-hi").value = String(view.sweep[1]);
      $("loss-sweep-legend").textContent = `Sweep: ${view.x}`;
      $("loss-target-block").hidden = this.mode === "none";
      $("loss-others-block").hidden = this.mode !== "index";
      const slider = $("loss-target");
      if (this.mode === "float") {
        const t = view.target || DEFAULT_TARGET;
        Object.assign(slider, { min: String(t.min), max: String(t.max), step: String(t.step) });
        slider.value = String(t.value);
        $("loss-target-label").textContent = "target";
      } else if (this.mode === "index") {
        $("loss-others").value = JSON.stringify(view.others || [1, 0]).replace(/,/g, ", ");
        $("loss-target-label").textContent = "target class";
        slider.value = "0";
        this.classes();
      }
      this.showTarget();
      $("loss-note").textContent =
        this.mode === "index"
          ? "Each point is one sample: logits [z₀, others…] against the class index. Solid red is ∂loss/∂z₀, " +
            "dashed lines the gradient w.r.t. the other logits (reduction none)."
          : this.mode === "none"
            ? "The entropy of [p, 1 − p]; red is its derivative along p, ∂H/∂p₀ − ∂H/∂p₁ (reduction none)."
            : "Each point is the loss of one prediction against the target (reduction none); red is ∂loss/∂prediction.";
      this.run();
    },

    others() {
      let others;
      try {
        others = JSON.parse($("loss-others").value);
      } catch {
        throw new InputError("The other logits must be a JSON list of numbers, such as [1, 0].");
      }
      if (!Array.isArray(others) || others.length < 1 || others.length > 50 || !others.every(Number.isFinite)) {
        throw new InputError("The other logits must be a JSON list of 1 to 50 numbers, such as [1, 0].");
      }
      return others;
    },

    classes() {
      let count = 3;
      try {
        count = this.others().length + 1;
      } catch {
        return;
      }
      const slider = $("loss-target");
      Object.assign(slider, { min: "0", max: String(count - 1), step: "1" });
      if (Number(slider.value) > count - 1) slider.value = String(count - 1);
      this.showTarget();
    },

    showTarget() {
      $("loss-target-value").textContent = $("loss-target").value;
    },

    run: latest(async (stale) => {
      const spec = Losses.items.get($("loss-name").value);
      if (!spec) return;
      const view = Losses.view();
      const lo = readNumber("loss-lo", "'from'");
      const hi = readNumber("loss-hi", "'to'");
      const n = readInt("loss-n", "points", 2, 5000);
      if (!(hi > lo)) throw new InputError("'to' must be greater than 'from'.");
      const xs = linspace(lo, hi, n);
      const params = { ...Losses.readParams(), reduction: "none" };
      const target = Number($("loss-target").value);
      let body;
      let others = [];
      if (Losses.mode === "float") body = { input: xs, target, params };
      else if (Losses.mode === "index") {
        others = Losses.others();
        body = { input: xs.map((z) => [z, ...others]), target: xs.map(() => target), params };
      } else body = { input: xs.map((p) => [p, 1 - p]), params };
      const res = await api(`/v1/losses/${encodeURIComponent(spec.name)}`, body);
      if (stale()) return;
      const gi = res.grad.input;
      const traces = [{ x: xs, y: res.loss.map(finite), name: "loss", line: { color: INK.f, width: 2.6 } }];
      if (Losses.mode === "float") {
        traces.push({ x: xs, y: gi.map(finite), name: "∂loss/∂prediction", yaxis: "y2", line: { color: INK.df, width: 2 } });
      } else if (Losses.mode === "index") {
        traces.push({ x: xs, y: gi.map((r) => finite(r[0])), name: "∂loss/∂z₀", yaxis: "y2", line: { color: INK.df, width: 2 } });
        others.forEach((_, k) => {
          traces.push({
            x: xs,
            y: gi.map((r) => finite(r[k + 1])),
            name: `∂loss/∂z${sub(k + 1)}`,
            yaxis: "y2",
            line: { color: PALETTE[(k + 2) % PALETTE.length], width: 1.5, dash: "dash" },
          });
        });
      } else {
        traces.push({
          x: xs,
          y: gi.map((r) => finite(num(r[0]) - num(r[1]))),
          name: "dH/dp",
          yaxis: "y2",
          line: { color: INK.df, width: 2 },
        });
      }
      const shapes = [];
      const annotations = [];
      if (Losses.mode === "float") {
        const best = view.best ? view.best(target, params) : LOSS_VIEWS[spec.name] ? null : target;
        if (best !== null && Number.isFinite(best) && best >= lo && best <= hi) {
          shapes.push({ type: "line", x0: best, x1: best, yref: "paper", y0: 0, y1: 1, line: { color: "#64748b", dash: "dot" } });
          annotations.push({ x: best, yref: "paper", y: 1, text: "matches the target", showarrow: false, yanchor: "bottom", font: { size: 11, color: "#64748b" } });
        }
      }
      const title =
        Losses.mode === "index"
          ? `${spec.name}, target class ${target}`
          : Losses.mode === "none"
            ? `${spec.name} of [p, 1 − p]`
            : `${spec.name}, target ${target}`;
      await plot(
        $("loss-plot"),
        traces,
        layout({
          title: { text: title },
          xaxis: axis(view.x),
          yaxis: axis("loss", { title: { text: "loss", font: { color: INK.f } } }),
          yaxis2: axis("", {
            title: { text: "gradient", font: { color: INK.df } },
            overlaying: "y",
            side: "right",
            showgrid: false,
          }),
          hovermode: "x unified",
          shapes,
          annotations,
          margin: { l: 60, r: 64, t: 64, b: 50 },
        }),
      );
    }, $("loss-error")),
  };

  // ---------------------------------------------------------------------------------------
  // Optimisers: landscape, surface, starting points and live trajectories
  // ---------------------------------------------------------------------------------------

  const CUSTOM = "__custom__";
  const ADAM_FAMILY = new Set(["adam", "adamw", "adamax", "nadam", "radam"]);
  const SEED_STARTS = [
    [1, 0],
    [-4, 0],
    [4, 0],
  ];

  const Optimizers = {
    objectives: new Map(),
    optimizers: [],
    starts: [],
    trajectories: [],
    landscape: null,
    controller: null,
    objectiveKey: "",
    drawing: Promise.resolve(),
    drawQueued: false,
    surfaceDirty: true,
    surfaceAt: 0,
    surfaceTimer: null,
    clickBound: false,
    progressEvents: 0,
    livePoints: 0,

    async start() {
      const [{ objectives }, { optimizers }] = await Promise.all([catalog("objectives"), catalog("optimizers")]);
      const flat = objectives.filter((o) => o.dimension === null || o.dimension === 2);
      this.objectives = new Map(flat.map((o) => [o.name, o]));
      this.optimizers = optimizers;
      const select = $("objective-name");
      fillSelect(select, [...flat.map((o) => [o.name, o.name]), [CUSTOM, "your own f(x)…"]], "himmelblau");
      select.addEventListener("change", () => this.chooseObjective(select.value));

      const body = $("optimizer-table").tBodies[0];
      body.replaceChildren(
        ...optimizers.map((o, i) => {
          const torchLr = o.params && o.params.properties && o.params.properties.lr ? o.params.properties.lr.default : 0.001;
          // Ten times torch's default for the Adam family, so that a few thousand steps reach a minimum.
          const lr = ADAM_FAMILY.has(o.name) ? Number((torchLr * 10).toPrecision(6)) : torchLr;
          const color = PALETTE[i % PALETTE.length];
          return el(
            "tr",
            { dataset: { name: o.name, color } },
            el("td", {}, el("input", { type: "checkbox", checked: o.name === "adam", dataset: { testid: `use-${o.name}` } })),
            el("td", {}, el("span", { className: "swatch", style: `background:${color}` }), o.name),
            el(
              "td",
              {},
              el("input", {
                type: "number",
                step: "any",
                min: "0",
                value: String(lr),
                title: `torch's default: ${torchLr}`,
                dataset: { testid: `lr-${o.name}` },
              }),
            ),
          );
        }),
      );

      const reload = latest((stale) => this.loadLandscape(stale), $("optimizer-error"));
      this.reload = reload;
      for (const id of ["range-x-lo", "range-x-hi", "range-y-lo", "range-y-hi", "objective-expression"]) {
        $(id).addEventListener("input", () => reload.soon(400));
      }
      $("landscape-log").addEventListener("change", () => this.redraw());
      $("random-starts").addEventListener("click", () => this.randomStarts());
      $("clear-starts").addEventListener("click", () => {
        this.starts = [];
        this.renderStarts();
        this.redraw(false);
      });
      $("stop-optimizer").addEventListener("click", () => this.controller && this.controller.abort());
      $("optimizer-form").addEventListener("submit", (event) => {
        event.preventDefault();
        this.run().catch((e) => showError($("optimizer-error"), e));
      });
      if (!hasWebGL) {
        $("surface-plot").append(el("p", { className: "note" }, "The 3-D surface needs WebGL, which this browser does not offer."));
      }
      this.chooseObjective(select.value);
      if (select.value === "himmelblau") {
        this.starts = SEED_STARTS.map((p) => [...p]); // the seed's case: Adam from these starts
        this.renderStarts();
      }
    },

    chooseObjective(name) {
      if (this.controller) this.controller.abort();
      const custom = name === CUSTOM;
      const spec = this.objectives.get(name);
      $("objective-expression-block").hidden = !custom;
      $("objective-formula").textContent = custom ? "" : spec.formula;
      const domain = custom ? [[-2, 2], [-1, 3]] : spec.domain;
      $("range-x-lo").value = String(domain[0][0]);
      $("range-x-hi").value = String(domain[0][1]);
      $("range-y-lo").value = String(domain[1][0]);
      $("range-y-hi").value = String(domain[1][1]);
      this.starts = [];
      this.trajectories = [];
      this.renderStarts();
      this.renderResults(null);
      this.reload();
    },

    objective() {
      if ($("objective-name").value !== CUSTOM) return $("objective-name").value;
      const expression = $("objective-expression").value.trim();
      if (!expression) throw new InputError("Type a formula in x, such as sum(x ** 2).");
      return { expression, variable: "x" };
    },

    window() {
      const x = [readNumber("range-x-lo", "x from"), readNumber("range-x-hi", "x to")];
      const y = [readNumber("range-y-lo", "y from"), readNumber("range-y-hi", "y to")];
      if (!(x[1] > x[0]) || !(y[1] > y[0])) throw new InputError("Each window's 'to' must be greater than its 'from'.");
      return { x, y };
    },

    minima() {
      const spec = this.objectives.get($("objective-name").value);
      return spec ? spec.minima.filter((m) => Array.isArray(m.x) && m.x.length === 2) : [];
    },

    async loadLandscape(stale) {
      const objective = this.objective();
      const { x, y } = this.window();
      const res = await api("/v1/landscape", {
        objective,
        x_range: x,
        y_range: y,
        resolution: 100,
        dtype: "float64",
      });
      if (stale()) return;
      const z = res.z.map((row) => row.map(finite));
      let zmin = Infinity;
      for (const row of z) for (const v of row) if (v !== null && v < zmin) zmin = v;
      this.landscape = {
        x: res.x.map(finite),
        y: res.y.map(finite),
        z,
        zmin: Number.isFinite(zmin) ? zmin : 0,
        text: z.map((row) => row.map((v) => fmt(v))),
        window: { x, y },
        transformed: null,
      };
      this.objectiveKey = JSON.stringify([objective, x, y]);
      await this.redraw();
    },

    /** Colour values: f itself, or log(1 + f - min f) on the log scale (which shows the basins). */
    transform() {
      const log = $("landscape-log").checked;
      const zmin = this.landscape ? this.landscape.zmin : 0;
      return (v) => {
        const n = finite(v);
        if (n === null) return null;
        return log ? Math.log1p(Math.max(n - zmin, 0)) : n;
      };
    },

    randomStarts() {
      let win;
      try {
        win = this.window();
      } catch (e) {
        showError($("optimizer-error"), e);
        return;
      }
      const pick = ([lo, hi]) => Number((lo + Math.random() * (hi - lo)).toFixed(2));
      for (let i = 0; i < 4; i++) this.starts.push([pick(win.x), pick(win.y)]);
      this.renderStarts();
      this.redraw(false);
    },

    addStart(point) {
      this.starts.push(point.map((v) => Number(v.toFixed(3))));
      this.renderStarts();
      this.redraw(false);
    },

    renderStarts() {
      $("start-count").textContent = String(this.starts.length);
      $("start-list").replaceChildren(
        ...this.starts.map((p, i) => {
          const remove = el("button", { type: "button", title: "remove this start", ariaLabel: "remove" }, "×");
          remove.addEventListener("click", () => {
            this.starts.splice(i, 1);
            this.renderStarts();
            this.redraw(false);
          });
          return el("li", { dataset: { testid: "start" } }, fmtPoint(p, 3), remove);
        }),
      );
    },

    /** Where a click on the contour plot lands, in data coordinates. */
    clickPoint(event) {
      const node = $("landscape-plot");
      const mouse = event.event;
      const cover = node.querySelector(".nsewdrag");
      const xr = node.layout && node.layout.xaxis && node.layout.xaxis.range;
      const yr = node.layout && node.layout.yaxis && node.layout.yaxis.range;
      if (mouse && cover && xr && yr) {
        const box = cover.getBoundingClientRect();
        const fx = (mouse.clientX - box.left) / box.width;
        const fy = (mouse.clientY - box.top) / box.height;
        if (fx >= 0 && fx <= 1 && fy >= 0 && fy <= 1) {
          return [xr[0] + fx * (xr[1] - xr[0]), yr[1] - fy * (yr[1] - yr[0])];
        }
      }
      const point = event.points && event.points[0]; // fallback: the grid point under the mouse
      return point && Number.isFinite(point.x) && Number.isFinite(point.y) ? [point.x, point.y] : null;
    },

    /**
     * Redraw soon: the contour always, the 3-D surface when `surface` (its WebGL redraw is slow
     * without a GPU, so during a run it follows at most once a second). Draws never overlap and
     * at most one is queued.
     */
    redraw(surface = true) {
      if (surface) this.surfaceDirty = true;
      if (this.drawQueued) return this.drawing;
      this.drawQueued = true;
      this.drawing = this.drawing
        .then(() => new Promise((resolve) => setTimeout(resolve, 16)))
        .then(() => {
          this.drawQueued = false;
          return this.draw();
        })
        .catch((e) => showError($("optimizer-error"), e));
      return this.drawing;
    },

    async draw() {
      const land = this.landscape;
      if (!land) return;
      const tf = this.transform();
      const log = $("landscape-log").checked;
      if (!land.transformed || land.transformed.log !== log) {
        const z = land.z.map((row) => row.map(tf));
        let lo = Infinity;
        let hi = -Infinity;
        for (const row of z) {
          for (const v of row) {
            if (v === null) continue;
            lo = Math.min(lo, v);
            hi = Math.max(hi, v);
          }
        }
        land.transformed = { log, z, lift: hi > lo ? (hi - lo) * 0.01 : 0 };
      }
      const zt = land.transformed.z;
      const lift = land.transformed.lift;
      const minima = this.minima();
      const drawn = this.trajectories.filter((t) => t.xs.length > 0);
      const named = new Set();
      for (const t of drawn) {
        t.legend = !named.has(t.name);
        named.add(t.name);
      }
      const name = $("objective-name").value === CUSTOM ? "f" : $("objective-name").value;

      const contour = [
        {
          type: "contour",
          x: land.x,
          y: land.y,
          z: zt,
          text: land.text,
          hovertemplate: "(%{x:.3f}, %{y:.3f})<br>f = %{text}<extra></extra>",
          colorscale: LANDSCAPE_SCALE,
          ncontours: 26,
          contours: { coloring: "heatmap", showlines: true },
          line: { width: 0.6, color: "rgba(30,41,59,0.25)" },
          colorbar: { title: { text: log ? "log(1+f−min)" : "f", side: "right" }, thickness: 12, len: 0.85 },
          showlegend: false,
        },
        {
          type: "scatter",
          mode: "markers",
          x: minima.map((m) => m.x[0]),
          y: minima.map((m) => m.x[1]),
          customdata: minima.map((m) => fmt(m.value)),
          name: "known minima",
          marker: { symbol: "star", size: 15, color: "#facc15", line: { color: "#111827", width: 1 } },
          hovertemplate: "known minimum (%{x:.4f}, %{y:.4f})<br>f = %{customdata}<extra></extra>",
        },
        {
          type: "scatter",
          mode: "markers",
          x: this.starts.map((p) => p[0]),
          y: this.starts.map((p) => p[1]),
          name: "starts",
          marker: { symbol: "circle-open", size: 11, color: "#111827", line: { width: 2 } },
          hovertemplate: "start (%{x:.3f}, %{y:.3f})<extra></extra>",
        },
        ...drawn.map((t) => ({
          type: "scatter",
          mode: "lines+markers",
          x: t.xs,
          y: t.ys,
          customdata: t.steps,
          name: `${t.name} (lr ${fmt(t.lr)})`,
          legendgroup: t.name,
          showlegend: t.legend,
          line: { color: t.color, width: 2.2 },
          marker: { color: t.color, size: t.xs.map((_, i) => (i === t.xs.length - 1 ? 9 : 4)) },
          hovertemplate: `${t.name}, start ${t.start + 1}, step %{customdata}<br>(%{x:.4f}, %{y:.4f})<extra></extra>`,
        })),
      ];
      const { x: xr, y: yr } = land.window;
      const node = $("landscape-plot");
      await plot(
        node,
        contour,
        layout({
          title: { text: `${name}: click to add a start` },
          xaxis: axis("x₀", { range: xr, showgrid: false, zeroline: false }),
          yaxis: axis("x₁", { range: yr, showgrid: false, zeroline: false }),
          hovermode: "closest",
          uirevision: this.objectiveKey,
          margin: { l: 56, r: 16, t: 72, b: 50 },
        }),
      );
      if (!this.clickBound) {
        this.clickBound = true;
        node.on("plotly_click", (event) => {
          const point = this.clickPoint(event);
          if (point) this.addStart(point);
        });
      }

      $("trajectory-count").textContent = String(drawn.length);
      if (hasWebGL && this.surfaceDirty) {
        const wait = this.controller ? 1000 - (performance.now() - this.surfaceAt) : 0;
        if (wait > 0) {
          clearTimeout(this.surfaceTimer);
          this.surfaceTimer = setTimeout(() => this.redraw(false), wait);
          return;
        }
        this.surfaceDirty = false;
        this.surfaceAt = performance.now();
        const surface = [
          {
            type: "surface",
            x: land.x,
            y: land.y,
            z: zt,
            text: land.text,
            hovertemplate: "(%{x:.3f}, %{y:.3f})<br>f = %{text}<extra></extra>",
            colorscale: LANDSCAPE_SCALE,
            showscale: false,
            opacity: 0.95,
            contours: { z: { show: true, usecolormap: true, project: { z: true }, width: 1 } },
            lighting: { ambient: 0.75, diffuse: 0.6, specular: 0.1, roughness: 0.8 },
          },
          {
            type: "scatter3d",
            mode: "markers",
            x: minima.map((m) => m.x[0]),
            y: minima.map((m) => m.x[1]),
            z: minima.map((m) => tf(m.value) + lift),
            name: "known minima",
            marker: { symbol: "diamond", size: 5, color: "#facc15", line: { color: "#111827", width: 1 } },
            hoverinfo: "skip",
          },
          ...drawn.map((t) => ({
            type: "scatter3d",
            mode: "lines+markers",
            x: t.xs,
            y: t.ys,
            z: t.vs.map((v) => {
              const z = tf(v);
              return z === null ? null : z + lift;
            }),
            name: t.name,
            legendgroup: t.name,
            showlegend: false,
            line: { color: t.color, width: 5 },
            marker: { color: t.color, size: 2.5 },
            hoverinfo: "skip",
          })),
        ];
        await plot(
          $("surface-plot"),
          surface,
          layout({
            title: { text: `${name}: the surface` },
            margin: { l: 0, r: 0, t: 48, b: 0 },
            showlegend: false,
            uirevision: this.objectiveKey,
            scene: {
              xaxis: { title: { text: "x₀" }, gridcolor: "#dfe3ec" },
              yaxis: { title: { text: "x₁" }, gridcolor: "#dfe3ec" },
              zaxis: { title: { text: log ? "log(1+f−min)" : "f" }, gridcolor: "#dfe3ec" },
              aspectmode: "manual",
              aspectratio: { x: 1, y: 1, z: 0.65 },
              camera: { eye: { x: -1.2, y: -1.3, z: 0.8 }, center: { x: 0, y: 0, z: -0.08 } },
            },
          }),
        );
      }
    },

    chosenOptimizers() {
      const rows = [...$("optimizer-table").tBodies[0].rows];
      return rows
        .filter((row) => row.querySelector("input[type=checkbox]").checked)
        .map((row) => {
          const name = row.dataset.name;
          const lrText = row.querySelector("input[type=number]").value.trim();
          const lr = Number(lrText);
          if (lrText === "" || !Number.isFinite(lr) || lr <= 0) throw new InputError(`${name}: the learning rate must be a positive number.`);
          return { name, lr, color: row.dataset.color };
        });
    },

    setStatus(state, message) {
      const status = $("run-status");
      status.dataset.state = state;
      status.dataset.progressEvents = String(this.progressEvents);
      status.dataset.livePoints = String(this.livePoints);
      $("run-message").textContent = message;
    },

    async run() {
      if (this.controller) return;
      hideError($("optimizer-error"));
      if (!this.landscape) throw new InputError("The landscape is not there yet.");
      if (this.starts.length === 0) {
        throw new InputError("Add a start first: click the contour plot, or press “+ 4 random”.");
      }
      const chosen = this.chosenOptimizers();
      if (chosen.length === 0) throw new InputError("Tick at least one optimiser.");
      const steps = readInt("opt-steps", "steps", 1, 10_000_000);
      const recordEvery = readInt("opt-record", "record every", 1, 10_000_000);
      const tolText = $("opt-tolerance").value.trim();
      const tolerance = tolText === "" ? null : Number(tolText);
      if (tolerance !== null && !(tolerance >= 0)) throw new InputError("The tolerance must be a number ≥ 0, or empty.");
      const starts = this.starts.map((p) => [...p]);
      const body = {
        objective: this.objective(),
        starts,
        optimizer: chosen.map((o) => ({ name: o.name, lr: o.lr })),
        steps,
        record_every: recordEvery,
        tolerance,
        dtype: $("opt-dtype").value,
      };
      // One trajectory per start and optimiser, in the order of the result's runs. Progress events
      // name a run by start and optimiser name; each optimiser is listed once, so that is unique.
      this.trajectories = [];
      const index = new Map();
      starts.forEach((x0, s) => {
        chosen.forEach((o, k) => {
          index.set(`${s}:${o.name}`, this.trajectories.length);
          this.trajectories.push({ start: s, name: o.name, lr: o.lr, color: o.color, x0, xs: [], ys: [], vs: [], steps: [] });
        });
      });
      this.progressEvents = 0;
      this.livePoints = 0;
      this.renderResults(null);
      this.controller = new AbortController();
      $("run-optimizer").disabled = true;
      $("stop-optimizer").disabled = false;
      this.setStatus("running", `· ${this.trajectories.length} runs, waiting for the first step…`);
      this.redraw();

      const onProgress = (event) => {
        this.progressEvents += 1;
        for (const run of event.runs || []) {
          const t = this.trajectories[index.get(`${run.start}:${run.optimizer}`)];
          if (!t || !Array.isArray(run.x)) continue;
          if (t.steps.length && t.steps[t.steps.length - 1] >= event.step) continue;
          t.xs.push(finite(run.x[0]));
          t.ys.push(finite(run.x[1]));
          t.vs.push(run.value);
          t.steps.push(event.step);
          this.livePoints += 1;
        }
        this.setStatus("running", `· step ${event.step} of ${steps}`);
        this.redraw();
      };
      const onResult = (result) => {
        for (const run of result.runs || []) {
          const name = run.optimizer && typeof run.optimizer === "object" ? run.optimizer.name : run.optimizer;
          const t = this.trajectories[index.get(`${run.start}:${name}`)];
          if (!t) continue;
          t.result = run;
          if (run.trajectory) {
            t.xs = run.trajectory.x.map((p) => finite(p[0]));
            t.ys = run.trajectory.x.map((p) => finite(p[1]));
            t.vs = run.trajectory.value;
            t.steps = run.trajectory.step;
          }
        }
        this.renderResults(result);
      };

      try {
        await streamOptimize(body, this.controller.signal, onProgress, onResult);
        const ms = this.lastMeta ? ` in ${fmt(this.lastMeta.elapsed_ms / 1000, 3)} s on ${this.lastMeta.device}` : "";
        this.setStatus("done", `· done${ms}`);
      } catch (e) {
        if (isAbort(e)) this.setStatus("stopped", "· stopped (the service stops the runs too)");
        else {
          this.setStatus("error", "· failed");
          throw e;
        }
      } finally {
        this.controller = null;
        $("run-optimizer").disabled = false;
        $("stop-optimizer").disabled = true;
        await this.redraw();
      }
    },

    renderResults(result) {
      const table = $("run-results");
      this.lastMeta = result ? result.meta : null;
      if (!result) {
        table.hidden = true;
        table.tBodies[0].replaceChildren();
        return;
      }
      const rows = [];
      for (const t of this.trajectories) {
        const run = t.result;
        if (!run) continue;
        const nearest = run.nearest_minimum;
        rows.push(
          el(
            "tr",
            {},
            el("td", {}, fmtPoint(t.x0, 3)),
            el("td", {}, el("span", { className: "swatch", style: `background:${t.color}` }), `${t.name} lr ${fmt(t.lr)}`),
            el("td", {}, Array.isArray(run.x) ? fmtPoint(run.x, 6) : "–"),
            el("td", {}, fmt(run.value)),
            el("td", {}, String(run.steps)),
            el("td", {}, run.stopped),
            el("td", {}, nearest ? `${fmtPoint(nearest.x, 4)} at ${fmt(nearest.distance, 3)}` : "–"),
          ),
        );
      }
      table.tBodies[0].replaceChildren(...rows);
      table.hidden = rows.length === 0;
    },
  };

  // ---------------------------------------------------------------------------------------
  // Expressions: value, gradient and Hessian of your own formula
  // ---------------------------------------------------------------------------------------

  const EXAMPLES = [
    {
      title: "Himmelblau at (3, 2), one of its minima",
      expression: "(x[0] ** 2 + x[1] - 11) ** 2 + (x[0] + x[1] ** 2 - 7) ** 2",
      inputs: { x: [3.0, 2.0] },
    },
    {
      title: "The seed's perceptron: mse(1, sigmoid(x @ w.T))",
      expression: "o = sigmoid(x @ w.T)\nmse(ones_like(o), o)",
      inputs: { x: [[0.5, -1.0, 2.0]], w: [[0.1, 0.2, 0.3], [-0.3, 0.2, 0.1]] },
    },
    {
      title: "One softmax output against every input",
      expression: "softmax(a, dim=0)[1]",
      inputs: { a: [0.2, 0.5, 0.9] },
    },
    {
      title: "Entropy in bits",
      expression: "-sum(p * log2(p))",
      inputs: { p: [0.25, 0.25, 0.5] },
    },
    {
      title: "Log-sum-exp, the smooth maximum",
      expression: "logsumexp(z, dim=0)",
      inputs: { z: [1.0, 2.0, 3.0] },
    },
  ];

  function tensorView(value) {
    if (!Array.isArray(value)) return el("div", { className: "tensor" }, fmt(value, 7));
    const depth = (v) => (Array.isArray(v) ? 1 + (v.length ? depth(v[0]) : 0) : 0);
    const d = depth(value);
    if (d === 1) {
      return el("div", { className: "tensor" }, el("table", {}, el("tr", {}, ...value.map((v) => el("td", {}, fmt(v, 7))))));
    }
    if (d === 2) {
      const rows = value.map((row) => el("tr", {}, ...row.map((v) => el("td", {}, fmt(v, 7)))));
      return el("div", { className: "tensor" }, el("table", {}, ...rows));
    }
    const text = JSON.stringify(value, (_, v) => (typeof v === "number" ? Number(fmt(v, 7)) || v : v));
    return el("div", { className: "tensor" }, el("pre", {}, text.length > 4000 ? text.slice(0, 4000) + " …" : text));
  }

  const flatten = (t) => (Array.isArray(t) ? t.flat(Infinity) : [t]);

  const Expressions = {
    async start() {
      const select = $("expression-example");
      fillSelect(
        select,
        EXAMPLES.map((e, i) => [String(i), e.title]),
        "0",
      );
      select.addEventListener("change", () => this.example(Number(select.value)));
      const form = $("expression-form");
      form.addEventListener("submit", (event) => {
        event.preventDefault();
        this.run();
      });
      form.addEventListener("keydown", (event) => {
        if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
          event.preventDefault();
          this.run();
        }
      });
      this.example(0);
    },

    example(i) {
      const e = EXAMPLES[i];
      $("expression-text").value = e.expression;
      $("expression-inputs").value = JSON.stringify(e.inputs).replace(/,/g, ", ").replace(/":/g, '": ');
      $("expression-wrt").value = "";
      this.run();
    },

    run: latest(async (stale) => {
      const expression = $("expression-text").value;
      let inputs;
      try {
        inputs = JSON.parse($("expression-inputs").value || "{}");
      } catch (e) {
        throw new InputError(`The inputs are not valid JSON: ${e.message}`);
      }
      if (!inputs || typeof inputs !== "object" || Array.isArray(inputs)) {
        throw new InputError('The inputs must be a JSON object of tensors, such as {"x": [1, 2]}.');
      }
      const derivatives = [];
      if ($("want-grad").checked) derivatives.push("grad");
      if ($("want-jacobian").checked) derivatives.push("jacobian");
      if ($("want-hessian").checked) derivatives.push("hessian");
      const body = { expression, inputs, derivatives };
      const wrt = $("expression-wrt")
        .value.split(",")
        .map((s) => s.trim())
        .filter(Boolean);
      if (wrt.length) body.wrt = wrt;
      const res = await api("/v1/differentiate", body);
      if (stale()) return;

      const out = [el("h3", {}, "value"), tensorView(res.value)];
      for (const [key, title] of [
        ["grad", "gradient"],
        ["jacobian", "Jacobian"],
      ]) {
        if (!res[key]) continue;
        for (const [name, t] of Object.entries(res[key])) out.push(el("h3", {}, `${title} w.r.t. ${name}`), tensorView(t));
      }
      if (res.hessian) {
        for (const [a, row] of Object.entries(res.hessian)) {
          for (const [b, t] of Object.entries(row)) out.push(el("h3", {}, `Hessian ∂²/∂${a}∂${b}`), tensorView(t));
        }
      }
      const meta = res.meta || {};
      out.push(el("p", { className: "meta" }, `${meta.device} · ${meta.dtype} · ${fmt(meta.elapsed_ms, 3)} ms`));
      $("expression-result").replaceChildren(...out);
      await Expressions.hessianPlot(res.hessian);
    }, $("expression-error")),

    /** The whole Hessian over every wrt input, flattened, as a heatmap. */
    async hessianPlot(hessian) {
      const node = $("hessian-plot");
      const names = hessian ? Object.keys(hessian) : [];
      const sizes = names.map((a) => Math.round(Math.sqrt(flatten(hessian[a][a]).length)));
      const total = sizes.reduce((s, n) => s + n, 0);
      if (!names.length || total > 400) {
        node.hidden = true;
        return;
      }
      const labels = names.flatMap((a, i) => Array.from({ length: sizes[i] }, (_, k) => (sizes[i] === 1 ? a : `${a}[${k}]`)));
      const z = Array.from({ length: total }, () => new Array(total).fill(null));
      let r0 = 0;
      names.forEach((a, i) => {
        let c0 = 0;
        names.forEach((b, j) => {
          const block = hessian[a] && hessian[a][b] ? flatten(hessian[a][b]) : [];
          for (let p = 0; p < sizes[i]; p++) for (let q = 0; q < sizes[j]; q++) z[r0 + p][c0 + q] = finite(block[p * sizes[j] + q]);
          c0 += sizes[j];
        });
        r0 += sizes[i];
      });
      node.hidden = false;
      await plot(
        node,
        [
          {
            type: "heatmap",
            x: labels,
            y: labels,
            z,
            colorscale: DIVERGING,
            zmid: 0,
            text: z.map((row) => row.map((v) => fmt(v))),
            texttemplate: total <= 12 ? "%{text}" : "",
            hovertemplate: "∂²f/∂%{y}∂%{x} = %{text}<extra></extra>",
            colorbar: { thickness: 12 },
          },
        ],
        layout({
          title: { text: "Hessian" },
          xaxis: axis("", { type: "category", side: "top", constrain: "domain", showgrid: false }),
          yaxis: axis("", { type: "category", autorange: "reversed", scaleanchor: "x", constrain: "domain", showgrid: false }),
          margin: { l: 70, r: 24, t: 90, b: 24 },
        }),
      );
    },
  };

  // ---------------------------------------------------------------------------------------
  // Tabs, settings and start-up
  // ---------------------------------------------------------------------------------------

  const TABS = {
    activations: [Activations, "activation-error"],
    losses: [Losses, "loss-error"],
    optimizers: [Optimizers, "optimizer-error"],
    expressions: [Expressions, "expression-error"],
  };
  const started = new Set();

  function show(name) {
    if (!(name in TABS)) name = "activations";
    for (const button of document.querySelectorAll("[role=tab]")) {
      const selected = button.dataset.tab === name;
      button.setAttribute("aria-selected", String(selected));
      button.tabIndex = selected ? 0 : -1;
    }
    for (const key of Object.keys(TABS)) $(`panel-${key}`).hidden = key !== name;
    if (location.hash !== `#${name}`) history.replaceState(null, "", `#${name}`);
    const [tab, errorId] = TABS[name];
    if (!started.has(name)) {
      started.add(name);
      tab.start().catch((e) => {
        started.delete(name); // try again next time the tab is shown
        showError($(errorId), e);
      });
    } else {
      for (const node of $(`panel-${name}`).querySelectorAll(".js-plotly-plot")) Plotly.Plots.resize(node);
    }
  }

  async function serviceInfo() {
    try {
      const info = await api("/v1/info");
      $("service-info").textContent =
        `Gradient Service ${info.version} · torch ${info.torch_version} · default device ${info.default_device}`;
    } catch {
      // the footer keeps its plain title
    }
  }

  function boot() {
    window.addEventListener("unhandledrejection", (event) => {
      event.preventDefault();
      showError($("global-error"), event.reason);
    });
    if (typeof Plotly === "undefined") {
      showError($("global-error"), new InputError("plotly.js did not load (/web/vendor/plotly.min.js); no plots can be drawn."));
      return;
    }
    $("settings-form").addEventListener("submit", (event) => event.preventDefault());
    const keyInput = $("api-key");
    keyInput.value = apiKey;
    keyInput.addEventListener("change", () => {
      apiKey = keyInput.value.trim();
      try {
        sessionStorage.setItem("gradient-api-key", apiKey);
      } catch {
        // private mode: the key lasts until the page reloads
      }
      location.reload();
    });
    for (const button of document.querySelectorAll("[role=tab]")) {
      button.addEventListener("click", () => show(button.dataset.tab));
    }
    window.addEventListener("hashchange", () => show(location.hash.slice(1)));
    show(location.hash.slice(1));
    serviceInfo();
  }

  boot();
})();
