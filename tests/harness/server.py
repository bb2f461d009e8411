"""Start a real ComfyUI server for tests and talk to it over HTTP and the websocket.

From pytest::

    from harness.server import comfy_server, run_prompt, listen

    with comfy_server(nodes=[REPO_ROOT], models_dir=tmp_models_dir) as url:
        with listen(url) as ws:
            entry = run_prompt(url, prompt, client_id=ws.client_id)
        progress = [m for m in ws.messages if m["type"] == "progress"]

From a shell (``serve.sh`` is a thin wrapper around this)::

    python tests/harness/server.py start --run-dir RUN [--port 8188] [--models DIR] [--node PACK]... [-- ARGS]
    python tests/harness/server.py stop RUN|PID

A run directory is ComfyUI's ``--base-directory``: it holds ``custom_nodes/`` (one link per node pack),
``models`` (a link to the models folder, so a VAE goes in ``MODELS/vae/``), ``input/``, ``output/``,
``temp/``, ``user/`` (with the SQLite database) and ``comfyui.log``. The ComfyUI install itself is only
read, so several servers can share it. ``frontend="1.58.1"`` serves that frontend (installed by
``install_frontend.sh``) with ``--front-end-root`` instead of the one ComfyUI bundles. Only the standard library is used, plus aiohttp (a ComfyUI
dependency) for the websocket and comfyui-autograph for UI-format workflows.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_COMFY_DIR = REPO_ROOT / ".cache" / "comfyui"
# Offline and quiet: no paid API nodes (this also makes the server send a CSP that blocks the frontend's
# one call out), no browser launch, no latent previews.
COMFY_FLAGS = ("--cpu", "--disable-api-nodes", "--disable-auto-launch", "--preview-method", "none")
OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "DO_NOT_TRACK": "1",
}
UI_ONLY_NODES = frozenset({"Note", "MarkdownNote", "Reroute", "PrimitiveNode"})
# The newest frontend, pinned (version and hash) for install_frontend.sh, which puts it in a folder of its own.
FRONTEND_REQUIREMENT = Path(__file__).with_name("requirements-frontend.txt")


class ServerError(RuntimeError):
    """The server did not come up (the message ends with its log)."""


class InvalidWorkflow(RuntimeError):
    """Conversion or validation failed before anything ran; ``problems`` lists each one."""

    def __init__(self, problems: list[str]):
        super().__init__("invalid workflow:\n  " + "\n  ".join(problems))
        self.problems = problems


class PromptFailed(RuntimeError):
    """The prompt ran and failed (or was interrupted); ``entry`` is its /history record."""

    def __init__(self, message: str, entry: dict):
        super().__init__(message)
        self.entry = entry


def comfy_root(explicit: str | os.PathLike | None = None) -> Path:
    """The ComfyUI that the tests, the harness and bench/ use: ``explicit``, else ``$FLASH_VAED_COMFYUI``,
    else ``<repo>/.cache/comfyui`` (where install.sh puts it)."""
    chosen = explicit or os.environ.get("FLASH_VAED_COMFYUI")
    return Path(chosen).expanduser().resolve() if chosen else DEFAULT_COMFY_DIR


def comfy_installed(root: Path | None = None) -> bool:
    root = root or comfy_root()
    return (root / "main.py").is_file() and (root / "comfy" / "sd.py").is_file()


def pinned_frontend() -> str:
    """The version of comfyui-frontend-package that requirements-frontend.txt pins (the newest tested)."""
    for line in FRONTEND_REQUIREMENT.read_text().splitlines():
        if line.startswith("comfyui-frontend-package=="):
            return line.split("==", 1)[1].split()[0]
    raise ValueError(f"{FRONTEND_REQUIREMENT} pins no comfyui-frontend-package version")


def frontends_dir() -> Path:
    """Where install_frontend.sh puts extra frontends: ``$FLASH_VAED_FRONTENDS``, else ``<repo>/.cache/frontends``."""
    env = os.environ.get("FLASH_VAED_FRONTENDS")
    return Path(env).expanduser().resolve() if env else REPO_ROOT / ".cache" / "frontends"


def frontend_root(version: str) -> Path:
    """The static folder of an installed frontend ``version``, for ``--front-end-root``."""
    static = frontends_dir() / version / "comfyui_frontend_package" / "static"
    if not (static / "index.html").is_file():
        raise FileNotFoundError(
            f"frontend {version} is not installed in {static.parents[1]}: run tests/harness/install_frontend.sh "
            "(or `make install-test`)"
        )
    return static


def comfy_env() -> dict[str, str]:
    """Environment for any ComfyUI process: offline, and without PYTHONPATH, which could put our
    repository (whose nodes/ shadows ComfyUI's nodes.py) first on its path."""
    return {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | OFFLINE_ENV


# --- process -------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def prepare_run_dir(run_dir: Path, nodes: Iterable[Path] = (), models_dir: Path | None = None) -> Path:
    """Make ``run_dir`` a base directory with each node pack linked into custom_nodes/ and models/ linked."""
    run_dir = Path(run_dir).resolve()
    for sub in ("custom_nodes", "input", "output", "temp", "user"):
        (run_dir / sub).mkdir(parents=True, exist_ok=True)
    custom = run_dir / "custom_nodes"
    for old in custom.iterdir():  # links from an earlier start
        if old.is_symlink():
            old.unlink()
    for pack in nodes:
        pack = Path(pack).resolve()
        if not pack.exists():
            raise FileNotFoundError(f"node pack {pack} does not exist (a directory or a single .py file)")
        (custom / pack.name).symlink_to(pack, target_is_directory=pack.is_dir())
    models = run_dir / "models"
    if models_dir is None:
        models.mkdir(exist_ok=True)
    else:
        if models.exists() and not models.is_symlink():
            raise FileExistsError(f"{models} exists and is not a link; cannot link {models_dir} there")
        models.unlink(missing_ok=True)
        models.symlink_to(Path(models_dir).resolve(), target_is_directory=True)
    return run_dir


def launch(
    root: Path,
    run_dir: Path,
    port: int,
    extra_args: Iterable[str] = (),
    python: str | None = None,
) -> subprocess.Popen:
    """Start ``main.py`` in its own session (so a Ctrl-C in the caller's terminal does not reach it)."""
    if not (Path(root) / "main.py").is_file():
        raise ServerError(f"no ComfyUI at {root}: run tests/harness/install.sh or set FLASH_VAED_COMFYUI")
    cmd = [
        python or sys.executable, "main.py", *COMFY_FLAGS, "--listen", "127.0.0.1", "--port", str(port),
        "--base-directory", str(run_dir), "--database-url", f"sqlite:///{run_dir}/user/comfyui.db",
        *extra_args,
    ]  # fmt: skip
    with open(run_dir / "comfyui.log", "wb") as logfile:
        proc = subprocess.Popen(
            cmd, cwd=root, env=comfy_env(), stdin=subprocess.DEVNULL, stdout=logfile,
            stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    (run_dir / "comfyui.pid").write_text(f"{proc.pid}\n")
    return proc


def log_tail(run_dir: Path, lines: int = 40) -> str:
    path = Path(run_dir) / "comfyui.log"
    if not path.exists():
        return "(no log)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def wait_ready(url: str, proc: subprocess.Popen, run_dir: Path, timeout_s: float = 180) -> float:
    """Wait until ``/object_info`` answers; returns the seconds it took. Raises ServerError if it dies."""
    t0 = time.monotonic()
    while True:
        if proc.poll() is not None:
            raise ServerError(f"ComfyUI exited with {proc.returncode} during startup:\n{log_tail(run_dir)}")
        try:
            get_json(url, "/object_info", timeout_s=60)
            return time.monotonic() - t0
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        if time.monotonic() - t0 > timeout_s:
            raise ServerError(f"ComfyUI not ready after {timeout_s}s:\n{log_tail(run_dir)}")
        time.sleep(0.3)


def _is_comfy(pid: int) -> bool:
    """Alive and a ComfyUI main.py with a base directory: never signal a reused, unrelated PID."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return b"main.py" in cmdline and b"--base-directory" in cmdline and "State:\tZ" not in status


def stop(target: subprocess.Popen | int, grace_s: float = 20) -> None:
    """SIGTERM, then SIGKILL after ``grace_s``; returns once the process is gone."""
    if isinstance(target, subprocess.Popen):
        if target.poll() is None:
            target.terminate()
            try:
                target.wait(grace_s)
            except subprocess.TimeoutExpired:
                target.kill()
                target.wait()
        return
    if not _is_comfy(target):
        return
    os.kill(target, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while _is_comfy(target) and time.monotonic() < deadline:
        time.sleep(0.25)
    if _is_comfy(target):
        os.kill(target, signal.SIGKILL)


def start(
    root: Path | None = None,
    *,
    run_dir: Path,
    nodes: Iterable[Path] = (),
    models_dir: Path | None = None,
    extra_args: Iterable[str] = (),
    port: int | None = None,
    timeout_s: float = 180,
    python: str | None = None,
    frontend: str | None = None,
) -> tuple[str, subprocess.Popen]:
    """Start a server and wait until it answers; returns (url, process). Caller stops it with ``stop``.

    frontend: a version installed by install_frontend.sh, served instead of ComfyUI's bundled frontend.
    """
    root = Path(root or comfy_root()).resolve()
    if frontend is not None:
        extra_args = ["--front-end-root", str(frontend_root(frontend)), *extra_args]
    run_dir = prepare_run_dir(run_dir, nodes, models_dir)
    for _attempt in range(3 if port is None else 1):
        chosen = port or free_port()
        url = f"http://127.0.0.1:{chosen}"
        proc = launch(root, run_dir, chosen, extra_args, python)
        try:
            seconds = wait_ready(url, proc, run_dir, timeout_s)
        except ServerError:
            stop(proc)
            # free_port() can race with another process taking the port before ComfyUI binds it.
            if port is None and "address already in use" in log_tail(run_dir).lower():
                continue
            raise
        log.info("ComfyUI ready at %s after %.1fs (log %s)", url, seconds, run_dir / "comfyui.log")
        return url, proc
    raise ServerError(f"no free port found:\n{log_tail(run_dir)}")


@contextlib.contextmanager
def comfy_server(
    root: Path | None = None,
    *,
    nodes: Iterable[Path] = (),
    models_dir: Path | None = None,
    run_dir: Path | None = None,
    extra_args: Iterable[str] = (),
    timeout_s: float = 180,
    frontend: str | None = None,
) -> Iterator[str]:
    """A running ComfyUI on a free 127.0.0.1 port with ``nodes`` linked in; yields its URL, then stops it.

    run_dir: kept if given (its ``comfyui.log`` then outlives the server), else a temp dir removed at exit.
    frontend: an installed frontend version to serve instead of the bundled one (see ``start``).
    """
    owned = run_dir is None
    run_dir = Path(tempfile.mkdtemp(prefix="flash-vaed-comfy-")) if owned else Path(run_dir)
    proc = None
    try:
        url, proc = start(
            root,
            run_dir=run_dir,
            nodes=nodes,
            models_dir=models_dir,
            extra_args=extra_args,
            timeout_s=timeout_s,
            frontend=frontend,
        )
        yield url
    finally:
        if proc is not None:
            stop(proc)
        if owned:
            shutil.rmtree(run_dir, ignore_errors=True)


# --- HTTP ----------------------------------------------------------------------------------------------


def _request(url: str, path: str, body: object = None, timeout_s: float = 60) -> object:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(
        url.rstrip("/") + path, data=data, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=timeout_s) as resp:
        raw = resp.read()
    return json.loads(raw) if raw else None


def get_json(url: str, path: str, timeout_s: float = 60) -> object:
    return _request(url, path, None, timeout_s)


def post_json(url: str, path: str, body: object, timeout_s: float = 60) -> object:
    return _request(url, path, body, timeout_s)


def free_models(url: str) -> None:
    """Unload models and drop the node cache, so the next prompt executes every node again."""
    post_json(url, "/free", {"unload_models": True, "free_memory": True})
    time.sleep(0.5)  # /free is applied when the worker thread next wakes up; let it before queueing


def to_api_prompt(workflow: Mapping, url: str) -> dict:
    """API-format prompt for an API- or UI-format workflow (UI format converted against the server).

    Raises InvalidWorkflow on conversion problems or node types the server does not know.
    """
    if isinstance(workflow.get("prompt"), dict):  # a saved /prompt request body
        workflow = workflow["prompt"]
    if "nodes" not in workflow:
        if workflow and all(isinstance(v, dict) and "class_type" in v for v in workflow.values()):
            return dict(workflow)
        raise InvalidWorkflow(["neither API format (id -> class_type/inputs) nor UI format (nodes/links)"])
    from autograph.convert import convert_workflow_with_errors  # pip: comfyui-autograph

    object_info = get_json(url, "/object_info")
    res = convert_workflow_with_errors(dict(workflow), node_info=object_info, disable_AUTOGRAPH_meta=True)
    problems = [f"node {e.node_id}: {e.message}" for e in res.errors]
    subgraphs = (workflow.get("definitions") or {}).get("subgraphs") or []
    known = set(object_info) | UI_ONLY_NODES | {sg.get("id") for sg in subgraphs}
    every_node = list(workflow["nodes"]) + [n for sg in subgraphs for n in sg.get("nodes", [])]
    # autograph silently drops node types it cannot resolve; muted (2) and bypassed (4) ones do not matter.
    missing = sorted({n.get("type") for n in every_node if n.get("mode", 0) not in (2, 4)} - known)
    problems += [f"node type not known to the server (missing custom node?): {t}" for t in missing]
    if problems or not res.success or not res.data:
        raise InvalidWorkflow(problems or ["conversion produced no nodes"])
    return res.data


def queue_prompt(url: str, prompt: Mapping, client_id: str | None = None) -> str:
    """POST /prompt; returns the prompt id. Raises InvalidWorkflow with the server's node_errors on a 400."""
    try:
        body = post_json(url, "/prompt", {"prompt": prompt, "client_id": client_id or uuid.uuid4().hex})
    except urllib.error.HTTPError as e:
        if e.code != 400:
            raise
        raise InvalidWorkflow(validation_problems(json.loads(e.read() or b"{}"))) from None
    return body["prompt_id"]


def validation_problems(body: Mapping) -> list[str]:
    err = body.get("error") or {}
    problems = [f"{err.get('message', '')} {err.get('details', '')}".strip()]
    for node_id, ne in (body.get("node_errors") or {}).items():
        for e in ne.get("errors", []):
            name = (e.get("extra_info") or {}).get("input_name", "")
            problems.append(
                f"node {node_id} ({ne.get('class_type')}) {name}: {e.get('message')}: {e.get('details')}"
            )
    return problems


def wait_for_prompt(url: str, prompt_id: str, timeout_s: float = 300) -> dict:
    """Poll /history until the prompt ends; returns its entry (success or error). Interrupts on timeout."""
    deadline = time.monotonic() + timeout_s
    while True:
        entry = get_json(url, f"/history/{prompt_id}").get(prompt_id)
        if entry and entry.get("status", {}).get("status_str") in ("success", "error"):
            return entry
        if time.monotonic() > deadline:
            post_json(url, "/interrupt", {})
            raise TimeoutError(f"prompt {prompt_id} not finished after {timeout_s}s; interrupted it")
        time.sleep(0.2)


def execution_error(entry: Mapping) -> str | None:
    """A readable account of a failed /history entry, or None when it succeeded."""
    status = entry.get("status", {})
    if status.get("status_str") == "success":
        return None
    lines = []
    for kind, msg in status.get("messages", []):
        if kind in ("execution_error", "execution_interrupted"):
            lines.append(
                f"{kind} at node {msg.get('node_id')} ({msg.get('node_type')}): "
                f"{msg.get('exception_type', '')}: {msg.get('exception_message', '')}"
            )
            lines.append("".join((msg.get("traceback") or [])[-6:]).rstrip())
    return "\n".join(lines) or f"prompt ended with status {status.get('status_str')!r}"


def run_prompt(url: str, prompt: Mapping, *, client_id: str | None = None, timeout_s: float = 300) -> dict:
    """Queue ``prompt`` (API or UI format), wait, return its /history entry; raise PromptFailed on error."""
    api = to_api_prompt(prompt, url)
    entry = wait_for_prompt(url, queue_prompt(url, api, client_id), timeout_s)
    problem = execution_error(entry)
    if problem:
        raise PromptFailed(problem, entry)
    return entry


def output_files(entry: Mapping) -> list[dict]:
    """File records ({filename, subfolder, type}) of every output in a /history entry."""
    return [
        rec
        for out in entry.get("outputs", {}).values()
        for value in out.values()
        if isinstance(value, list)
        for rec in value
        if isinstance(rec, dict) and "filename" in rec
    ]


def download(url: str, record: Mapping, dest_dir: Path) -> Path:
    """Fetch one output file through /view into ``dest_dir``."""
    query = urllib.parse.urlencode({k: record.get(k, "") for k in ("filename", "subfolder", "type")})
    dest = Path(dest_dir) / record["filename"]
    dest.parent.mkdir(parents=True, exist_ok=True)
    with urllib.request.urlopen(f"{url.rstrip('/')}/view?{query}", timeout=60) as resp:
        dest.write_bytes(resp.read())
    return dest


# --- websocket -----------------------------------------------------------------------------------------


@dataclass
class Listener:
    """JSON messages the server sent to one client id, collected by a background thread.

    Binary frames (previews) are counted in ``binary_frames`` but not kept.
    """

    client_id: str
    messages: list[dict] = field(default_factory=list)
    binary_frames: int = 0
    _changed: threading.Condition = field(default_factory=threading.Condition, repr=False)

    def _add(self, message: dict) -> None:
        with self._changed:
            self.messages.append(message)
            self._changed.notify_all()

    def wait_for(self, predicate: Callable[[dict], bool], timeout_s: float = 300) -> dict:
        """The first message (already received or still to come) for which ``predicate`` is true."""
        deadline = time.monotonic() + timeout_s
        seen = 0
        with self._changed:
            while True:
                for message in self.messages[seen:]:
                    if predicate(message):
                        return message
                seen = len(self.messages)
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"no matching websocket message within {timeout_s}s")
                self._changed.wait(left)

    def wait_done(self, prompt_id: str, timeout_s: float = 300) -> dict:
        """The message ending ``prompt_id``: execution_success, execution_error or execution_interrupted."""
        ends = ("execution_success", "execution_error", "execution_interrupted")
        return self.wait_for(
            lambda m: m.get("type") in ends and m.get("data", {}).get("prompt_id") == prompt_id, timeout_s
        )

    def of_type(self, kind: str) -> list[dict]:
        with self._changed:
            return [m["data"] for m in self.messages if m.get("type") == kind]


@contextlib.contextmanager
def listen(url: str, client_id: str | None = None, connect_timeout_s: float = 30) -> Iterator[Listener]:
    """Connect to ``/ws`` before queueing (so no message is missed) and collect until the block ends.

    Queue prompts with ``client_id=listener.client_id``: the server sends execution messages only there.
    """
    import aiohttp  # a ComfyUI dependency, imported here so the rest works without it

    listener = Listener(client_id or uuid.uuid4().hex)
    ws_url = url.replace("http://", "ws://", 1).rstrip("/") + f"/ws?clientId={listener.client_id}"
    connected = threading.Event()
    failure: list[BaseException] = []
    loop = asyncio.new_event_loop()
    stopping = loop.create_future()

    async def receive() -> None:
        async with aiohttp.ClientSession() as session, session.ws_connect(ws_url) as ws:
            connected.set()
            reader = asyncio.ensure_future(_pump(ws, listener))
            await asyncio.wait([reader, stopping], return_when=asyncio.FIRST_COMPLETED)
            reader.cancel()

    def thread_main() -> None:
        try:
            loop.run_until_complete(receive())
        except BaseException as e:  # handed to the caller below
            failure.append(e)
            connected.set()
        finally:
            loop.close()

    thread = threading.Thread(target=thread_main, name="comfy-ws", daemon=True)
    thread.start()
    if not connected.wait(connect_timeout_s) or failure:
        raise ServerError(f"websocket {ws_url} did not connect: {failure[0] if failure else 'timeout'}")
    # The server greets every new socket with a "status" message; once it is here, the socket is registered.
    listener.wait_for(lambda m: m.get("type") == "status", connect_timeout_s)
    try:
        yield listener
    finally:
        if not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop may close between the check and the call
                loop.call_soon_threadsafe(lambda: stopping.done() or stopping.set_result(None))
        thread.join(10)


async def _pump(ws, listener: Listener) -> None:
    import aiohttp

    async for msg in ws:
        if msg.type == aiohttp.WSMsgType.TEXT:
            listener._add(json.loads(msg.data))
        elif msg.type == aiohttp.WSMsgType.BINARY:
            listener.binary_frames += 1
        else:
            break


# --- command line (serve.sh) -----------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Start or stop a ComfyUI test server (see module docstring).")
    sub = ap.add_subparsers(dest="cmd", required=True)
    st = sub.add_parser("start", help="start detached; prints the PID once /object_info answers")
    st.add_argument("--comfy", type=Path, help="ComfyUI root (default $FLASH_VAED_COMFYUI or .cache/comfyui)")
    st.add_argument("--run-dir", type=Path, required=True)
    st.add_argument("--port", type=int, default=8188)
    st.add_argument("--models", type=Path, help="models folder, linked as RUN/models")
    st.add_argument("--node", type=Path, action="append", default=[], help="a node pack to link (repeatable)")
    st.add_argument("--timeout", type=float, default=180)
    st.add_argument(
        "--frontend", help=f"serve this installed frontend (install_frontend.sh), e.g. {pinned_frontend()}"
    )
    st.add_argument("extra", nargs=argparse.REMAINDER, help="after --: more main.py arguments")
    sp = sub.add_parser("stop", help="SIGTERM (SIGKILL after 20 s) the server of RUN_DIR or PID")
    sp.add_argument("target")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)

    if a.cmd == "stop":
        pid_file = Path(a.target) / "comfyui.pid"
        is_dir = Path(a.target).is_dir()
        pid = int(pid_file.read_text()) if is_dir else int(a.target)
        stop(pid)
        if is_dir:
            pid_file.unlink(missing_ok=True)
        log.info("stopped %s", pid)
        return 0
    extra = a.extra[1:] if a.extra[:1] == ["--"] else a.extra
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{a.port}/", timeout=2)
        log.error("something already answers on port %s", a.port)
        return 1
    except OSError:
        pass
    try:
        _url, proc = start(
            a.comfy, run_dir=a.run_dir, nodes=a.node, models_dir=a.models, extra_args=extra, port=a.port,
            timeout_s=a.timeout, frontend=a.frontend,
        )  # fmt: skip
    except (ServerError, OSError) as e:
        log.error("%s", e)
        return 1
    failed = [
        ln
        for ln in (a.run_dir / "comfyui.log").read_text(errors="replace").splitlines()
        if "IMPORT FAILED" in ln
    ]
    for line in failed:
        log.warning("%s", line.strip())
    sys.stdout.write(f"{proc.pid}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
