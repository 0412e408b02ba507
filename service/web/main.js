// Gradient Service playground: plain JavaScript modules, no build step, no request outside this
// origin. plotly.js is a classic script loaded before them (the global `Plotly`).
//
// Four tabs, each a small object with start() (run once, when the tab is first shown):
// activations, losses, optimisers (live trajectories from the SSE stream of POST /v1/optimize)
// and expressions, one module each. This one wires the tabs, the settings and start-up. Every
// API error is shown in the page; nothing is thrown uncaught.

import { Activations } from "./activations.js";
import { api, getApiKey, setApiKey } from "./api.js";
import { Expressions } from "./expressions.js";
import { Losses } from "./losses.js";
import { Optimizers } from "./optimizers.js";
import { $, InputError, showError } from "./ui.js";

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
  keyInput.value = getApiKey();
  keyInput.addEventListener("change", () => {
    setApiKey(keyInput.value.trim());
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
