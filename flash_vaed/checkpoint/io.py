"""File access: lazy safetensors reads, pickle-safe .pth reads, atomic writes, contained paths.

Nothing here executes code from a file: .pth/.pt/.ckpt go through torch.load(weights_only=True), and a
pickle that asks for anything but tensors and plain containers is refused with a clear error.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import pickle
import tempfile
import zipfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from ..errors import CheckpointError, FlashVAEDError

log = logging.getLogger(__name__)

PICKLE_SUFFIXES = (".pth", ".pt", ".ckpt", ".bin")
MAX_CONFIG_BYTES = 1 << 20  # a diffusers config.json is about 1 KB
TENSOR_SUFFIXES = (".safetensors", *PICKLE_SUFFIXES)


class TensorSource:
    """The tensors of one checkpoint, by name, read only when asked for.

    keys / shapes are known without reading data (safetensors header or an already-loaded dict), so
    detection never loads a multi-GB all-in-one file; `load(names)` reads just those tensors.
    """

    def __init__(
        self,
        shapes: Mapping[str, tuple[int, ...]],
        loader: Callable[[Iterable[str]], dict[str, torch.Tensor]],
        metadata: Mapping[str, str] | None = None,
        origin: str = "state dict",
    ):
        self.shapes = dict(shapes)
        self._loader = loader
        self.metadata = dict(metadata or {})
        self.origin = origin

    def keys(self) -> set[str]:
        return set(self.shapes)

    def __contains__(self, key: str) -> bool:
        return key in self.shapes

    def load(self, names: Iterable[str]) -> dict[str, torch.Tensor]:
        return self._loader(list(names))

    def with_prefix_stripped(self, prefix: str) -> TensorSource:
        """Only the keys under `prefix` (e.g. 'vae.' in all-in-one LTX checkpoints), renamed without it."""
        inner = {k[len(prefix) :]: v for k, v in self.shapes.items() if k.startswith(prefix)}

        def load(names: Iterable[str]) -> dict[str, torch.Tensor]:
            got = self._loader([prefix + n for n in names])
            return {k[len(prefix) :]: v for k, v in got.items()}

        return TensorSource(inner, load, self.metadata, f"{self.origin} (keys under '{prefix}')")

    def renamed(self, mapping: Mapping[str, str]) -> TensorSource:
        """A view whose keys are mapping[old] for every mapped old key; unmapped keys are dropped."""
        inverse = {new: old for old, new in mapping.items()}
        shapes = {new: self.shapes[old] for old, new in mapping.items() if old in self.shapes}

        def load(names: Iterable[str]) -> dict[str, torch.Tensor]:
            got = self._loader([inverse[n] for n in names])
            return {mapping[k]: v for k, v in got.items()}

        return TensorSource(shapes, load, self.metadata, self.origin)


def from_state_dict(
    sd: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None
) -> TensorSource:
    tensors = {k: v for k, v in sd.items() if isinstance(v, torch.Tensor)}
    return TensorSource(
        {k: tuple(v.shape) for k, v in tensors.items()},
        lambda names: {n: tensors[n] for n in names},
        metadata,
    )


def _open_safetensors(path: Path) -> TensorSource:
    try:
        with safe_open(str(path), framework="pt") as f:
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
            metadata = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(
            f"{path.name}: not a readable safetensors file ({err}). The download may be incomplete or the "
            "file corrupt: download it again."
        ) from err

    def load(names: Iterable[str]) -> dict[str, torch.Tensor]:
        try:
            with safe_open(str(path), framework="pt") as f:
                return {n: f.get_tensor(n) for n in names}
        except (SafetensorError, OSError, ValueError) as err:
            raise CheckpointError(
                f"{path.name}: could not read tensors ({err}); the file is damaged: download it again."
            ) from err

    return TensorSource(shapes, load, metadata, path.name)


def _unwrap(obj: object, path: Path) -> dict[str, torch.Tensor]:
    # ComfyUI accepts {'state_dict': {...}} and a single-entry {'name': {...}}; so do we
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    if isinstance(obj, Mapping) and len(obj) == 1:
        (only,) = obj.values()
        if isinstance(only, Mapping):
            obj = only
    if not isinstance(obj, Mapping) or not any(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(
            f"{path.name}: holds no tensors by name (found {type(obj).__name__}); "
            "it is not a model checkpoint."
        )
    return dict(obj)


def _open_pickle(path: Path) -> TensorSource:
    try:
        if path.suffix == ".safetensors":  # torch.load would pass a path so named to safetensors
            with open(path, "rb") as f:
                obj = torch.load(f, map_location="cpu", weights_only=True)
        else:
            obj = torch.load(str(path), map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except pickle.UnpicklingError as err:
        raise CheckpointError(
            f"{path.name}: refused to unpickle it, because it asks to run code or build objects other than "
            f"tensors ({str(err).splitlines()[0][:200]}). Nothing from it was executed. Use a .safetensors "
            "version of this checkpoint, or re-save it as a plain state dict of tensors."
        ) from err
    except Exception as err:  # a damaged pickle fails in many ways (KeyError, IndexError, EOFError, ...)
        raise CheckpointError(
            f"{path.name}: not a readable PyTorch checkpoint ({str(err).splitlines()[0][:200]}). The file may "
            "be truncated or corrupt: download it again."
        ) from err
    sd = _unwrap(obj, path)
    source = from_state_dict(sd)
    source.origin = path.name
    return source


def _open_diffusers_folder(path: Path) -> TensorSource:
    folder = path / "vae" if (path / "vae").is_dir() else path
    candidates = sorted(folder.glob("diffusion_pytorch_model*.safetensors")) or sorted(
        folder.glob("*.safetensors")
    )
    if not candidates:
        candidates = sorted(folder.glob("diffusion_pytorch_model*.bin"))
    if not candidates:
        raise CheckpointError(
            f"{path}: a folder without VAE weights (looked for "
            "diffusion_pytorch_model*.safetensors in it and in vae/)."
        )
    sources = [open_tensors(c) for c in candidates]
    shapes: dict[str, tuple[int, ...]] = {}
    owner: dict[str, TensorSource] = {}
    for s in sources:
        shapes.update(s.shapes)
        owner.update({k: s for k in s.shapes})
    metadata: dict[str, str] = {}
    config = folder / "config.json"
    if config.is_file():
        size = config.stat().st_size
        if size <= MAX_CONFIG_BYTES:
            metadata["diffusers_config"] = config.read_text(errors="replace")
        else:  # nothing needs it to decode: a huge or wrong file there is noted, not read into memory
            log.warning("%s: %d bytes is no VAE config (they are ~1 KB); not read", config, size)

    def load(names: Iterable[str]) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        for n in names:
            out.update(owner[n].load([n]))
        return out

    return TensorSource(shapes, load, metadata, f"{path.name}/ (diffusers)")


def open_tensors(path: str | os.PathLike) -> TensorSource:
    """Open a checkpoint file or diffusers folder without reading its tensors yet."""
    path = Path(path)
    if path.is_dir():
        return _open_diffusers_folder(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file. Put the checkpoint there or pass another path.")
    if path.stat().st_size == 0:
        raise CheckpointError(
            f"{path.name}: the file is empty (0 bytes); the download failed: download it again."
        )
    with open(path, "rb") as f:
        head = f.read(9)
    # decide by content, not by name: a safetensors file starts with its header length, then the JSON header
    header_len = int.from_bytes(head[:8], "little")
    is_safetensors = head[8:9] == b"{" and header_len <= path.stat().st_size - 8
    is_zip = head[:4] == b"PK\x03\x04"
    is_old_pickle = head[:1] == b"\x80" and path.suffix != ".safetensors"  # 0x80 may start a header length
    if is_safetensors:
        return _open_safetensors(path)
    if is_zip or is_old_pickle:
        return _open_pickle(path)
    if path.suffix in PICKLE_SUFFIXES:
        raise CheckpointError(
            f"{path.name}: neither a PyTorch checkpoint nor safetensors (unknown content); "
            "the file is corrupt or of another kind."
        )
    return _open_safetensors(path)  # its error says what is wrong with the header


class DiskFullError(FlashVAEDError, OSError):
    """No space left in the folder a file was being written to (the previous file is intact)."""


def atomic_save(
    tensors: Mapping[str, torch.Tensor], path: str | os.PathLike, metadata: Mapping[str, str] | None = None
) -> Path:
    """Write safetensors via a temp file in the same folder and os.replace: a crash leaves the old file.

    A full disk raises DiskFullError naming the folder; the temp file is removed, the old file kept.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        save_file(
            {k: v.detach().contiguous().cpu() for k, v in tensors.items()},
            tmp,
            metadata={k: str(v) for k, v in (metadata or {}).items()},
        )
        os.replace(tmp, path)
    except BaseException as err:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        if _is_disk_full(err):
            kept = "the previous file is unchanged" if path.exists() else "nothing was written"
            raise DiskFullError(
                errno.ENOSPC,
                f"disk full: no space left in {path.parent} while writing {path.name} ({kept}). Free some "
                "space there or choose another output folder, then run again",
                str(path.parent),
            ) from err
        raise
    return path


def _is_disk_full(err: BaseException) -> bool:
    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    # safetensors' Rust writer reports an I/O error as a SafetensorError/OSError holding the OS message
    return isinstance(err, (SafetensorError, OSError)) and "No space left on device" in str(err)


def safe_child(root: str | os.PathLike, name: str) -> Path:
    """root/name, refusing names that leave root (.., absolute paths, symlinks pointing outside)."""
    if not name or "\x00" in name:
        raise CheckpointError(f"invalid file name {name!r}")
    root_path = Path(root).resolve()
    candidate = Path(name)
    if candidate.is_absolute() or any(part == ".." for part in candidate.parts):
        raise CheckpointError(
            f"file name {name!r} tries to leave the folder {root_path}; pick a file inside it"
        )
    resolved = (root_path / candidate).resolve()
    if resolved != root_path and root_path not in resolved.parents:
        raise CheckpointError(f"file name {name!r} leads outside {root_path} (through a symlink); refused")
    return resolved


def find_model_file(roots: Sequence[str | os.PathLike], name: str) -> Path | None:
    """The file `name` in the first of `roots` (model folders) that has it, else None.

    Names that leave a folder are refused (`safe_child`). A symlink in a folder may point into any of the
    folders; one pointing elsewhere is refused with what to do (ComfyUI lists it, its own loaders follow
    it, so a user meets it here)."""
    inside = [Path(r).resolve() for r in roots]
    linked_out: list[tuple[Path, Path]] = []
    for root in roots:
        try:
            path = safe_child(root, name)
        except CheckpointError:
            if not name or "\x00" in name or Path(name).is_absolute() or ".." in Path(name).parts:
                raise  # a name that tries to leave: no link involved
            link, target = Path(root) / name, (Path(root) / name).resolve()
            if target.is_file() and any(r in target.parents for r in inside):
                return target
            if target.is_file():
                linked_out.append((link, target))
            continue
        if path.is_file():
            return path
    if linked_out:
        link, target = linked_out[0]
        raise CheckpointError(
            f"{link} is a symlink to {target}, outside the model folders ({', '.join(map(str, inside))}); "
            f"Flash-VAED loads only files inside them. Move or copy the file there in place of the link, or "
            f"add its folder {target.parent} to extra_model_paths.yaml (under flash_vaed: or vae:) and "
            "restart ComfyUI."
        )
    return None


def read_json_metadata(metadata: Mapping[str, str], key: str) -> dict | None:
    raw = metadata.get(key)
    if raw is None:
        return None
    try:
        value = json.loads(raw)
    except (json.JSONDecodeError, RecursionError) as err:
        raise CheckpointError(f"metadata entry {key!r} is not valid JSON ({err})") from None
    return value if isinstance(value, dict) else None
