"""Drive the real ComfyUI frontend in headless Chromium (playwright), for tests and for building workflows/.

    with open_frontend(url) as ui:
        ui.load(workflow)                 # UI format (loadGraphData) or API format (loadApiJson)
        saved = ui.export_workflow()      # the file the frontend's own Export command downloads
        status, body = ui.queue()         # app.queuePrompt, the Run button's code path

Built on tests/harness/browser_run.py (same Chromium flags and graph loading). Needs Debian's chromium and
playwright (tests/harness/install_browser.sh); `browser_missing()` says what is absent.
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


@dataclass
class Frontend:
    """One page of the ComfyUI frontend; ``console_errors`` collects console errors and page exceptions."""

    page: object
    url: str
    console_errors: list[str] = field(default_factory=list)

    def js(self, expression: str, arg: object = None) -> object:
        return self.page.evaluate(expression, arg)

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

    def fit_view(self) -> None:
        self.page.keyboard.press("Escape")
        self.js(
            """() => { window.app.canvas.deselectAll?.();
                       return window.app.extensionManager.command.execute('Comfy.Canvas.FitView') }"""
        )
        self.page.wait_for_timeout(300)


def _located(message) -> str:
    url = (message.location or {}).get("url")
    return f"{message.text} (at {url})" if url else message.text


@contextlib.contextmanager
def frontend_or_skip(url: str) -> Iterator[Frontend]:
    """`open_frontend`, or skip the test when Chromium/playwright are missing (a failure under
    FLASH_VAED_REQUIRE_COMFY=1, as for every test that needs the real ComfyUI)."""
    import pytest

    reason = browser_missing()
    if reason:
        if os.environ.get("FLASH_VAED_REQUIRE_COMFY", "") not in ("", "0"):
            pytest.fail(f"{reason} (FLASH_VAED_REQUIRE_COMFY is set, so this is a failure)", pytrace=False)
        pytest.skip(reason)
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
