// Expressions tab: value, gradient, Hessian, and the derivatives along a direction u of your own
// formula: the directional derivative (jvp) and the Hessian's action on u (hvp), drawn on the
// formula's landscape around the point when the input moved is a 2-vector. A dry run tells the
// cost first.

import { api, finite, num } from "./api.js";
import { DIVERGING, INK, LANDSCAPE_SCALE, axis, layout, plot } from "./plot.js";
import { $, InputError, el, fillSelect, fmt, fmtPoint, latest, linspace, readNumber, sub } from "./ui.js";

const EXAMPLES = [
  {
    title: "Himmelblau at (3, 2), one of its minima",
    expression: "(x[0] ** 2 + x[1] - 11) ** 2 + (x[0] + x[1] ** 2 - 7) ** 2",
    inputs: { x: [3.0, 2.0] },
  },
  {
    title: "Rosenbrock's valley at (-1, 1): steep across it, flat along it",
    expression: "(1 - x[0]) ** 2 + 100 * (x[1] - x[0] ** 2) ** 2",
    inputs: { x: [-1.0, 1.0] },
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

const GRID = 41; // landscape points per side around the point, computed as one batch
const DEGREES = 180 / Math.PI;
const U_INK = "#111827";
const GRAD_INK = INK.d2f;
const HVP_INK = INK.df;

const flatten = (t) => (Array.isArray(t) ? t.flat(Infinity) : [t]);
const shapeOf = (t) => (Array.isArray(t) ? [t.length, ...(t.length ? shapeOf(t[0]) : [])] : []);
const isTensor = (v) => typeof v === "number" || (Array.isArray(v) && flatten(v).every((x) => typeof x === "number"));
/** cos and sin to 6 decimals, short enough to read: cos(90°) is 0, not 6e-17. */
const clean = (v) => Math.round(v * 1e6) / 1e6 || 0;
const count = (n) => Number(n).toLocaleString("en-US");
const tagged = (node, testid) => {
  node.dataset.testid = testid;
  return node;
};

/** The flat values laid out in `shape`, row-major, as nested lists. */
function reshape(flat, shape) {
  if (!shape.length) return flat[0];
  const step = flat.length / shape[0];
  return Array.from({ length: shape[0] }, (_, i) => reshape(flat.slice(i * step, (i + 1) * step), shape.slice(1)));
}

function bytes(n) {
  const units = ["KiB", "MiB", "GiB", "TiB"];
  let v = n;
  let u = -1;
  while (v >= 1024 && u < units.length - 1) {
    v /= 1024;
    u += 1;
  }
  return u < 0 ? `${n} bytes` : `${count(n)} bytes (${fmt(v, 3)} ${units[u]})`;
}

function readInputs() {
  let inputs;
  try {
    inputs = JSON.parse($("expression-inputs").value || "{}");
  } catch (e) {
    throw new InputError(`The inputs are not valid JSON: ${e.message}`);
  }
  if (!inputs || typeof inputs !== "object" || Array.isArray(inputs)) {
    throw new InputError('The inputs must be a JSON object of tensors, such as {"x": [1, 2]}.');
  }
  return inputs;
}

const readWrt = () =>
  $("expression-wrt")
    .value.split(",")
    .map((s) => s.trim())
    .filter(Boolean);

/** Where a click on `node`'s plot area lands, in data coordinates. */
function clickPoint(node, event) {
  const mouse = event.event;
  const cover = node.querySelector(".nsewdrag");
  const xr = node.layout && node.layout.xaxis && node.layout.xaxis.range;
  const yr = node.layout && node.layout.yaxis && node.layout.yaxis.range;
  if (!mouse || !cover || !xr || !yr) return null;
  const box = cover.getBoundingClientRect();
  const fx = (mouse.clientX - box.left) / box.width;
  const fy = (mouse.clientY - box.top) / box.height;
  return fx >= 0 && fx <= 1 && fy >= 0 && fy <= 1 ? [xr[0] + fx * (xr[1] - xr[0]), yr[1] - fy * (yr[1] - yr[0])] : null;
}

export const Expressions = {
  /** The input u moves: its name, shape and number of elements (2: the plane controls). */
  dir: { key: "", name: "", shape: [], size: 0, point: null },
  land: null,
  plotted: "", // the landscape the direction plot shows
  clickBound: false,

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
    // The direction is live: moving it recomputes at once, like the other tabs' sliders.
    for (const id of ["want-jvp", "want-hvp"]) $(id).addEventListener("change", () => this.showDirection());
    for (const id of ["expression-inputs", "expression-wrt"]) $(id).addEventListener("change", () => this.refreshDirection());
    $("direction-input").addEventListener("change", () => {
      this.refreshDirection();
      this.run.soon();
    });
    $("direction-angle").addEventListener("input", () => {
      this.setAngle(Number($("direction-angle").value));
      this.run.soon(60);
    });
    for (const id of ["direction-u0", "direction-u1"]) {
      $(id).addEventListener("input", () => {
        this.angleFromFields();
        this.run.soon(250);
      });
    }
    $("direction-json").addEventListener("input", () => this.run.soon(250));
    this.showDirection();
    this.example(0);
  },

  example(i) {
    const e = EXAMPLES[i];
    $("expression-text").value = e.expression;
    $("expression-inputs").value = JSON.stringify(e.inputs).replace(/,/g, ", ").replace(/":/g, '": ');
    $("expression-wrt").value = "";
    this.dir.key = ""; // a new example: u starts again along its first element
    this.run();
  },

  showDirection() {
    $("direction-block").hidden = !($("want-jvp").checked || $("want-hvp").checked);
  },

  /** List the inputs u can move (those differentiated); a new one starts u along its first element. */
  refreshDirection() {
    let inputs;
    try {
      inputs = readInputs();
    } catch {
      return; // the next run reports it
    }
    const wrt = readWrt();
    const names = Object.keys(inputs).filter((n) => isTensor(inputs[n]) && (!wrt.length || wrt.includes(n)));
    const select = $("direction-input");
    fillSelect(
      select,
      names.map((n) => [n, n]),
      names.includes(select.value) ? select.value : names[0],
    );
    const name = select.value;
    const shape = name ? shapeOf(inputs[name]) : [];
    const size = shape.reduce((a, b) => a * b, 1);
    const key = JSON.stringify([name, shape]);
    if (key !== this.dir.key) {
      this.setAngle(0);
      const first = Array.from({ length: size }, (_, k) => (k === 0 ? 1 : 0));
      $("direction-json").value = name ? JSON.stringify(reshape(first, shape)) : "";
    }
    this.dir = { key, name, shape, size, point: null };
    $("direction-plane").hidden = size !== 2;
    $("direction-json-block").hidden = size === 2 || !name;
  },

  setAngle(degrees) {
    $("direction-angle").value = String(degrees);
    $("direction-angle-value").textContent = `${fmt(degrees, 4)}°`;
    $("direction-u0").value = String(clean(Math.cos(degrees / DEGREES)));
    $("direction-u1").value = String(clean(Math.sin(degrees / DEGREES)));
  },

  angleFromFields() {
    const u0 = Number($("direction-u0").value);
    const u1 = Number($("direction-u1").value);
    const ok = Number.isFinite(u0) && Number.isFinite(u1) && (u0 !== 0 || u1 !== 0);
    const degrees = ok ? Math.atan2(u1, u0) * DEGREES : 0;
    $("direction-angle").value = String(degrees);
    $("direction-angle-value").textContent = ok ? `${fmt(degrees, 4)}°` : "–";
  },

  /** The request's `tangents`: u for the chosen input (the others get zeros). */
  tangents() {
    const { name, shape, size } = this.dir;
    if (!name) throw new InputError("jvp and hvp move an input along u: list one of the inputs under “With respect to”.");
    if (size === 2) return { [name]: reshape([readNumber("direction-u0", "u₀"), readNumber("direction-u1", "u₁")], shape) };
    try {
      return { [name]: JSON.parse($("direction-json").value) };
    } catch (e) {
      throw new InputError(`The direction u is not valid JSON: ${e.message}`);
    }
  },

  showCost(cost) {
    const node = $("expression-cost");
    node.hidden = !cost;
    if (!cost) return;
    node.dataset.flops = String(cost.flops);
    node.dataset.bytes = String(cost.bytes);
    node.replaceChildren(
      "Dry run: ",
      el("strong", { dataset: { testid: "cost-flops" } }, count(cost.flops)),
      " flops, ",
      el("strong", { dataset: { testid: "cost-bytes" } }, bytes(cost.bytes)),
      " at the peak",
    );
  },

  run: latest(async (stale) => {
    const expression = $("expression-text").value;
    const inputs = readInputs();
    const derivatives = [];
    if ($("want-grad").checked) derivatives.push("grad");
    if ($("want-jacobian").checked) derivatives.push("jacobian");
    if ($("want-hessian").checked) derivatives.push("hessian");
    if ($("want-jvp").checked) derivatives.push("jvp");
    if ($("want-hvp").checked) derivatives.push("hvp");
    const body = { expression, inputs, derivatives };
    const wrt = readWrt();
    if (wrt.length) body.wrt = wrt;
    if ($("want-jvp").checked || $("want-hvp").checked) {
      Expressions.refreshDirection();
      body.tangents = Expressions.tangents();
    }
    // The dry run first: the cost before computing (and any error in the request, at no cost).
    Expressions.showCost(null);
    const dry = await api("/v1/differentiate", { ...body, dry_run: true });
    if (stale()) return;
    Expressions.showCost(dry.cost);
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
    if (body.tangents) {
      const [name, u] = Object.entries(body.tangents)[0];
      out.push(el("h3", {}, `direction u, moving ${name}`), tagged(tensorView(u), "direction-u"));
      if (res.jvp !== null && res.jvp !== undefined) {
        out.push(el("h3", {}, "jvp: the derivative along u, ∇f · u"), tagged(tensorView(res.jvp), "jvp-result"));
      }
      for (const [n, t] of Object.entries(res.hvp || {})) {
        out.push(el("h3", {}, `hvp w.r.t. ${n}: the Hessian times u`), tagged(tensorView(t), `hvp-result-${n}`));
      }
    }
    const meta = res.meta || {};
    out.push(el("p", { className: "meta" }, `${meta.device} · ${meta.dtype} · ${fmt(meta.elapsed_ms, 3)} ms`));
    $("expression-result").replaceChildren(...out);
    await Expressions.hessianPlot(res.hessian);
    await Expressions.directionPlot(body, res, stale);
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

  /**
   * f around the point, in the plane of a 2-element input, from one batched request: the value
   * at GRID × GRID points, the other inputs shared. Kept until the formula or the inputs change;
   * a formula that does not batch gets no landscape (the arrows are drawn all the same).
   */
  async landscape(body, name, shape, p, r) {
    const key = JSON.stringify([body.expression, body.inputs, name]);
    if (this.land && this.land.key === key) return this.land;
    const xs = linspace(p[0] - r, p[0] + r, GRID);
    const ys = linspace(p[1] - r, p[1] + r, GRID);
    const land = { key, xs, ys, z: null, text: null, note: "" };
    try {
      const points = ys.flatMap((y) => xs.map((x) => reshape([x, y], shape)));
      const inputs = { ...body.inputs, [name]: points };
      const res = await api("/v1/differentiate", { expression: body.expression, inputs, batch: [name], derivatives: [] });
      const values = Array.isArray(res.value) ? res.value : [];
      if (values.length !== GRID * GRID || values.some(Array.isArray)) throw new Error("the value is not a number per point");
      const f = values.map(finite);
      const lo = f.reduce((m, v) => (v !== null && v < m ? v : m), Infinity);
      // log(1 + f − min f), as on the optimiser tab: the landscape near a minimum stays legible
      land.z = ys.map((_, j) => xs.map((_, i) => (f[j * GRID + i] === null ? null : Math.log1p(f[j * GRID + i] - lo))));
      land.text = ys.map((_, j) => xs.map((_, i) => fmt(f[j * GRID + i])));
    } catch (e) {
      land.note = `no landscape: ${String(e.message).replace(/</g, "&lt;").replace(/>/g, "&gt;")}`;
    }
    this.land = land;
    return land;
  },

  /** u, H·u and ∇f as arrows from the point, over f's landscape; a click there points u. */
  async directionPlot(body, res, stale) {
    const node = $("direction-plot");
    const { name, shape, size } = this.dir;
    if (!body.tangents || size !== 2 || !(name in body.tangents)) {
      node.hidden = true;
      return;
    }
    const p = flatten(body.inputs[name]).map(num);
    const r = Math.max(1, Math.hypot(p[0], p[1]) / 2);
    const land = await this.landscape(body, name, shape, p, r);
    if (stale()) return;
    this.dir.point = p;

    const reach = 0.45 * r;
    const traces = [];
    const annotations = [];
    const arrow = (tensor, label, color, testid) => {
      const v = flatten(tensor).map(num);
      const length = Math.hypot(v[0], v[1]);
      if (!(length > 0) || !Number.isFinite(length)) return;
      const k = reach / length;
      const tip = [p[0] + k * v[0], p[1] + k * v[1]];
      const scale = Math.abs(k - 1) < 1e-9 ? "" : `, drawn ×${fmt(k, 2)}`;
      traces.push({
        type: "scatter",
        mode: "lines",
        x: [p[0], tip[0]],
        y: [p[1], tip[1]],
        name: `${label} = ${fmtPoint(v)}${scale}`,
        meta: testid,
        line: { color, width: 2.5 },
        hoverinfo: "skip",
      });
      const ends = { x: tip[0], y: tip[1], ax: p[0], ay: p[1], xref: "x", yref: "y", axref: "x", ayref: "y" };
      annotations.push({ ...ends, text: "", showarrow: true, arrowhead: 2, arrowsize: 1.2, arrowwidth: 2.5, arrowcolor: color });
    };
    if (land.z) {
      traces.push({
        type: "contour",
        x: land.xs,
        y: land.ys,
        z: land.z,
        text: land.text,
        hovertemplate: "(%{x:.3f}, %{y:.3f})<br>f = %{text}<extra></extra>",
        colorscale: LANDSCAPE_SCALE,
        ncontours: 24,
        contours: { coloring: "heatmap", showlines: true },
        line: { width: 0.6, color: "rgba(30,41,59,0.25)" },
        showscale: false,
        showlegend: false,
      });
    }
    if (res.grad && res.grad[name] !== undefined) arrow(res.grad[name], "∇f", GRAD_INK, "grad");
    arrow(body.tangents[name], "u", U_INK, "u");
    if (res.hvp && res.hvp[name] !== undefined) arrow(res.hvp[name], "H·u", HVP_INK, "hvp");
    traces.push({
      type: "scatter",
      mode: "markers",
      x: [p[0]],
      y: [p[1]],
      name: `${name} = ${fmtPoint(p)}`,
      marker: { size: 10, color: "#ffffff", line: { color: U_INK, width: 2 } },
      hovertemplate: "(%{x:.4f}, %{y:.4f})<extra></extra>",
    });

    const parts = [];
    if (res.jvp !== null && res.jvp !== undefined && !Array.isArray(res.jvp)) parts.push(`jvp ∇f·u = ${fmt(res.jvp)}`);
    if (res.hvp && res.hvp[name] !== undefined) parts.push(`hvp H·u = ${fmtPoint(flatten(res.hvp[name]).map(num))}`);
    const title = (parts.join(" · ") || `f around ${name}`) + (land.note ? `<br><sub>${land.note}</sub>` : "");
    node.hidden = false;
    if (this.plotted !== land.key) {
      // A new window: a fresh plot. Plotly.react from one equal-aspect window to another keeps
      // the old x range (with the legend above the plot), so start over, click handler included.
      Plotly.purge(node);
      this.plotted = land.key;
      this.clickBound = false;
    }
    await plot(
      node,
      traces,
      layout({
        title: { text: title },
        xaxis: axis(`${name}${sub(0)}`, { range: [p[0] - r, p[0] + r], showgrid: false, zeroline: false, constrain: "domain" }),
        yaxis: axis(`${name}${sub(1)}`, {
          range: [p[1] - r, p[1] + r],
          showgrid: false,
          zeroline: false,
          scaleanchor: "x",
          constrain: "domain",
        }),
        annotations,
        hovermode: "closest",
        margin: { l: 56, r: 16, t: 90, b: 50 },
      }),
    );
    if (!this.clickBound) {
      this.clickBound = true;
      node.on("plotly_click", (event) => this.pointAt(clickPoint(node, event)));
    }
  },

  /** Point u from the point towards `at` (a unit vector), and recompute. */
  pointAt(at) {
    const p = this.dir.point;
    if (!at || !p) return;
    const d = [at[0] - p[0], at[1] - p[1]];
    if (!(Math.hypot(d[0], d[1]) > 0)) return;
    this.setAngle(Math.round(Math.atan2(d[1], d[0]) * DEGREES * 10) / 10); // to 0.1°
    this.run();
  },
};
