// Losses tab: the loss and its gradient as a prediction sweeps against a fixed target.

import { api, finite, num } from "./api.js";
import { INK, PALETTE, axis, layout, plot } from "./plot.js";
import { $, InputError, catalogSelect, latest, linspace, liveForm, paramsForm, readInt, readNumber, sub } from "./ui.js";

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

export const Losses = {
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
