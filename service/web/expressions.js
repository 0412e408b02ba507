// Expressions tab: value, gradient and Hessian of your own formula.

import { api, finite } from "./api.js";
import { DIVERGING, axis, layout, plot } from "./plot.js";
import { $, InputError, el, fillSelect, fmt, latest } from "./ui.js";

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

export const Expressions = {
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
