#!/usr/bin/env python3
"""Run one workflow file on a running ComfyUI and say how it went.

    run_workflow.py WORKFLOW.json [--server URL] [--timeout S] [--download DIR] [--save-api FILE] [--fresh]

WORKFLOW.json is API format (what "Export (API)" saves) or UI format (what the frontend saves; converted
with comfyui-autograph against the server's own /object_info). Prints each output file as
``<type>/<subfolder>/<name>``.
Exit status: 0 success, 1 execution error or timeout, 2 invalid workflow (conversion, unknown node types,
validation errors), 3 server unreachable.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
import urllib.error
from pathlib import Path

try:
    from . import server  # imported as harness.run_workflow
except ImportError:
    import server  # run as a script: this folder is sys.path[0]

log = logging.getLogger("run_workflow")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("workflow", type=Path)
    ap.add_argument("--server", default="http://127.0.0.1:8188")
    ap.add_argument("--timeout", type=float, default=600, help="seconds to wait for the prompt")
    ap.add_argument("--download", type=Path, metavar="DIR", help="fetch every output file into DIR")
    ap.add_argument("--save-api", type=Path, metavar="FILE", help="write the API-format prompt sent")
    ap.add_argument("--fresh", action="store_true", help="unload models and drop the node cache first")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    url = a.server.rstrip("/")
    workflow = json.loads(a.workflow.read_text())
    try:
        prompt = server.to_api_prompt(workflow, url)
        if a.save_api:
            a.save_api.write_text(json.dumps(prompt, indent=2))
        if a.fresh:
            server.free_models(url)
        t0 = time.monotonic()
        prompt_id = server.queue_prompt(url, prompt)
        log.info("queued prompt %s", prompt_id)
        entry = server.wait_for_prompt(url, prompt_id, a.timeout)
    except server.InvalidWorkflow as e:
        for problem in e.problems:
            log.error("INVALID WORKFLOW: %s", problem)
        return 2
    except TimeoutError as e:
        log.error("TIMEOUT: %s", e)
        return 1
    except urllib.error.URLError as e:
        log.error("SERVER UNREACHABLE at %s: %s", url, e)
        return 3
    problem = server.execution_error(entry)
    if problem:
        log.error("EXECUTION FAILED: %s", problem)
        return 1
    records = server.output_files(entry)
    for rec in records:
        where = "/".join(p for p in (rec.get("type", "output"), rec.get("subfolder"), rec["filename"]) if p)
        sys.stdout.write(where + "\n")
        if a.download:
            server.download(url, rec, a.download)
    log.info(
        "OK: prompt %s finished in %.2fs, %d output file(s)", prompt_id, time.monotonic() - t0, len(records)
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
