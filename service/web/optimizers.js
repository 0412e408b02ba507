// Optimisers tab: landscape, surface, starting points and live trajectories from the event
// stream of POST /v1/optimize.

import { api, catalog, finite, isAbort, streamOptimize } from "./api.js";
import { LANDSCAPE_SCALE, PALETTE, axis, hasWebGL, layout, plot } from "./plot.js";
import { $, InputError, el, fillSelect, fmt, fmtPoint, hideError, latest, readInt, readNumber, showError } from "./ui.js";

const CUSTOM = "__custom__";
const ADAM_FAMILY = new Set(["adam", "adamw", "adamax", "nadam", "radam"]);
const SEED_STARTS = [
  [1, 0],
  [-4, 0],
  [4, 0],
];

export const Optimizers = {
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
