"""Training data: real video crops, their latents (teacher's encoder) and targets (teacher's decoder).

Videos come from a folder tree: .webp and .gif (animated, read with Pillow) and .mp4/.webm/.mov/.mkv (read
with PyAV, `pip install av`). Every file is probed once; files that cannot be read, have fewer frames than
a clip, or are smaller than a crop are skipped with a warning, and only too few usable files is an error.

Determinism: a crop is a pure function of (seed, step, slot), where slot = rank * batch + i is the sample's
index in the global batch, so the same step gives the same batch on a resumed run and different ranks
never draw the same sample (`crop_for`). The held-out split is by file, a seeded shuffle of the sorted
relative paths (`split_holdout`), so it stays fixed as long as the folder does.

Layouts: frames (B, 3, T, H, W) in [-1, 1]; latents in ComfyUI's convention for the family (FlashEncoder).
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import FlashVAEDError

log = logging.getLogger(__name__)

PILLOW_SUFFIXES = (".webp", ".gif")
AV_SUFFIXES = (".mp4", ".webm", ".mov", ".mkv")
VIDEO_SUFFIXES = PILLOW_SUFFIXES + AV_SUFFIXES
KEEP_BYTES = (
    256 * 2**20
)  # decoded Pillow videos kept in memory, all together (uint8); longer ones are read lazily


class DataError(FlashVAEDError, ValueError):
    """The training videos cannot make the clips the config asks for."""


@dataclass(frozen=True)
class VideoInfo:
    path: Path
    name: str  # path relative to the data folder: the split and the cache key use it
    frames: int
    height: int
    width: int


@dataclass(frozen=True)
class Crop:
    """One training clip: `frames` frames from t0, a `size` x `size` window at (y0, x0), maybe mirrored."""

    video: int  # index into the split's video list
    t0: int
    y0: int
    x0: int
    flip: bool


@dataclass(frozen=True)
class ClipShape:
    frames: int  # 4k+1 (Wan) or 8k+1 (LTX)
    size: int  # square crop edge in pixels, a multiple of the family's spatial stride
    resize_short: int | None = None  # resize so the short side is this many pixels before cropping

    def check(self, time_stride: int, space_stride: int) -> None:
        if self.frames < 1 or (self.frames - 1) % time_stride:
            raise DataError(
                f"clip frames must be {time_stride}k+1 for this family (e.g. {2 * time_stride + 1}), "
                f"got {self.frames}"
            )
        if self.size < space_stride or self.size % space_stride:
            raise DataError(f"crop size must be a multiple of {space_stride} pixels, got {self.size}")
        if self.resize_short is not None and self.resize_short < self.size:
            raise DataError(f"resize_short ({self.resize_short}) is smaller than the crop ({self.size})")


# ---- reading ------------------------------------------------------------------------------------


def _av():
    try:
        import av
    except ImportError:
        raise DataError(
            "reading .mp4/.webm/.mov/.mkv needs PyAV: `pip install av` (animated .webp/.gif need only Pillow)"
        ) from None
    return av


def probe_video(path: Path) -> tuple[int, int, int]:
    """(frames, height, width) of a video file; raises on anything unreadable."""
    if path.suffix.lower() in PILLOW_SUFFIXES:
        from PIL import Image

        with Image.open(path) as im:
            frames = getattr(im, "n_frames", 1)
            im.seek(frames - 1)  # walks the frames: catches truncated animations now, not mid-run
            im.load()
            return frames, im.size[1], im.size[0]
    av = _av()
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = stream.frames or sum(1 for p in container.demux(stream) if p.size)
        return frames, stream.codec_context.height, stream.codec_context.width


def iter_frames(path: Path, start: int = 0, stop: int | None = None) -> Iterator[np.ndarray]:
    """Frames [start, stop) of a file, decoded one at a time as uint8 (H, W, 3) arrays: the memory one
    frame takes, however long the video (fewer when the file ends first)."""
    if path.suffix.lower() in PILLOW_SUFFIXES:
        from PIL import Image

        with Image.open(path) as im:
            n = getattr(im, "n_frames", 1)
            for i in range(start, n if stop is None else min(stop, n)):
                im.seek(i)
                yield np.asarray(im.convert("RGB"))
        return
    av = _av()
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for i, frame in enumerate(container.decode(stream)):
            if stop is not None and i >= stop:
                break
            if i >= start:
                yield frame.to_ndarray(format="rgb24")


def read_video(path: Path, start: int = 0, count: int | None = None) -> torch.Tensor:
    """Frames [start, start + count) of a file as uint8 (T, H, W, 3) (every frame from start if count is
    None). Raises if the file has fewer."""
    out = list(iter_frames(path, start, None if count is None else start + count))
    if count is not None and len(out) != count:
        raise DataError(
            f"{path}: wanted frames {start}..{start + count - 1}, the file has {start + len(out)}"
        )
    if not out:
        raise DataError(f"{path}: no frames")
    return torch.from_numpy(np.stack(out))


def _resized_hw(h: int, w: int, short: int | None) -> tuple[int, int]:
    if short is None:
        return h, w
    scale = short / min(h, w)
    return max(short, round(h * scale)), max(short, round(w * scale))


def scan_videos(root: str | Path, shape: ClipShape) -> tuple[list[VideoInfo], list[str]]:
    """(usable, skipped): every usable video under `root` (recursively), sorted by relative path, and a
    "<name>: <why>" line for each file skipped (also logged as a warning)."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"data folder {root} does not exist or is not a folder")
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES)
    if not files:
        raise DataError(f"no videos in {root} (looked for {', '.join(VIDEO_SUFFIXES)})")
    videos, skipped = [], []
    for path in files:
        name = path.relative_to(root).as_posix()
        try:
            frames, h, w = probe_video(path)
        except Exception as err:  # any decoder error means the same thing here: skip the file
            why = f"unreadable ({type(err).__name__}: {err})"
        else:
            h, w = _resized_hw(h, w, shape.resize_short)
            if frames < shape.frames:
                why = f"{frames} frames, a clip needs {shape.frames}"
            elif min(h, w) < shape.size:
                why = f"{w}x{h} is smaller than a {shape.size} px crop"
            else:
                videos.append(VideoInfo(path, name, frames, h, w))
                continue
        log.warning("skipping %s: %s", name, why)
        skipped.append(f"{name}: {why}")
    return videos, skipped


def list_skipped(skipped: Sequence[str], shown: int = 5) -> str:
    """The first `shown` of scan_videos' skipped lines, joined, and how many more there are."""
    more = len(skipped) - shown
    return "; ".join(skipped[:shown]) + (f"; and {more} more" if more > 0 else "")


def split_holdout(
    videos: Sequence[VideoInfo], fraction: float, seed: int
) -> tuple[list[VideoInfo], list[VideoInfo]]:
    """(train, held_out) by file: a seeded shuffle of the sorted names; round(fraction * n) files held out,
    at least one when fraction > 0 and there are two or more, never all of them."""
    ordered = sorted(videos, key=lambda v: v.name)
    n = len(ordered)
    k = 0 if fraction <= 0 or n < 2 else min(n - 1, max(1, round(fraction * n)))
    order = list(range(n))
    random.Random(f"{seed}:holdout").shuffle(order)
    held = {order[i] for i in range(k)}
    return [v for i, v in enumerate(ordered) if i not in held], [
        v for i, v in enumerate(ordered) if i in held
    ]


# ---- sampling -----------------------------------------------------------------------------------


def _crop_from(rng: random.Random, videos: Sequence[VideoInfo], shape: ClipShape, flip: bool) -> Crop:
    v = rng.randrange(len(videos))
    info = videos[v]
    t0 = rng.randrange(info.frames - shape.frames + 1)
    y0 = rng.randrange(info.height - shape.size + 1)
    x0 = rng.randrange(info.width - shape.size + 1)
    return Crop(v, t0, y0, x0, flip and rng.random() < 0.5)


def crop_for(
    videos: Sequence[VideoInfo],
    shape: ClipShape,
    seed: int,
    step: int,
    slot: int,
    *,
    flip: bool = True,
    pool: int = 0,
    attempt: int = 0,
) -> tuple[Crop, int | None]:
    """The crop of sample `slot` at `step`, and its pool index (None without a pool).

    pool > 0: the crop is one of `pool` fixed crops (picked per step), so crops repeat and their latents
    and targets can be cached on disk. `attempt` > 0 redraws after a read failure.
    """
    rng = random.Random(f"{seed}:{step}:{slot}:{attempt}")
    if pool > 0:
        j = rng.randrange(pool)
        return _crop_from(random.Random(f"{seed}:pool:{j}:{attempt}"), videos, shape, flip), j
    return _crop_from(rng, videos, shape, flip), None


def eval_crops(videos: Sequence[VideoInfo], shape: ClipShape, per_video: int) -> list[Crop]:
    """Fixed evaluation crops: spatially centred, start frames spread evenly over each video."""
    crops = []
    for v, info in enumerate(videos):
        span = info.frames - shape.frames
        starts = sorted({round(span * i / max(1, per_video - 1)) for i in range(per_video)})
        y0, x0 = (info.height - shape.size) // 2, (info.width - shape.size) // 2
        crops += [Crop(v, t0, y0, x0, False) for t0 in starts]
    return crops


class ClipReader:
    """Turns crops into frames. Memory follows the crop, not the video: frames are cropped (and resized
    first when resize_short asks) one at a time as they are decoded, and only short, small Pillow videos
    (.webp/.gif decode from their first frame on every read) are kept decoded, as uint8: at most
    `keep_videos` of them and `keep_bytes` in all."""

    def __init__(
        self,
        videos: Sequence[VideoInfo],
        shape: ClipShape,
        keep_videos: int = 8,
        keep_bytes: int = KEEP_BYTES,
    ):
        self.videos, self.shape, self.keep, self.keep_bytes = list(videos), shape, keep_videos, keep_bytes
        self._memory: OrderedDict[Path, torch.Tensor] = OrderedDict()

    def with_shape(self, shape: ClipShape) -> ClipReader:
        """A reader of another clip shape over the same videos, sharing the decoded videos in memory."""
        other = ClipReader(self.videos, shape, self.keep, self.keep_bytes)
        other._memory = self._memory
        return other

    def _kept(self, info: VideoInfo) -> torch.Tensor | None:
        """The whole decoded video (uint8 (T, H, W, 3)) when it is one to keep, else None."""
        if info.path.suffix.lower() not in PILLOW_SUFFIXES or self.keep <= 0:
            return None
        if info.path not in self._memory:
            from PIL import Image

            with Image.open(info.path) as im:
                nbytes = getattr(im, "n_frames", 1) * im.size[0] * im.size[1] * 3
            if nbytes > self.keep_bytes:
                return None
            self._memory[info.path] = read_video(info.path)
            while (
                len(self._memory) > self.keep
                or sum(v.nbytes for v in self._memory.values()) > self.keep_bytes
            ):
                self._memory.popitem(last=False)
            if info.path not in self._memory:
                return None
        self._memory.move_to_end(info.path)
        return self._memory[info.path]

    def _crop(self, frame: np.ndarray, info: VideoInfo, crop: Crop) -> torch.Tensor:
        """One uint8 (H, W, 3) frame -> its crop, (3, S, S) float32 in [-1, 1] (resized first if asked)."""
        s = self.shape.size
        if self.shape.resize_short is None:
            window = np.ascontiguousarray(frame[crop.y0 : crop.y0 + s, crop.x0 : crop.x0 + s])
            return torch.from_numpy(window).permute(2, 0, 1).float() / 127.5 - 1.0
        x = torch.from_numpy(np.ascontiguousarray(frame)).permute(2, 0, 1).float() / 127.5 - 1.0
        x = F.interpolate(x[None], size=(info.height, info.width), mode="bilinear", antialias=True)[0]
        return x[:, crop.y0 : crop.y0 + s, crop.x0 : crop.x0 + s]

    def clip(self, crop: Crop) -> torch.Tensor:
        """(3, T, S, S) float32 in [-1, 1]."""
        info = self.videos[crop.video]
        n = self.shape.frames
        video = self._kept(info)
        if video is not None:
            frames = (f.numpy() for f in video[crop.t0 : crop.t0 + n])
        else:
            frames = iter_frames(info.path, crop.t0, crop.t0 + n)
        clip = [self._crop(f, info, crop) for f in frames]
        if len(clip) != n:
            raise DataError(
                f"{info.name}: wanted frames {crop.t0}..{crop.t0 + n - 1}, it has {crop.t0 + len(clip)} "
                f"(the probe said {info.frames})"
            )
        x = torch.stack(clip, dim=1)
        return (x.flip(-1) if crop.flip else x).clamp(-1, 1).contiguous()


def draw_batch(
    reader: ClipReader,
    seed: int,
    step: int,
    slots: Sequence[int],
    *,
    flip: bool = True,
    pool: int = 0,
    tries: int = 5,
) -> tuple[torch.Tensor, list[Crop], list[int | None]]:
    """Frames (B, 3, T, S, S) in [-1, 1] for the given global sample slots, with their crops and pool
    indices. A clip that fails to read is redrawn (deterministically) with a warning, up to `tries` times."""
    clips, crops, pools = [], [], []
    for slot in slots:
        for attempt in range(tries):
            crop, j = crop_for(
                reader.videos, reader.shape, seed, step, slot, flip=flip, pool=pool, attempt=attempt
            )
            try:
                clips.append(reader.clip(crop))
            except Exception as err:
                log.warning(
                    "step %d: could not read %s (%s); drawing another clip",
                    step,
                    reader.videos[crop.video].name,
                    err,
                )
                continue
            crops.append(crop)
            pools.append(j)
            break
        else:
            raise DataError(f"step {step}: {tries} clips in a row failed to read; check the data folder")
    return torch.stack(clips), crops, pools


# ---- the on-disk cache of (latent, target) ------------------------------------------------------


def cache_key(info: VideoInfo, crop: Crop, shape: ClipShape, models: str) -> str:
    """A name for one cached (latent, target): the file (and its size/mtime), the crop, the clip shape and
    `models` (a fingerprint of the teacher and encoder files and the compute dtype)."""
    stat = info.path.stat()
    text = json.dumps(
        [info.name, stat.st_size, stat.st_mtime_ns, asdict(crop) | {"video": 0}, asdict(shape), models]
    )
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def file_fingerprint(*paths: str | Path | None) -> str:
    parts = []
    for p in paths:
        if p is None:
            continue
        st = Path(p).stat()
        parts.append(f"{Path(p).resolve()}:{st.st_size}:{st.st_mtime_ns}")
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


class PairCache:
    """(latent, target) per crop on disk, one safetensors file each. It pays when crops repeat (a crop
    pool) and the encoder is the slow part; targets are used only when the teacher need not run anyway."""

    def __init__(self, folder: Path):
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)

    def get(self, key: str) -> dict[str, torch.Tensor] | None:
        from safetensors.torch import load_file

        path = self.folder / f"{key}.safetensors"
        if not path.is_file():
            return None
        try:
            return load_file(path)
        except Exception as err:
            log.warning("cache entry %s unreadable (%s); recomputing it", path.name, err)
            return None

    def put(self, key: str, tensors: dict[str, torch.Tensor]) -> None:
        from ..checkpoint.io import atomic_save

        atomic_save(tensors, self.folder / f"{key}.safetensors")
