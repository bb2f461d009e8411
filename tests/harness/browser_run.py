#!/usr/bin/env python3
"""Run a workflow through the real ComfyUI web frontend in headless Chromium.

    browser_run.py WORKFLOW.json [--server URL] [--screenshot F.png] [--timeout S]
                   [--save-ui FILE] [--save-api FILE] [--chromium PATH] [--fresh]

Loads the workflow into the page (UI format with app.loadGraphData, API format with app.loadApiJson),
queues it with app.queuePrompt (the Run button's code path), waits for it in /history, reports what the
frontend shows (missing node types, validation and execution errors, dialogs, toasts) and saves a
screenshot. --save-ui / --save-api write the graph as the frontend itself serializes and converts it.
Needs /usr/bin/chromium and playwright (install_browser.sh).
Exit status: 0 ok, 1 execution error or timeout, 2 invalid workflow or missing nodes, 3 setup problem.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

try:
    from . import server  # imported as harness.browser_run
except ImportError:
    import server  # run as a script: this folder is sys.path[0]

log = logging.getLogger("browser_run")

CHROMIUM_FLAGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync",
]  # fmt: skip
# Dialogs and toasts the user would see right now.
VISIBLE_MESSAGES_JS = """() => [...document.querySelectorAll('.p-dialog, .p-toast-message')]
    .filter(e => e.offsetParent !== null || getComputedStyle(e).position === 'fixed')
    .map(e => e.innerText.replace(/\\s+/g, ' ').trim()).filter(Boolean)"""


def node_types(workflow: dict) -> tuple[set[str], set[str]]:
    """(types used, types the frontend handles itself) of a UI- or API-format workflow."""
    if "nodes" not in workflow:
        return {n.get("class_type") for n in workflow.values()}, set()
    subgraphs = (workflow.get("definitions") or {}).get("subgraphs") or []
    used = {n.get("type") for n in workflow["nodes"] + [n for sg in subgraphs for n in sg.get("nodes", [])]}
    return used, set(server.UI_ONLY_NODES) | {sg.get("id") for sg in subgraphs}


def load_into_page(page, workflow: dict, tries: int) -> bool:
    """Load the graph; the page replaces it with its own default graph once after start-up, so retry."""
    is_ui = "nodes" in workflow
    want = len(workflow["nodes"]) if is_ui else len(workflow)
    for _ in range(tries):
        if is_ui:
            page.evaluate("wf => window.app.loadGraphData(wf)", workflow)
        else:
            page.evaluate("wf => window.app.loadApiJson(wf, 'workflow')", workflow)
        page.wait_for_timeout(1000)
        if page.evaluate("() => window.app.graph.nodes.length") == want:
            return True
    return False


def queue_and_wait(page, url: str, timeout_s: float) -> int:
    with page.expect_response(lambda r: r.url.endswith("/prompt") and r.request.method == "POST") as resp:
        page.evaluate("() => window.app.queuePrompt(0, 1)")
    body = resp.value.json()
    if resp.value.status != 200 or body.get("node_errors"):
        for problem in server.validation_problems(body):
            log.error("VALIDATION FAILED: %s", problem)
        return 2
    t0 = time.monotonic()
    try:
        entry = server.wait_for_prompt(url, body["prompt_id"], timeout_s)
    except TimeoutError as e:
        log.error("TIMEOUT: %s", e)
        return 1
    problem = server.execution_error(entry)
    if problem:
        log.error("EXECUTION FAILED: %s", problem)
        return 1
    names = ", ".join(r["filename"] for r in server.output_files(entry)) or "none"
    log.info("OK: prompt %s done in %.2fs; outputs: %s", body["prompt_id"], time.monotonic() - t0, names)
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("workflow", type=Path)
    ap.add_argument("--server", default="http://127.0.0.1:8188")
    ap.add_argument("--screenshot", type=Path, default=Path("comfyui.png"))
    ap.add_argument("--timeout", type=float, default=600)
    ap.add_argument("--save-ui", type=Path)
    ap.add_argument("--save-api", type=Path)
    ap.add_argument("--chromium", default="/usr/bin/chromium")
    ap.add_argument("--fresh", action="store_true", help="unload models and drop the node cache first")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    from playwright.sync_api import sync_playwright

    url = a.server.rstrip("/")
    workflow = json.loads(a.workflow.read_text())
    try:
        known = set(server.get_json(url, "/object_info"))
        # No first-run template browser over the canvas; node text drawn at every zoom for the screenshot.
        server.post_json(url, "/settings/Comfy.TutorialCompleted", True)
        server.post_json(url, "/settings/LiteGraph.Canvas.MinFontSizeForLOD", 0)
        if a.fresh:
            server.free_models(url)
    except OSError as e:
        log.error("SERVER UNREACHABLE at %s: %s", url, e)
        return 3
    used, frontend_only = node_types(workflow)
    missing = sorted(used - known - frontend_only)

    rc, console_errors = 0, []
    with sync_playwright() as pw, tempfile.TemporaryDirectory() as profile:
        ctx = pw.chromium.launch_persistent_context(
            profile, executable_path=a.chromium, headless=True, args=CHROMIUM_FLAGS,
            viewport={"width": 1600, "height": 1000},
        )  # fmt: skip
        page = ctx.new_page()
        page.on("console", lambda m: console_errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: console_errors.append(str(e)))
        page.goto(url, wait_until="networkidle")
        page.wait_for_function(
            "() => window.app && window.app.graph && window.app.vueAppReady", timeout=90000
        )
        # loadApiJson cannot place unknown node types, so one try is all it gets then.
        loaded = load_into_page(page, workflow, 1 if missing and "nodes" not in workflow else 5)
        if not loaded and not missing:
            log.error("could not load the whole workflow into the page")
            ctx.close()
            return 3
        if missing:
            log.error("MISSING NODE TYPES (not registered on the server): %s", ", ".join(missing))
            rc = 2
        for msg in page.evaluate(VISIBLE_MESSAGES_JS):
            log.info("frontend says (after load): %s", msg[:500])
        # Serialized inside the page: Playwright would turn JS undefined into null, which the schema rejects.
        if a.save_ui:
            a.save_ui.write_text(page.evaluate("() => JSON.stringify(window.app.graph.serialize(), null, 2)"))
        if a.save_api:
            a.save_api.write_text(
                page.evaluate(
                    "async () => JSON.stringify((await window.app.graphToPrompt()).output, null, 2)"
                )
            )
        if rc == 0:
            rc = queue_and_wait(page, url, a.timeout)
            page.wait_for_timeout(1500)  # previews and error outlines are drawn after the prompt ends
        for msg in page.evaluate(VISIBLE_MESSAGES_JS):
            log.info("frontend says: %s", msg[:500])
        page.keyboard.press("Escape")
        page.evaluate(
            """() => { window.app.canvas.deselectAll?.();
                       return window.app.extensionManager.command.execute('Comfy.Canvas.FitView') }"""
        )
        page.wait_for_timeout(500)
        page.screenshot(path=str(a.screenshot))
        ctx.close()
    if console_errors:
        log.info("(%d browser console errors; first: %s)", len(console_errors), console_errors[0][:200])
    log.info("screenshot: %s", a.screenshot)
    return rc


if __name__ == "__main__":
    sys.exit(main())
