"""Loading decoders from files, folders and state dicts (`flash_vaed.load_decoder`, `checkpoint.io`).

Real layouts come from the manifests with seeded weights (`support.reference_weights`): the full-size
Wan 2.1 decoder (73M parameters) is generated once per module and written once per file format; every
decode is of a (1, 16, 2, 2, 2) latent. Detection must follow keys and content, never file names, and
every refusal must be a CheckpointError whose message names the problem.
"""

from __future__ import annotations

import json
import os
import pathlib
import pickle
import random
import re
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from flash_vaed import CheckpointError, DecoderSpec, Family, FlashDecoder, load_decoder, save_student
from flash_vaed.arch.wan import WanFamilyDecoder
from flash_vaed.checkpoint.io import safe_child
from flash_vaed.checkpoint.load import FORMAT_VERSION, META_ARCH, META_FAMILY, META_FORMAT, META_SPEC
from flash_vaed.latents import LatentNorm
from support.reference_weights import generate, load_manifest, manifest_shapes

REPO = Path(__file__).resolve().parents[1]
OFFICIAL_WAN_REF = REPO / "tests" / "data" / "official" / "wan_student_ref.safetensors"
WAN_DECODE_KEYS = ("decoder.", "conv2.", "conv1.")  # conv1 is encode-only, present in real files


def _latent(channels: int = 16, seed: int = 1234) -> torch.Tensor:
    return torch.randn(1, channels, 2, 2, 2, generator=torch.Generator().manual_seed(seed))


# ---- shared real-size Wan 2.1 weights and files ------------------------------------------------------


@pytest.fixture(scope="module")
def wan_sd() -> dict[str, torch.Tensor]:
    """Seeded Wan 2.1 weights in the original (ComfyUI) layout, decoder side only. Do not mutate."""
    return generate(load_manifest("wan21_comfy"), seed=0, include=WAN_DECODE_KEYS)


@pytest.fixture(scope="module")
def wan_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("wan21")


@pytest.fixture(scope="module")
def wan_safetensors(wan_sd: dict, wan_dir: Path) -> Path:
    path = wan_dir / "wan_2.1_vae.safetensors"
    save_file(wan_sd, path)
    return path


@pytest.fixture(scope="module")
def wan_pth(wan_sd: dict, wan_dir: Path) -> Path:
    path = wan_dir / "Wan2.1_VAE.pth"
    torch.save(wan_sd, path)
    return path


_WAN_RESNET = {
    "residual.0": "norm1",
    "residual.2": "conv1",
    "residual.3": "norm2",
    "residual.6": "conv2",
    "shortcut": "conv_shortcut",
}


def wan21_original_to_diffusers(key: str) -> str:
    """diffusers AutoencoderKLWan name of an original Wan 2.1 key (diffusers' convert_wan_to_diffusers)."""

    def resnet(rest: str) -> str:
        for old, new in _WAN_RESNET.items():
            if rest.startswith(old + "."):
                return new + rest[len(old) :]
        raise AssertionError(rest)

    simple = {
        "conv1.": "quant_conv.",
        "conv2.": "post_quant_conv.",
        "decoder.conv1.": "decoder.conv_in.",
        "decoder.head.0.": "decoder.norm_out.",
        "decoder.head.2.": "decoder.conv_out.",
    }
    for old, new in simple.items():
        if key.startswith(old):
            return new + key[len(old) :]
    if m := re.fullmatch(r"decoder\.middle\.(\d)\.(.+)", key):
        n = int(m[1])
        return (
            f"decoder.mid_block.attentions.0.{m[2]}"
            if n == 1
            else f"decoder.mid_block.resnets.{n // 2}.{resnet(m[2])}"
        )
    if m := re.fullmatch(r"decoder\.upsamples\.(\d+)\.(.+)", key):
        block, j = divmod(int(m[1]), 4)
        if j == 3:
            return f"decoder.up_blocks.{block}.upsamplers.0.{m[2]}"
        return f"decoder.up_blocks.{block}.resnets.{j}.{resnet(m[2])}"
    raise AssertionError(f"no diffusers name for {key}")


def test_wan_rename_used_below_gives_the_real_diffusers_layout() -> None:
    original = manifest_shapes(load_manifest("wan21_comfy"))
    diffusers = manifest_shapes(load_manifest("diffusers_wan21"))
    renamed = {
        wan21_original_to_diffusers(k): s for k, s in original.items() if k.startswith(WAN_DECODE_KEYS)
    }
    assert renamed == {
        k: s for k, s in diffusers.items() if k.startswith(("decoder.", "post_quant_conv.", "quant_conv."))
    }


@pytest.fixture(scope="module")
def wan_diffusers_folder(wan_sd: dict, wan_dir: Path) -> Path:
    """A diffusers model folder whose vae/ holds the SAME values as wan_sd under diffusers names."""
    root = wan_dir / "Wan2.1-T2V-1.3B-Diffusers"
    (root / "vae").mkdir(parents=True)
    save_file(
        {wan21_original_to_diffusers(k): v for k, v in wan_sd.items()},
        root / "vae" / "diffusion_pytorch_model.safetensors",
    )
    config = {"_class_name": "AutoencoderKLWan", **load_manifest("diffusers_wan21")["config"]}
    (root / "vae" / "config.json").write_text(json.dumps(config))
    return root


@pytest.fixture(scope="module")
def wan_frames(wan_sd: dict) -> torch.Tensor:
    """Reference decode: the state dict itself, float32."""
    return load_decoder(wan_sd).decode(_latent())


# ---- Wan 2.1 teacher from every source ---------------------------------------------------------------


@pytest.mark.parametrize(
    "source", ["safetensors", "pth", "state_dict", "diffusers_folder", "diffusers_vae_dir"]
)
def test_wan21_teacher_loads_from_every_source(
    source: str, request: pytest.FixtureRequest, wan_sd: dict, wan_frames: torch.Tensor
) -> None:
    where = {
        "safetensors": lambda: request.getfixturevalue("wan_safetensors"),
        "pth": lambda: request.getfixturevalue("wan_pth"),
        "state_dict": lambda: wan_sd,
        "diffusers_folder": lambda: request.getfixturevalue("wan_diffusers_folder"),
        "diffusers_vae_dir": lambda: request.getfixturevalue("wan_diffusers_folder") / "vae",
    }[source]()
    dec = load_decoder(where)
    assert isinstance(dec, FlashDecoder)
    assert (dec.family, dec.role) == (Family.WAN21, "teacher")
    assert dec.layout == ("wan21-diffusers" if source.startswith("diffusers") else "wan21")
    assert dec.num_parameters() == sum(v.numel() for k, v in wan_sd.items() if not k.startswith("conv1."))
    assert dec.dtype == torch.float32 and dec.latent_norm is None
    frames = dec.decode(_latent())
    assert frames.shape == (1, 3, 5, 16, 16)
    torch.testing.assert_close(frames, wan_frames, rtol=0, atol=0)


def test_wan_loaded_values_are_the_files_values(
    wan_safetensors: Path, wan_diffusers_folder: Path, wan_sd: dict
) -> None:
    for source in (wan_safetensors, wan_diffusers_folder):
        state = load_decoder(source).module.state_dict()
        assert set(state) == {k for k in wan_sd if not k.startswith("conv1.")}
        assert all(torch.equal(state[k], wan_sd[k]) for k in state)


# ---- detection ignores names ---------------------------------------------------------------------------


def test_detection_ignores_file_names(wan_safetensors: Path, wan_pth: Path, tmp_path: Path) -> None:
    names = {
        "ltx_vae.safetensors": wan_safetensors,  # misleading name
        "Flash_VAED_LTX.pth": wan_safetensors,  # safetensors content, pickle suffix
        "wan_as_safetensors.safetensors": wan_pth,  # zip pickle content, safetensors suffix
        "no_suffix": wan_safetensors,
    }
    for name, target in names.items():
        try:
            os.link(target, tmp_path / name)
        except OSError:  # no hard links on this file system
            shutil.copyfile(target, tmp_path / name)
        dec = load_decoder(tmp_path / name)
        assert (dec.family, dec.role, dec.layout) == (Family.WAN21, "teacher", "wan21"), name


def test_state_dict_wrappers_and_all_in_one_prefix_are_unwrapped(tmp_path: Path) -> None:
    sd = generate(load_manifest("flashvaed_wan_official"), seed=0)
    torch.save({"state_dict": sd}, tmp_path / "wrapped.ckpt")
    torch.save({"model": sd}, tmp_path / "single_entry.pt")
    for name in ("wrapped.ckpt", "single_entry.pt"):
        assert load_decoder(tmp_path / name).layout == "flashvaed-wan-official"
    prefixed = {f"vae.{k}": v for k, v in sd.items()} | {"model.diffusion_model.x.weight": torch.zeros(2)}
    assert load_decoder(prefixed).layout == "flashvaed-wan-official"


# ---- the official Flash-VAED Wan student -------------------------------------------------------------


def test_official_flashvaed_wan_pth_is_the_student_and_decodes_like_the_official_code(tmp_path: Path) -> None:
    sd = generate(load_manifest("flashvaed_wan_official"), seed=0)
    path = tmp_path / "Flash_VAED_Wan.pth"
    torch.save(sd, path)
    dec = load_decoder(path)
    assert (dec.family, dec.role, dec.layout) == (Family.WAN21, "student", "flashvaed-wan-official")
    decoder_values = sum(v.numel() for k, v in sd.items() if k.startswith(("decoder.", "conv2.")))
    assert dec.num_parameters() == decoder_values
    ref = load_file(OFFICIAL_WAN_REF)
    # ComfyUI latents are raw; the official code got the normalized ones and un-normalized them itself
    torch.testing.assert_close(dec.decode(ref["latent_raw"]), ref["video"], rtol=0, atol=1e-4)


# ---- our own students: save / reload ---------------------------------------------------------------------


def test_save_student_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(0)
    spec = DecoderSpec.tiny()
    module = WanFamilyDecoder(spec).eval()
    norm = LatentNorm(torch.linspace(-1, 1, 16), torch.linspace(0.5, 2, 16))
    student = FlashDecoder(Family.WAN21, "student", module, norm, "tiny")
    folder = tmp_path / "vae_approx"
    path = folder / "my_student.safetensors"
    save_student(student, path)
    save_student(student, path)  # overwriting is atomic too

    assert sorted(p.name for p in folder.iterdir()) == ["my_student.safetensors"], "temp files left behind"
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    assert meta[META_FORMAT] == FORMAT_VERSION and meta[META_FAMILY] == "wan21" and meta[META_ARCH] == "wan"
    assert DecoderSpec.from_json(meta[META_SPEC]) == spec

    again = load_decoder(path)
    assert (again.family, again.role, again.layout) == (Family.WAN21, "student", f"flash-vaed:{spec.name}")
    assert again.module.spec == spec
    torch.testing.assert_close(again.latent_norm.mean, norm.mean, rtol=0, atol=0)
    torch.testing.assert_close(again.latent_norm.std, norm.std, rtol=0, atol=0)
    z = _latent()
    torch.testing.assert_close(again.decode(z), student.decode(z), rtol=0, atol=0)


def test_future_format_version_is_refused(tmp_path: Path) -> None:
    torch.manual_seed(0)
    student = FlashDecoder(Family.WAN21, "student", WanFamilyDecoder(DecoderSpec.tiny()))
    path = save_student(student, tmp_path / "s.safetensors")
    tensors = load_file(path)
    with safe_open(str(path), framework="pt") as f:
        meta = dict(f.metadata())
    save_file(tensors, path, metadata={**meta, META_FORMAT: "99"})
    with pytest.raises(CheckpointError, match="format version '99'"):
        load_decoder(path)


# ---- broken and hostile files ------------------------------------------------------------------------


def test_truncated_safetensors_is_refused(wan_safetensors: Path, tmp_path: Path) -> None:
    data = wan_safetensors.read_bytes()
    for name, size in (("half.safetensors", len(data) // 2), ("header_cut.safetensors", 64)):
        (tmp_path / name).write_bytes(data[:size])
        message = rf"{name}: not a readable safetensors file.*download it again"
        with pytest.raises(CheckpointError, match=message):
            load_decoder(tmp_path / name)


def test_truncated_pth_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "Flash_VAED_Wan.pth"
    torch.save(generate(load_manifest("flashvaed_wan_official"), seed=0), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint.*truncated"):
        load_decoder(path)


@pytest.mark.parametrize("name", ["empty.safetensors", "empty.pth"])
def test_zero_byte_file_is_refused(tmp_path: Path, name: str) -> None:
    (tmp_path / name).write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"empty \(0 bytes\)"):
        load_decoder(tmp_path / name)


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("noise.safetensors", "not a readable safetensors file"),
        ("noise.pth", "neither a PyTorch checkpoint nor safetensors"),
    ],
)
def test_random_bytes_are_refused(tmp_path: Path, name: str, message: str) -> None:
    data = random.Random(0).randbytes(4096)
    assert data[:1] != b"\x80" and data[:2] != b"PK"
    (tmp_path / name).write_bytes(data)
    with pytest.raises(CheckpointError, match=message):
        load_decoder(tmp_path / name)


def test_missing_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no such file"):
        load_decoder(tmp_path / "nope.safetensors")


class _TouchOnLoad:
    """Unpickling this calls Path.touch(target): what a hostile checkpoint would do."""

    def __init__(self, target: Path):
        self.target = target

    def __reduce__(self):
        return (pathlib.Path.touch, (self.target,))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("kind", ["zip", "legacy", "raw_pickle"])
def test_pickle_that_runs_code_is_refused_without_running_it(tmp_path: Path, kind: str) -> None:
    target = tmp_path / "pwned"
    path = tmp_path / "Wan2.1_VAE.pth"
    payload = {
        "decoder.conv1.weight": torch.zeros(1),
        "decoder.middle.0.residual.0.gamma": _TouchOnLoad(target),
    }
    if kind == "zip":
        torch.save(payload, path, pickle_protocol=4)
    elif kind == "legacy":
        torch.save(payload, path, _use_new_zipfile_serialization=False, pickle_protocol=4)
    else:
        path.write_bytes(pickle.dumps(payload, protocol=4))
    assert not target.exists()
    with pytest.raises(CheckpointError, match="refused to unpickle.*Nothing from it was executed"):
        load_decoder(path)
    assert not target.exists(), "unpickling ran code from the file"


def test_wan_state_dict_with_missing_keys_names_them(wan_sd: dict) -> None:
    removed = ["decoder.middle.1.proj.bias", "decoder.upsamples.4.residual.6.bias", "decoder.head.2.bias"]
    broken = {k: v for k, v in wan_sd.items() if k not in removed}
    with pytest.raises(CheckpointError, match="looks like wan21") as info:
        load_decoder(broken)
    message = str(info.value)
    assert "3 missing keys" in message and all(k in message for k in removed)
    assert "nothing was loaded" in message


@pytest.mark.parametrize("key", ["decoder.head.2.weight", "decoder.conv1.weight"])
def test_wan_state_dict_missing_a_structural_key_names_it(wan_sd: dict, key: str) -> None:
    broken = {k: v for k, v in wan_sd.items() if k != key}
    with pytest.raises(CheckpointError, match=rf"'{re.escape(key)}' is missing"):
        load_decoder(broken)


def test_wan_state_dict_with_a_wrong_shape_names_it(wan_sd: dict) -> None:
    broken = dict(wan_sd)
    broken["decoder.upsamples.5.residual.6.bias"] = torch.zeros(7)
    with pytest.raises(CheckpointError, match=r"decoder\.upsamples\.5\.residual\.6\.bias is \(7,\)"):
        load_decoder(broken)


def _sd_image_vae(latent_channels: int) -> dict[str, torch.Tensor]:
    return {
        "decoder.conv_in.weight": torch.zeros(512, latent_channels, 3, 3),
        "decoder.conv_in.bias": torch.zeros(512),
        "decoder.mid.block_1.norm1.weight": torch.zeros(512),
        "decoder.mid.block_1.conv1.weight": torch.zeros(512, 512, 3, 3),
        "encoder.conv_in.weight": torch.zeros(128, 3, 3, 3),
    }


@pytest.mark.parametrize(("channels", "named"), [(4, "SD 1.x / SDXL"), (16, "Flux / SD3")])
def test_image_vae_is_refused_by_name(tmp_path: Path, channels: int, named: str) -> None:
    path = tmp_path / "wan_2.1_vae.safetensors"  # the name says Wan; the keys say otherwise
    save_file(_sd_image_vae(channels), path)
    message = rf"wan_2\.1_vae\.safetensors: this is an? {re.escape(named)}"
    with pytest.raises(CheckpointError, match=message) as info:
        load_decoder(path)
    assert "SD" in str(info.value) and "image VAE" in str(info.value)


def test_unknown_layout_lists_what_was_expected() -> None:
    with pytest.raises(CheckpointError, match="no known decoder layout.*first keys: a.weight") as info:
        load_decoder({"a.weight": torch.zeros(2)})
    assert "decoder.middle.0.residual.0.gamma" in str(info.value)


def test_integer_tensor_is_refused(wan_sd: dict) -> None:
    bad = dict(wan_sd)
    bad["decoder.head.2.bias"] = torch.zeros(3, dtype=torch.int64)
    with pytest.raises(CheckpointError, match=r"decoder\.head\.2\.bias has dtype torch\.int64"):
        load_decoder(bad)


# ---- contained paths -----------------------------------------------------------------------------------


def test_safe_child_keeps_names_inside_the_root(tmp_path: Path) -> None:
    root = tmp_path / "models" / "vae"
    root.mkdir(parents=True)
    (tmp_path / "outside").mkdir()
    (root / "escape").symlink_to(tmp_path / "outside", target_is_directory=True)
    (root / "inner").mkdir()
    (root / "ok_link").symlink_to(root / "inner", target_is_directory=True)

    assert safe_child(root, "wan.safetensors") == root.resolve() / "wan.safetensors"
    assert safe_child(root, "sub/wan.safetensors") == root.resolve() / "sub" / "wan.safetensors"
    assert safe_child(root, "ok_link/x.pth") == root.resolve() / "inner" / "x.pth"
    refused = [
        ("../x", "tries to leave"),
        ("sub/../../x", "tries to leave"),
        ("/etc/passwd", "tries to leave"),
        ("escape/x.safetensors", "symlink"),
        ("escape", "symlink"),
        ("", "invalid"),
        ("a\x00b", "invalid"),
    ]
    for name, why in refused:
        with pytest.raises(CheckpointError, match=why):
            safe_child(root, name)


# ---- half-precision files --------------------------------------------------------------------------------


@pytest.mark.parametrize(("dtype", "tol"), [(torch.float16, 3e-3), (torch.bfloat16, 3e-2)])
def test_half_precision_files_load_as_float32_and_decode_close(
    wan_sd: dict, wan_frames: torch.Tensor, tmp_path: Path, dtype: torch.dtype, tol: float
) -> None:
    path = tmp_path / f"wan_2.1_vae_{str(dtype).split('.')[-1]}.safetensors"
    save_file({k: v.to(dtype) for k, v in wan_sd.items()}, path)
    with safe_open(str(path), framework="pt") as f:
        assert f.get_slice("decoder.conv1.weight").get_dtype() in ("F16", "BF16")
    dec = load_decoder(path, dtype=torch.float32)
    assert dec.dtype == torch.float32
    frames = dec.decode(_latent())
    assert frames.dtype == torch.float32
    err = (frames - wan_frames).abs().max().item() / wan_frames.abs().max().item()
    assert 0 < err < tol, f"relative error {err:.2e} of a {dtype} file"
