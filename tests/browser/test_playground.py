"""The playground page (GET /) in a real browser: Playwright driving Debian's chromium against a
real uvicorn server. Skipped when the playwright package or the browser is missing
(``scripts/install-browser`` installs the browser), except with ``CI`` set to a true value
(1, true, yes, on), where a missing one fails them: CI must not skip them silently.

The page's Content-Security-Policy forbids eval, so waits poll from Python (``wait_until``) or
use Playwright's locator assertions rather than ``page.wait_for_function``.

Set GRADIENT_SCREENSHOT_DIR to also write the optimiser tab's screenshot there as
``playground.png`` (``GRADIENT_SCREENSHOT_DIR=docs`` refreshes the README's picture).
"""

from __future__ import annotations

import math
import os
import re
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import httpx
import pytest

from tests.e2e.serving import running_server

IN_CI = os.environ.get("CI", "").strip().lower() in {"1", "true", "yes", "on"}  # as scripts/install-browser reads it


def missing(what: str) -> NoReturn:
    """Skip for want of ``what``; in CI, fail instead."""
    if IN_CI:
        pytest.fail(f"{what}, and CI={os.environ['CI']}: in CI the browser tests must run, not skip", pytrace=False)
    pytest.skip(what, allow_module_level=True)


try:
    from playwright.sync_api import (
        Browser,
        ConsoleMessage,
        Page,
        Request,
        Response,
        ViewportSize,
        expect,
        sync_playwright,
    )
except ImportError:  # pragma: no cover - depends on the environment
    missing("the playwright package is not installed")

pytestmark = pytest.mark.e2e

CHROMIUM = Path(os.environ.get("GRADIENT_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
VIEWPORT: ViewportSize = {"width": 1440, "height": 1000}
MODULES = ("main", "api", "plot", "ui", "activations", "losses", "optimizers", "expressions")
"""The page's script: ES modules under /web/ (main.js imports the others)."""
JAVASCRIPT = ("text/javascript", "application/javascript")  # a module script needs a JavaScript MIME type
TIMEOUT_MS = 30_000


def chromium_available() -> bool:
    return CHROMIUM.is_file() and os.access(CHROMIUM, os.X_OK)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not chromium_available():
        missing(f"no chromium at {CHROMIUM} (scripts/install-browser installs it)")
    with sync_playwright() as playwright:
        instance = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield instance
        instance.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with running_server(tmp_path_factory.mktemp("server") / "server.log") as (base, *_):
        yield base


@dataclass
class Session:
    """One page, with everything it asked for and every error it reported."""

    page: Page
    base: str
    requests: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)

    def open(self, tab: str = "") -> None:
        self.page.goto(f"{self.base}/#{tab}" if tab else f"{self.base}/")

    def assert_clean(self, allowed_statuses: tuple[int, ...] = ()) -> None:
        """No page error, no console error, no failed request and no request to another origin.

        Chromium logs every 4xx answer to a fetch as a console error; a test that provokes API
        errors on purpose names their statuses in ``allowed_statuses``."""
        expected = [f"status of {status} " for status in allowed_statuses]
        errors = [e for e in self.errors if not any(text in e for text in expected)]
        assert errors == []
        assert self.failed == []
        foreign = [url for url in self.requests if not url.startswith(f"{self.base}/")]
        assert foreign == [], "the page asked for something outside the service"
        assert self.requests, "no request recorded"


@pytest.fixture
def session(browser: Browser, server: str) -> Iterator[Session]:
    context = browser.new_context(viewport=VIEWPORT)
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    result = Session(page, server)

    def on_console(message: ConsoleMessage) -> None:
        if message.type == "error":
            result.errors.append(message.text)

    def on_failed(request: Request) -> None:
        if not request.url.endswith("/v1/optimize"):  # a stopped stream is a failed request
            result.failed.append(f"{request.url}: {request.failure}")

    page.on("console", on_console)
    page.on("pageerror", lambda error: result.errors.append(f"uncaught: {error}"))
    page.on("request", lambda request: result.requests.append(request.url))
    page.on("requestfailed", on_failed)
    yield result
    context.close()


def wait_until(page: Page, expression: str, timeout_s: float = TIMEOUT_MS / 1000) -> Any:
    """Poll a JavaScript expression until it is truthy (wait_for_function needs eval, which the CSP forbids)."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = page.evaluate(expression)
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {expression}"
        time.sleep(0.1)


def traces(page: Page, testid: str) -> int:
    """How many traces Plotly drew in the plot with this data-testid (0 before the first draw)."""
    count: int = page.evaluate(f"(document.querySelector('[data-testid={testid}]').data || []).length")
    return count


def wait_for_plot(page: Page, testid: str, at_least: int) -> None:
    wait_until(page, f"(document.querySelector('[data-testid={testid}]').data || []).length >= {at_least}")
    expect(page.get_by_test_id(testid).locator(".main-svg").first).to_be_visible()


def trace_field(page: Page, testid: str, index: int, key: str) -> list[Any]:
    script = f"Array.from(document.querySelector('[data-testid={testid}]').data[{index}].{key})"
    values: list[Any] = page.evaluate(script)
    return values


def set_range(page: Page, testid: str, value: float) -> None:
    page.get_by_test_id(testid).evaluate(
        "(node, value) => { node.value = String(value); node.dispatchEvent(new Event('input', {bubbles: true})); }",
        value,
    )


def test_page_and_assets_are_served_but_not_documented(server: str) -> None:
    page = httpx.get(f"{server}/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert 'data-testid="run-optimizer"' in page.text
    for asset in ("/web/style.css", "/web/vendor/plotly.min.js", "/web/vendor/LICENSE-plotly.txt"):
        assert httpx.get(f"{server}{asset}").status_code == 200, asset
    for name in MODULES:
        module = httpx.get(f"{server}/web/{name}.js")
        assert module.status_code == 200, name
        assert module.headers["content-type"].split(";")[0].strip() in JAVASCRIPT, name
    assert '<script type="module" src="/web/main.js"></script>' in page.text
    assert httpx.get(f"{server}/web/app.js").status_code == 404  # the modules replaced it
    missing = httpx.get(f"{server}/web/nothing-here.js")
    assert missing.status_code == 404
    assert missing.json()["error"]["type"] == "not_found"
    paths = httpx.get(f"{server}/openapi.json").json()["paths"]
    assert "/" not in paths
    assert not any(path.startswith("/web") for path in paths)


def test_the_page_loads_cleanly_and_stays_on_its_origin(session: Session) -> None:
    page = session.page
    session.open()
    expect(page).to_have_title(re.compile("Gradient Service"))
    wait_for_plot(page, "activation-plot", 3)  # the first tab draws f, f' and f''
    expect(page.get_by_test_id("service-info")).to_contain_text("torch")
    assert page.url.endswith("#activations")
    assert any(url.endswith("/web/vendor/plotly.min.js") for url in session.requests)
    session.assert_clean()


def test_the_script_runs_as_es_modules_without_errors_or_csp_violations(session: Session) -> None:
    page = session.page
    # Init scripts are not subject to the page's CSP: this listener sees every violation from the start.
    page.add_init_script(
        "window.__violations = [];"
        "document.addEventListener('securitypolicyviolation',"
        " (e) => window.__violations.push(e.violatedDirective + ' ' + e.blockedURI));"
    )
    scripts: dict[str, str] = {}

    def on_response(response: Response) -> None:
        if response.url.startswith(f"{session.base}/web/") and response.url.endswith(".js"):
            scripts[response.url.removeprefix(f"{session.base}/web/")] = response.headers.get("content-type", "")

    page.on("response", on_response)
    session.open()
    wait_for_plot(page, "activation-plot", 3)
    tags = page.evaluate("Array.from(document.querySelectorAll('script[src]'), (s) => [s.getAttribute('src'), s.type])")
    assert tags == [["/web/vendor/plotly.min.js", ""], ["/web/main.js", "module"]]
    tabs = (("losses", "loss-plot", 2), ("optimizers", "landscape-plot", 3), ("expressions", "hessian-plot", 1))
    for tab, plot, at_least in tabs:
        page.get_by_test_id(f"tab-{tab}").click()
        wait_for_plot(page, plot, at_least)
    assert page.url.endswith("#expressions")

    assert sorted(scripts) == sorted([*(f"{name}.js" for name in MODULES), "vendor/plotly.min.js"])
    for name, content_type in scripts.items():
        assert content_type.split(";")[0].strip() in JAVASCRIPT, name
    assert page.evaluate("window.__violations") == []
    session.assert_clean()

    # The listener does catch a violation: an inline script is refused by the page's policy.
    page.evaluate(
        "() => { const s = document.createElement('script');"
        " s.textContent = 'window.__ran = 1'; document.head.append(s); }"
    )
    assert "script-src-elem inline" in wait_until(page, "window.__violations.join('; ')")
    assert page.evaluate("window.__ran === undefined")


def test_activations_tab_draws_derivatives_and_params(session: Session) -> None:
    page = session.page
    session.open("activations")
    wait_for_plot(page, "activation-plot", 3)
    page.get_by_test_id("activation-select").select_option("leaky_relu")
    slope = page.get_by_test_id("param-negative_slope")
    expect(slope).to_have_value("0.01")
    slope.fill("0.2")
    # f' of leaky_relu is the slope left of 0 and 1 right of it; f'' is 0.
    wait_until(page, "document.querySelector('[data-testid=activation-plot]').data[1].y[0] === 0.2")
    grad = trace_field(page, "activation-plot", 1, "y")
    assert grad[0] == pytest.approx(0.2) and grad[-1] == pytest.approx(1.0)
    assert set(trace_field(page, "activation-plot", 2, "y")) == {0}

    page.get_by_test_id("activation-select").select_option("softmax")
    expect(page.get_by_test_id("activation-jacobian")).to_be_visible()
    wait_for_plot(page, "activation-jacobian", 1)
    assert traces(page, "activation-plot") == 2  # f and the VJP: no second derivative for softmax
    wait_until(page, "document.querySelector('[data-testid=activation-jacobian]').data[0].type === 'heatmap'")
    session.assert_clean()


def test_losses_tab_sweeps_a_prediction_against_a_target(session: Session) -> None:
    page = session.page
    session.open("losses")
    wait_for_plot(page, "loss-plot", 2)
    page.get_by_test_id("loss-select").select_option("mse")
    set_range(page, "loss-target", 1.5)
    expect(page.get_by_test_id("loss-target-value")).to_have_text("1.5")
    wait_until(page, "document.querySelector('[data-testid=loss-plot]').layout.title.text === 'mse, target 1.5'")
    xs = trace_field(page, "loss-plot", 0, "x")
    loss = trace_field(page, "loss-plot", 0, "y")
    grad = trace_field(page, "loss-plot", 1, "y")
    for x, value, slope in list(zip(xs, loss, grad, strict=True))[::40]:
        assert value == pytest.approx((x - 1.5) ** 2, rel=1e-4, abs=1e-5)
        assert slope == pytest.approx(2 * (x - 1.5), rel=1e-4, abs=1e-5)

    page.get_by_test_id("loss-select").select_option("cross_entropy")
    expect(page.get_by_test_id("loss-others")).to_be_visible()
    # loss, then its gradient w.r.t. the swept logit and each of the two others
    wait_until(page, "(document.querySelector('[data-testid=loss-plot]').data || []).length === 4")
    session.assert_clean()


def test_expressions_tab_shows_value_gradient_and_hessian(session: Session) -> None:
    page = session.page
    session.open("expressions")
    result = page.get_by_test_id("expression-result")
    expect(result).to_contain_text("Hessian")
    wait_for_plot(page, "hessian-plot", 1)
    page.get_by_test_id("expression-input").fill("sum(x ** 3)")
    page.get_by_test_id("expression-inputs").fill('{"x": [1.0, 2.0]}')
    page.get_by_test_id("differentiate").click()
    expect(result).to_contain_text("9")  # value 1 + 8; gradient 3x^2 = [3, 12]; Hessian diag(6x) = [6, 12]
    expect(result.locator(".tensor").nth(1)).to_have_text(re.compile(r"3\s*12"))
    z = page.evaluate("document.querySelector('[data-testid=hessian-plot]').data[0].z")
    assert z == [[6, 0], [0, 12]]

    page.get_by_test_id("expression-input").fill("x +")
    page.get_by_test_id("differentiate").click()
    error = page.get_by_test_id("expression-error")
    expect(error).to_be_visible()
    expect(error).to_contain_text("invalid_expression")
    session.assert_clean(allowed_statuses=(400,))


def numbers(text: str) -> list[float]:
    """The numbers in a text the page shows (fmt writes 1,234 without commas, 1.5e-7 in ASCII)."""
    return [float(v) for v in re.findall(r"-?\d+(?:\.\d+)?(?:e[-+]?\d+)?", text.replace(",", ""))]


def shown(page: Page, testid: str) -> list[float]:
    """The numbers shown by the element with this data-testid ([] while there is none)."""
    script = "(id) => { const n = document.querySelector(`[data-testid=${id}]`); return n ? n.innerText : ''; }"
    return numbers(page.evaluate(script, testid))


def wait_shown(page: Page, testid: str, expected: list[float], timeout_s: float = TIMEOUT_MS / 1000) -> None:
    """Poll until the element with this data-testid shows ``expected`` (to the 7 digits the page writes)."""
    deadline = time.monotonic() + timeout_s
    while (values := shown(page, testid)) != pytest.approx(expected, rel=1e-6, abs=1e-12):
        assert time.monotonic() < deadline, f"{testid} shows {values}, not {expected}"
        time.sleep(0.1)


def arrows(page: Page) -> dict[str, list[float]]:
    """The direction plot's arrows (traces tagged with ``meta``): name -> [dx, dy] as drawn."""
    script = (
        "Object.fromEntries(document.querySelector('[data-testid=direction-plot]').data.filter((t) => t.meta)"
        ".map((t) => [t.meta, [t.x[1] - t.x[0], t.y[1] - t.y[0]]]))"
    )
    drawn: dict[str, list[float]] = page.evaluate(script)
    return drawn


def parallel(drawn: Sequence[float], expected: Sequence[float]) -> bool:
    """``drawn`` points the way ``expected`` does (arrows are drawn rescaled)."""
    cross = drawn[0] * expected[1] - drawn[1] * expected[0]
    dot = drawn[0] * expected[0] + drawn[1] * expected[1]
    return abs(cross) <= 1e-6 * math.hypot(*drawn) * math.hypot(*expected) and dot > 0


def test_expressions_tab_shows_jvp_and_hvp_along_a_chosen_direction(session: Session) -> None:
    page = session.page
    sent: list[dict[str, Any]] = []

    def record(request: Request) -> None:
        if request.url.endswith("/v1/differentiate") and (body := request.post_data_json) is not None:
            sent.append(body)

    page.on("request", record)

    def answer(body: dict[str, Any]) -> dict[str, Any]:
        """What the API answers to ``body``, asked again from here."""
        response = httpx.post(f"{session.base}/v1/differentiate", json=body)
        assert response.status_code == 200, response.text
        result: dict[str, Any] = response.json()
        return result

    def last(dry_run: bool) -> dict[str, Any]:
        """The last request the tab made for its results (not the landscape's batch) or its dry run."""
        return [b for b in sent if "batch" not in b and bool(b.get("dry_run")) == dry_run][-1]

    session.open("expressions")
    # Himmelblau at its minimum (3, 2) along u = (1, 0): jvp = ∇f·u = 0, hvp = H u = H's first column.
    expect(page.get_by_test_id("direction-u0")).to_have_value("1")
    expect(page.get_by_test_id("direction-u1")).to_have_value("0")
    wait_shown(page, "hvp-result-x", [74, 20])
    wait_shown(page, "jvp-result", [0])
    wait_for_plot(page, "direction-plot", 4)  # landscape, u, H·u, the point
    kinds = page.evaluate("document.querySelector('[data-testid=direction-plot]').data.map((t) => t.type)")
    assert kinds[0] == "contour"
    drawn = arrows(page)
    assert sorted(drawn) == ["hvp", "u"]  # no gradient arrow: ∇f = 0 at a minimum
    assert parallel(drawn["u"], (1, 0)) and parallel(drawn["hvp"], (74, 20))
    title = page.evaluate("document.querySelector('[data-testid=direction-plot]').layout.title.text")
    assert "∇f·u = 0" in title and "H·u = (74, 20)" in title

    # The cost readout is the dry run's estimate for this very request.
    dry = last(dry_run=True)
    assert dry["tangents"] == {"x": [1, 0]} and set(dry["derivatives"]) >= {"jvp", "hvp"}
    cost = answer(dry)["cost"]
    readout = page.get_by_test_id("expression-cost")
    expect(readout).to_be_visible()
    assert readout.get_attribute("data-flops") == str(cost["flops"])
    assert readout.get_attribute("data-bytes") == str(cost["bytes"])
    assert shown(page, "cost-flops") == [cost["flops"]] and shown(page, "cost-bytes")[0] == cost["bytes"]

    # The angle: 90° is u = (0, 1), H's second column.
    set_range(page, "direction-angle", 90)
    expect(page.get_by_test_id("direction-angle-value")).to_have_text("90°")
    expect(page.get_by_test_id("direction-u0")).to_have_value("0")
    expect(page.get_by_test_id("direction-u1")).to_have_value("1")
    wait_shown(page, "hvp-result-x", [20, 34])
    wait_shown(page, "jvp-result", [0])

    # Typed components: u = (1, 2) is at 63.43°, and H u = (74 + 40, 20 + 68).
    page.get_by_test_id("direction-u0").fill("1")
    page.get_by_test_id("direction-u1").fill("2")
    expect(page.get_by_test_id("direction-angle-value")).to_have_text("63.43°")
    wait_shown(page, "hvp-result-x", [114, 88])
    assert last(dry_run=False)["tangents"] == {"x": [1, 2]}

    # Rosenbrock's valley at (-1, 1), where ∇f = (-4, 0) and H = [[802, 400], [400, 200]].
    page.get_by_test_id("expression-example").select_option("1")
    expect(page.get_by_test_id("direction-u0")).to_have_value("1")  # a new point: u starts along x₀ again
    wait_shown(page, "jvp-result", [-4])
    wait_shown(page, "hvp-result-x", [802, 400])
    wait_until(page, "document.querySelector('[data-testid=direction-plot]').data.some((t) => t.meta === 'grad')")
    assert parallel(arrows(page)["grad"], (-4, 0))

    # A click on the landscape points u from the point towards it: here down and to the left.
    layout = page.evaluate("document.querySelector('[data-testid=direction-plot]').layout")
    (x_lo, x_hi), (y_lo, y_hi) = layout["xaxis"]["range"], layout["yaxis"]["range"]
    area = page.get_by_test_id("direction-plot").locator(".nsewdrag").first
    area.scroll_into_view_if_needed()  # the plot is below the results
    box = area.bounding_box()
    assert box is not None
    target = (-1.5, 0.5)  # from (-1, 1): the direction (-1, -1)
    at = (
        box["x"] + (target[0] - x_lo) / (x_hi - x_lo) * box["width"],
        box["y"] + (y_hi - target[1]) / (y_hi - y_lo) * box["height"],
    )
    page.mouse.move(*at)  # plotly reports a click where it has seen the mouse hover
    page.wait_for_timeout(200)
    page.mouse.click(*at)
    expect(page.get_by_test_id("direction-u0")).to_have_value(re.compile(r"^-0\.7"))
    u = tuple(float(page.get_by_test_id(f"direction-u{k}").input_value()) for k in (0, 1))
    assert u[0] == pytest.approx(-math.sqrt(0.5), abs=0.02) and u[1] == pytest.approx(-math.sqrt(0.5), abs=0.02)
    assert math.hypot(*u) == pytest.approx(1, rel=1e-5)  # a unit vector, to the 6 decimals shown
    # Wait for the answer for that u, then check every number shown against the API's answer.
    wait_shown(page, "direction-u", list(u))
    body = last(dry_run=False)
    assert body["tangents"] == {"x": list(u)}
    api = answer(body)
    assert shown(page, "jvp-result") == pytest.approx([api["jvp"]], rel=1e-6)
    assert shown(page, "hvp-result-x") == pytest.approx(api["hvp"]["x"], rel=1e-6)
    # ...and against the analytic values: ∇f·u = -4 u₀, H u = (802 u₀ + 400 u₁, 400 u₀ + 200 u₁).
    assert api["jvp"] == pytest.approx(-4 * u[0], rel=1e-5)
    assert api["hvp"]["x"] == pytest.approx([802 * u[0] + 400 * u[1], 400 * u[0] + 200 * u[1]], rel=1e-5)
    drawn = arrows(page)
    assert parallel(drawn["u"], u) and parallel(drawn["hvp"], tuple(api["hvp"]["x"]))

    # Errors: the page's own (no number for u₀), then the API's (an hvp of a value that is not a scalar).
    error = page.get_by_test_id("expression-error")
    page.get_by_test_id("direction-u0").fill("")
    expect(error).to_have_text("u₀ must be a number.")
    page.get_by_test_id("direction-u0").fill("1")
    page.get_by_test_id("direction-u1").fill("0")
    expect(error).to_be_hidden()
    page.get_by_test_id("expression-input").fill("2 * x")
    page.get_by_test_id("differentiate").click()
    expect(error).to_contain_text("not_scalar")
    expect(error).to_contain_text("HTTP 400")
    page.get_by_test_id("want-hvp").uncheck()
    page.locator("#want-hessian").uncheck()
    page.get_by_test_id("differentiate").click()
    expect(error).to_be_hidden()
    wait_shown(page, "jvp-result", [2, 0])  # d(2x) along u = (1, 0)
    expect(page.get_by_test_id("hvp-result-x")).to_have_count(0)
    session.assert_clean(allowed_statuses=(400,))


def test_optimizer_tab_streams_trajectories_from_clicked_starts(session: Session, tmp_path: Path) -> None:
    page = session.page
    session.open("optimizers")
    wait_for_plot(page, "landscape-plot", 3)  # contour, known minima, starts
    kinds = page.evaluate("document.querySelector('[data-testid=landscape-plot]').data.map(t => t.type)")
    assert kinds[0] == "contour"
    webgl = page.evaluate("!!document.createElement('canvas').getContext('webgl')")
    if webgl:
        wait_for_plot(page, "surface-plot", 1)
        assert page.evaluate("document.querySelector('[data-testid=surface-plot]').data[0].type") == "surface"

    page.get_by_test_id("clear-starts").click()
    expect(page.get_by_test_id("start-count")).to_have_text("0")
    area = page.get_by_test_id("landscape-plot").locator(".nsewdrag").first
    box = area.bounding_box()
    assert box is not None
    for fx, fy in ((0.2, 0.25), (0.8, 0.3), (0.3, 0.8)):
        page.mouse.click(box["x"] + fx * box["width"], box["y"] + fy * box["height"])
    expect(page.get_by_test_id("start-count")).to_have_text("3")
    # The first click, a fifth of the way across [-6, 6] and a quarter down: about (-3.6, 3).
    first = page.get_by_test_id("start").first.inner_text()
    x0, y0 = (float(v) for v in re.findall(r"-?\d+(?:\.\d+)?", first)[:2])
    assert x0 == pytest.approx(-3.6, abs=0.3) and y0 == pytest.approx(3.0, abs=0.3)

    page.get_by_test_id("use-sgd").check()
    page.get_by_test_id("opt-steps").fill("1500")
    page.get_by_test_id("opt-record").fill("25")
    streams: list[Response] = []
    page.on("response", lambda response: streams.append(response) if response.url.endswith("/v1/optimize") else None)
    page.get_by_test_id("run-optimizer").click()

    count = page.get_by_test_id("trajectory-count")
    expect(count).to_have_text(re.compile(r"^[1-9]\d*$"))  # trajectories appear...
    status = page.get_by_test_id("run-status")
    expect(status).to_have_attribute("data-state", "done", timeout=120_000)  # ...and the run ends
    expect(count).to_have_text("6")  # 3 starts x (adam, sgd)

    # They came over the event stream: progress events, points drawn from them, then the result.
    assert len(streams) == 1
    assert streams[0].request.headers["accept"] == "text/event-stream"
    assert streams[0].headers["content-type"].startswith("text/event-stream")
    assert int(status.get_attribute("data-progress-events") or 0) > 0
    assert int(status.get_attribute("data-live-points") or 0) > 0
    expect(page.get_by_test_id("run-results").locator("tbody tr")).to_have_count(6)
    lines = page.evaluate(
        "document.querySelector('[data-testid=landscape-plot]').data.filter(t => t.mode === 'lines+markers').length"
    )
    assert lines == 6

    page.wait_for_timeout(300)  # the last redraw
    shot = tmp_path / "playground.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    if target := os.environ.get("GRADIENT_SCREENSHOT_DIR"):
        Path(target).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(target) / "playground.png"), full_page=True)
    session.assert_clean()


def test_optimizer_tab_shows_api_and_input_errors(session: Session) -> None:
    page = session.page
    session.open("optimizers")
    wait_for_plot(page, "landscape-plot", 3)
    page.get_by_test_id("clear-starts").click()
    page.get_by_test_id("run-optimizer").click()
    error = page.get_by_test_id("optimizer-error")
    expect(error).to_contain_text("Add a start")

    page.get_by_test_id("objective-select").select_option("__custom__")
    page.get_by_test_id("objective-expression").fill("sum(x ** 2) +")
    expect(error).to_contain_text("invalid_expression")
    page.get_by_test_id("objective-expression").fill("sum((x - 1) ** 2)")
    expect(error).to_be_hidden()
    page.get_by_test_id("random-starts").click()
    expect(page.get_by_test_id("start-count")).to_have_text("4")
    session.assert_clean(allowed_statuses=(400,))
