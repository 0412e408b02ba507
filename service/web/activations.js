// Activations tab: f, f' and f'' over a range (and the Jacobian of a non-elementwise function).

import { api, finite } from "./api.js";
import { DIVERGING, INK, axis, layout, plot } from "./plot.js";
import { $, InputError, catalogSelect, fmt, latest, linspace, liveForm, paramsForm, readInt, readNumber } from "./ui.js";

export const Activations = {
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
