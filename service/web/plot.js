// Plotting with plotly.js, loaded before the modules as a classic script: the global `Plotly`.

const PLOT_CONFIG = { responsive: true, displaylogo: false, modeBarButtonsToRemove: ["select2d", "lasso2d"] };
const FONT = { family: 'system-ui, -apple-system, "Segoe UI", Roboto, Arial, sans-serif', size: 12, color: "#1d2433" };
const AXIS = { gridcolor: "#edf0f5", zerolinecolor: "#c3c9d6", linecolor: "#c3c9d6", automargin: true };
export const INK = { f: "#2563eb", df: "#dc2626", d2f: "#059669" };
// One colour per optimiser (catalogue order); picked to stand out on the light landscape.
export const PALETTE = ["#f59e0b", "#e11d48", "#10b981", "#8b5cf6", "#111827", "#db2777", "#0d9488", "#a16207", "#65a30d", "#64748b"];
export const LANDSCAPE_SCALE = [
  [0, "#fbfdff"],
  [0.25, "#dbe7f6"],
  [0.5, "#a7bfdf"],
  [0.75, "#6683b3"],
  [1, "#2c3e6b"],
];

export const DIVERGING = [
  [0, "#b2182b"],
  [0.25, "#ef8a62"],
  [0.5, "#ffffff"],
  [0.75, "#67a9cf"],
  [1, "#2166ac"],
];

export const axis = (title, extra = {}) => ({ ...AXIS, title: { text: title }, ...extra });

export function layout(extra) {
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

export const plot = (node, data, plotLayout) => Plotly.react(node, data, plotLayout, PLOT_CONFIG);

export const hasWebGL = (() => {
  try {
    const canvas = document.createElement("canvas");
    return Boolean(canvas.getContext("webgl2") || canvas.getContext("webgl"));
  } catch {
    return false;
  }
})();
