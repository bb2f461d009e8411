"""The official Flash-VAED checkpoints on the Hugging Face Hub, and a download that never leaves half a file.

    from flash_vaed.hub import OFFICIAL, fetch_official
    path = fetch_official("Flash_VAED_Wan.pth", "models/flash_vaed")   # no-op when the file is there

huggingface_hub resolves the URL, the token-free headers and the file's size and sha256 (one HEAD request);
the bytes are streamed into a temp file in the destination folder, checked, then moved into place with
`os.replace`. Offline (``HF_HUB_OFFLINE=1``) or on any network error the call raises `HubDownloadError`,
whose message gives the manual step: the URL and the exact path to put the file at.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import tempfile
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .checkpoint.io import safe_child
from .errors import CheckpointError, FlashVAEDError
from .spec import Family

log = logging.getLogger(__name__)

ProgressFn = Callable[[int, int], None]  # (bytes done, bytes total; 0 when unknown)

HF_ENDPOINT = "https://huggingface.co"
_CHUNK_BYTES = 1 << 20
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class HubDownloadError(FlashVAEDError, OSError):
    """An official checkpoint could not be fetched; the message says how to get it by hand."""


@dataclass(frozen=True)
class OfficialCheckpoint:
    """One released Flash-VAED decoder: its file name in a models folder and where it lives on the Hub."""

    name: str
    repo_id: str
    path_in_repo: str
    family: Family
    revision: str = "main"

    def url(self, endpoint: str | None = None) -> str:
        return f"{(endpoint or HF_ENDPOINT).rstrip('/')}/{self.repo_id}/resolve/{self.revision}/{self.path_in_repo}"


OFFICIAL: dict[str, OfficialCheckpoint] = {
    c.name: c
    for c in (
        OfficialCheckpoint(
            "Flash_VAED_Wan.pth", "Aoko955/Flash-VAED", "models/wan/Flash_VAED_Wan.pth", Family.WAN21
        ),
        OfficialCheckpoint(
            "Flash_VAED_LTX.pth", "Aoko955/Flash-VAED", "models/ltx/Flash_VAED_LTX.pth", Family.LTXV
        ),
    )
}


def manual_step(ckpt: OfficialCheckpoint, dest: Path) -> str:
    """What a user types or clicks to get `ckpt` without us."""
    return (
        f"Download it by hand from {ckpt.url()} (or run `huggingface-cli download {ckpt.repo_id} "
        f"{ckpt.path_in_repo} --local-dir <tmp>`) and put the file at {dest}"
    )


def _offline() -> bool:
    from huggingface_hub import constants

    env = os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in ("1", "ON", "YES", "TRUE")
    return env or bool(constants.HF_HUB_OFFLINE)


def fetch_official(
    name: str,
    dest_dir: str | os.PathLike,
    on_progress: ProgressFn | None = None,
    *,
    endpoint: str | None = None,
    timeout_s: float = 30,
    replace: bool = False,
) -> Path:
    """Path of the official checkpoint `name` in `dest_dir`, downloading it first if it is missing.

    on_progress(done_bytes, total_bytes) is called after every chunk; raise from it to stop (the partial
    file is removed). endpoint: another Hub URL (a mirror, or a local fake in tests). replace: download
    even when the file is there (it is replaced only once the new one has passed the size and sha256 checks).
    Raises HubDownloadError (offline, network, size or checksum mismatch) with the manual step.
    """
    try:
        ckpt = OFFICIAL[name]
    except KeyError:
        raise ValueError(
            f"{name!r} is not an official Flash-VAED checkpoint; known: {', '.join(OFFICIAL)}"
        ) from None
    dest_dir = Path(dest_dir)
    dest = safe_child(dest_dir, name)
    if dest.is_file() and dest.stat().st_size > 0 and not replace:
        return dest
    if _offline():
        raise HubDownloadError(
            f"{name} is not in {dest.parent} and Hugging Face downloads are off (HF_HUB_OFFLINE "
            f"is set). {manual_step(ckpt, dest)}."
        )
    from huggingface_hub import get_hf_file_metadata

    url = ckpt.url(endpoint)
    try:
        # token=False: a public repo; never send a saved token to the CDN the file redirects to
        meta = get_hf_file_metadata(url, token=False, timeout=timeout_s, endpoint=endpoint)
    except Exception as err:  # requests/httpx/hub errors differ by huggingface_hub version
        raise HubDownloadError(
            f"could not reach {url} ({type(err).__name__}: {str(err)[:200]}). {manual_step(ckpt, dest)}."
        ) from err
    dest_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".part", dir=dest_dir)
    try:
        with os.fdopen(fd, "wb") as out:
            digest = _stream(meta.location or url, out, meta.size, on_progress, timeout_s)
        _check(tmp, meta.size, meta.etag, digest, url)
        os.replace(tmp, dest)
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(err, HubDownloadError):
            raise HubDownloadError(f"{err} {manual_step(ckpt, dest)}.") from err
        if isinstance(err, (OSError, ValueError)):
            raise HubDownloadError(
                f"download of {url} failed ({type(err).__name__}: {str(err)[:200]}); nothing "
                f"was left in {dest_dir}. {manual_step(ckpt, dest)}."
            ) from err
        raise
    log.info("downloaded %s (%.1f MB) to %s", name, dest.stat().st_size / 2**20, dest)
    return dest


def recheck_official(
    name: str,
    dest_dir: str | os.PathLike,
    problem: str,
    on_progress: ProgressFn | None = None,
    *,
    endpoint: str | None = None,
    timeout_s: float = 30,
) -> Path:
    """The official checkpoint `name` in `dest_dir` is there but does not load (`problem`: the loader's
    message). Compare it with the Hub's size and sha256: a file that differs (an interrupted copy, a
    damaged disk) is replaced by a fresh, checked download, whose path is returned. When the Hub cannot be
    asked, or the file matches it, raise CheckpointError giving the path and what to do."""
    ckpt = OFFICIAL[name]
    dest = safe_child(dest_dir, name)
    todo = f"Delete {dest} and Load Flash-VAED downloads it again on its next run. Or: {manual_step(ckpt, dest)}."
    damaged = f"{dest} is there but does not load ({problem.strip()[:300]})"
    if _offline():
        raise CheckpointError(
            f"{damaged}. It cannot be compared with the Hub's copy while Hugging Face downloads are off "
            f"(HF_HUB_OFFLINE is set). {todo}"
        )
    from huggingface_hub import get_hf_file_metadata

    try:
        meta = get_hf_file_metadata(ckpt.url(endpoint), token=False, timeout=timeout_s, endpoint=endpoint)
    except Exception as err:  # requests/httpx/hub errors differ by huggingface_hub version
        raise CheckpointError(
            f"{damaged}. The Hub could not be asked for its size and sha256 ({type(err).__name__}). {todo}"
        ) from err
    size = dest.stat().st_size
    sha = meta.etag if meta.etag and _SHA256.match(meta.etag) else None
    if size == meta.size and (sha is None or _sha256(dest) == sha):
        raise CheckpointError(
            f"{damaged}, yet it matches the Hub's copy ({size} bytes{', same sha256' if sha else ''}): this "
            "library cannot read the published file. Update the pack, or report it."
        )
    log.warning(
        "%s differs from the Hub's copy (%d bytes, the Hub's %s): downloading it again", dest, size, meta.size
    )
    return fetch_official(name, dest_dir, on_progress, endpoint=endpoint, timeout_s=timeout_s, replace=True)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def _stream(url: str, out, size: int | None, on_progress: ProgressFn | None, timeout_s: float) -> str:
    """GET url into `out`; returns the sha256 of what was written."""
    req = urllib.request.Request(url, headers={"User-Agent": "flash-vaed", "Accept-Encoding": "identity"})
    digest = hashlib.sha256()
    done = 0
    with urllib.request.urlopen(req, timeout=timeout_s) as resp:
        total = size or int(resp.headers.get("Content-Length") or 0)
        while chunk := resp.read(_CHUNK_BYTES):
            out.write(chunk)
            digest.update(chunk)
            done += len(chunk)
            if on_progress is not None:
                on_progress(done, total)
    return digest.hexdigest()


def _check(path: str, size: int | None, etag: str | None, sha256: str, url: str) -> None:
    got = Path(path).stat().st_size
    if size is not None and got != size:
        raise HubDownloadError(f"{url}: got {got} bytes, the Hub announced {size} (connection cut?).")
    # LFS files carry their sha256 as the etag; git-stored files carry a git hash we do not check
    if etag and _SHA256.match(etag) and etag != sha256:
        raise HubDownloadError(
            f"{url}: sha256 {sha256} does not match the Hub's {etag}; the file is damaged."
        )
