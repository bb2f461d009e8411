"""Drive the real ComfyUI frontend in headless Chromium (playwright), for tests and for building workflows/.

    with open_frontend(url) as ui:
        ui.load(workflow)                 # UI format (loadGraphData) or API format (loadApiJson)
        saved = ui.export_workflow()      # the file the frontend's own Export command downloads
        status, body = ui.queue()         # app.queuePrompt, the Run button's code path

Built on tests/harness/browser_run.py (same Chromium flags and graph loading). Needs Debian's chromium and
playwright (tests/harness/install_browser.sh); `browser_missing()` says what is absent.

The frontend tests run once per entry of FRONTENDS: the frontend ComfyUI 0.3.75 bundles, and the newest one
(tests/harness/requirements-frontend.txt, installed by install_frontend.sh, served with --front-end-root)::

    @pytest.fixture(scope="module", params=FRONTENDS)
    def server(request, ...):
        with comfy_server(..., frontend=frontend_or_skip_version(request.param)) as url: ...
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from harness import server
from harness.browser_run import CHROMIUM_FLAGS, VISIBLE_MESSAGES_JS, load_into_page

CHROMIUM = "/usr/bin/chromium"
# The frontend ComfyUI 0.3.75 ships (its requirements pin comfyui-frontend-package 1.32.9), then the newest.
BUNDLED = "bundled"
FRONTENDS = (BUNDLED, server.pinned_frontend())
# First-run template browser off, node text drawn at every zoom, Export without a file-name dialog.
SETTINGS = {
    "Comfy.TutorialCompleted": True,
    "LiteGraph.Canvas.MinFontSizeForLOD": 0,
    "Comfy.PromptFilename": False,
}


def browser_missing() -> str | None:
    """Why the browser tests cannot run here, or None."""
    if not Path(CHROMIUM).is_file() and not shutil.which("chromium"):
        return "Chromium is not installed: run tests/harness/install_browser.sh (or `make browser`)"
    if importlib.util.find_spec("playwright") is None:
        return "playwright is not installed: run tests/harness/install_browser.sh (or `make browser`)"
    return None


def _skip_or_fail(reason: str) -> None:
    """Skip, or fail under FLASH_VAED_REQUIRE_COMFY=1, as every test that needs the real ComfyUI does."""
    import pytest

    if os.environ.get("FLASH_VAED_REQUIRE_COMFY", "") not in ("", "0"):
        pytest.fail(f"{reason} (FLASH_VAED_REQUIRE_COMFY is set, so this is a failure)", pytrace=False)
    pytest.skip(reason)


def frontend_or_skip_version(name: str) -> str | None:
    """The ``frontend=`` argument of ``comfy_server`` for an entry of FRONTENDS (None: the bundled one);
    skips the test when that frontend is not installed."""
    if name == BUNDLED:
        return None
    try:
        server.frontend_root(name)
    except FileNotFoundError as e:
        _skip_or_fail(str(e))
    return name


def expected_version(name: str, comfy_root: Path) -> str:
    """The version string the page should report for an entry of FRONTENDS."""
    if name != BUNDLED:
        return name
    for line in (comfy_root / "requirements.txt").read_text().splitlines():
        if line.startswith("comfyui-frontend-package=="):
            return line.split("==", 1)[1].strip()
    raise ValueError(f"{comfy_root}/requirements.txt pins no comfyui-frontend-package")


# What frontends write differently for one graph: node sizes (each grows a node to the minimum its own fonts
# and widgets need), the derived execution `order`, and 1.58's `widgets_values_named` (see named_value_problems).
_NODE_LAYOUT_KEYS = frozenset({"size", "order", "widgets_values_named"})
_GROUP_DEFAULT_FONT_SIZE = 24  # 1.32 writes it, 1.58 leaves the default out


def workflow_meaning(workflow: dict) -> dict:
    """A saved UI-format workflow without what frontends write differently for the same graph, so that two
    exports can be compared on what they mean (nodes, links, groups, widget values, subgraphs).

    Left out: the workflow's ``id`` and ``extra`` (view, frontend version), each node's ``size``, ``order`` and
    ``widgets_values_named``, an empty ``widgets_values`` (1.58 writes none), a group's default ``font_size``.
    Everything else is kept as saved, so a change a frontend makes to the graph itself still shows.
    """

    def node(n: dict) -> dict:
        kept = {k: v for k, v in n.items() if k not in _NODE_LAYOUT_KEYS}
        if kept.get("widgets_values") == []:
            del kept["widgets_values"]
        return kept

    def group(g: dict) -> dict:
        return {k: v for k, v in g.items() if not (k == "font_size" and v == _GROUP_DEFAULT_FONT_SIZE)}

    def graph(g: dict, drop: tuple[str, ...] = ()) -> dict:
        kept = {k: v for k, v in g.items() if k not in drop}
        kept["nodes"] = sorted((node(n) for n in g.get("nodes", [])), key=lambda n: str(n["id"]))
        kept["groups"] = [group(x) for x in g.get("groups", [])]
        return kept

    meaning = graph(workflow, drop=("id", "extra", "definitions"))
    subgraphs = (workflow.get("definitions") or {}).get("subgraphs") or []  # their ids are node types: kept
    meaning["subgraphs"] = sorted((graph(sg) for sg in subgraphs), key=lambda sg: str(sg.get("id")))
    return meaning


def named_value_problems(workflow: dict) -> list[str]:
    """Nodes whose ``widgets_values_named`` (written by 1.58) disagree with their ``widgets_values``."""
    nodes = list(workflow.get("nodes", [])) + [
        n for sg in (workflow.get("definitions") or {}).get("subgraphs") or [] for n in sg.get("nodes", [])
    ]
    return [
        f"node {n['id']} ({n['type']}): {n['widgets_values_named']} vs {n.get('widgets_values')}"
        for n in nodes
        if "widgets_values_named" in n
        and list(n["widgets_values_named"].values()) != n.get("widgets_values", [])
    ]


@dataclass
class Frontend:
    """One page of the ComfyUI frontend; ``console_errors`` collects console errors and page exceptions."""

    page: object
    url: str
    console_errors: list[str] = field(default_factory=list)

    def js(self, expression: str, arg: object = None) -> object:
        return self.page.evaluate(expression, arg)

    @property
    def version(self) -> str:
        """The version of the frontend this page runs (what the About panel shows)."""
        return self.js("() => window.__COMFYUI_FRONTEND_VERSION__")

    def load(self, workflow: dict, tries: int = 5) -> None:
        if not load_into_page(self.page, workflow, tries):
            raise AssertionError(f"the frontend did not load the whole workflow; it says {self.messages()}")

    def messages(self) -> list[str]:
        """Dialogs and toasts visible now (missing nodes, errors)."""
        return self.js(VISIBLE_MESSAGES_JS)

    def export_workflow(self) -> dict:
        """What Workflow > Export saves: the real command, its download read back."""
        with self.page.expect_download() as download:
            self.js("() => window.app.extensionManager.command.execute('Comfy.ExportWorkflow')")
        return json.loads(Path(download.value.path()).read_text())

    def api_prompt(self) -> dict:
        """The API-format prompt the frontend would queue for the current graph."""
        return json.loads(self.js("async () => JSON.stringify((await window.app.graphToPrompt()).output)"))

    def queue(self) -> tuple[int, dict]:
        """Queue the graph as the Run button does; (HTTP status, body) of the POST /prompt it sends."""
        with self.page.expect_response(
            lambda r: r.url.endswith("/prompt") and r.request.method == "POST"
        ) as r:
            self.js("() => window.app.queuePrompt(0, 1)")
        return r.value.status, r.value.json()

    def run(self, timeout_s: float = 300) -> dict:
        """Queue, wait for the prompt to end, let the UI handle its messages; the /history entry."""
        status, body = self.queue()
        if status != 200 or body.get("node_errors"):
            raise server.InvalidWorkflow(server.validation_problems(body))
        entry = server.wait_for_prompt(self.url, body["prompt_id"], timeout_s)
        problem = server.execution_error(entry)
        if problem:
            raise server.PromptFailed(problem, entry)
        self.page.wait_for_timeout(500)  # the websocket "executed" messages reach the nodes
        return entry

    def show_node(self, node_id: int, at: tuple[float, float] = (400, 300)) -> None:
        """Zoom 1:1 with the node's top-left corner at page position ``at``, clear of menus and panels."""
        self.page.keyboard.press("Escape")
        self.js(
            """([id, [x, y]]) => { const c = window.app.canvas; const n = window.app.graph.getNodeById(id);
                c.ds.scale = 1; c.ds.offset[0] = x - n.pos[0]; c.ds.offset[1] = y - n.pos[1];
                c.setDirty(true, true); }""",
            [node_id, list(at)],
        )
        self.page.wait_for_timeout(200)

    def tooltip_at(self, graph_xy: tuple[float, float], timeout_ms: float = 3000) -> str:
        """Rest the mouse on the canvas at graph coordinates, as a user does, and return the node tooltip the
        frontend then shows ("" when none appears)."""
        from playwright.sync_api import TimeoutError as PlaywrightTimeout

        x, y = self.js(_TO_PAGE_JS, list(graph_xy))
        self.page.mouse.move(x + 3, y + 3)  # a move hides the last tooltip and restarts the hover delay
        self.page.mouse.move(x, y)
        try:
            self.page.wait_for_function(f"() => ({_TOOLTIP_JS})() !== ''", timeout=timeout_ms)
        except PlaywrightTimeout:
            return ""
        return self.js(_TOOLTIP_JS)

    def fit_view(self) -> None:
        self.page.keyboard.press("Escape")
        self.js(
            """() => { window.app.canvas.deselectAll?.();
                       return window.app.extensionManager.command.execute('Comfy.Canvas.FitView') }"""
        )
        self.page.wait_for_timeout(300)


# Graph coordinates -> page coordinates of the canvas (litegraph's convertOffsetToCanvas maps graph to canvas).
_TO_PAGE_JS = """([x, y]) => { const c = window.app.canvas; const r = c.canvas.getBoundingClientRect();
    const [cx, cy] = c.ds.convertOffsetToCanvas([x, y]); return [r.left + cx, r.top + cy]; }"""
_TOOLTIP_JS = "() => [...document.querySelectorAll('.node-tooltip')].map(e => e.innerText.trim()).join('')"


def _located(message) -> str:
    url = (message.location or {}).get("url")
    return f"{message.text} (at {url})" if url else message.text


@contextlib.contextmanager
def frontend_or_skip(url: str) -> Iterator[Frontend]:
    """`open_frontend`, or skip the test when Chromium/playwright are missing (a failure under
    FLASH_VAED_REQUIRE_COMFY=1, as for every test that needs the real ComfyUI)."""
    reason = browser_missing()
    if reason:
        _skip_or_fail(reason)
    with open_frontend(url) as frontend:
        yield frontend


@contextlib.contextmanager
def open_frontend(url: str, viewport: tuple[int, int] = (1600, 1000)) -> Iterator[Frontend]:
    """A fresh Chromium profile on ``url`` with the app ready (extensions registered, graph shown)."""
    from playwright.sync_api import sync_playwright

    for key, value in SETTINGS.items():
        server.post_json(url, f"/settings/{key}", value)
    executable = CHROMIUM if Path(CHROMIUM).is_file() else shutil.which("chromium")
    with sync_playwright() as pw, tempfile.TemporaryDirectory() as profile:
        ctx = pw.chromium.launch_persistent_context(
            profile, executable_path=executable, headless=True, args=CHROMIUM_FLAGS,
            viewport={"width": viewport[0], "height": viewport[1]}, accept_downloads=True,
        )  # fmt: skip
        try:
            page = ctx.new_page()
            ui = Frontend(page, url.rstrip("/"))
            page.on("console", lambda m: ui.console_errors.append(_located(m)) if m.type == "error" else None)
            page.on("pageerror", lambda e: ui.console_errors.append(str(e)))
            page.goto(url, wait_until="networkidle")
            page.wait_for_function(
                "() => window.app && window.app.graph && window.app.vueAppReady", timeout=90000
            )
            yield ui
        finally:
            ctx.close()
