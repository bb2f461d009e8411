"""LTX-2 files through the public loaders, as a user meets them: `load_decoder` / `load_encoder` on files that
carry their config in the safetensors metadata (standalone, and inside all-in-one checkpoints under `vae.`),
decodes and encodes equal to upstream ComfyUI's (tests/data/ltx2, see its README) at the decoder's own
defaults, the family each file belongs to, the diffusion decoder and files whose metadata was stripped."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from flash_vaed import Family, load_decoder, load_encoder
from flash_vaed.arch.ltx import COMFY_DECODER_BLOCKS, LTXTeacherDecoder
from flash_vaed.arch.ltx2 import LTX2_ONLY_KEYS, LTX2DecoderConfig, LTX2TeacherDecoder, family_of_config
from flash_vaed.checkpoint.io import TensorSource, from_state_dict
from flash_vaed.checkpoint.load import detect, materialize
from flash_vaed.encoder import ENCODER_LAYOUTS
from flash_vaed.errors import CheckpointError
from support.reference_weights import generate, load_manifest, manifest_shapes
from test_ltx2_reference import FAST, reference

DATA = Path(__file__).resolve().parent / "data" / "ltx2"
TOL = 5e-5
REAL = {"ltx2_comfy": "ltx-2.0", "ltx2_comfy_tc": "ltx-2.0-tc", "ltx23_comfy": "ltx-2.3"}
TRANSFORMER = {"num_layers": 48, "caption_channels": 3840}  # what else an all-in-one config holds


def reference_file(tmp_path: Path, name: str, prefix: str = "") -> tuple[Path, dict, dict]:
    """The reference's weights saved as a real file: its VAE config in the metadata ({"config": {"vae":
    ...}}, plus a transformer entry and diffusion-model tensors for an all-in-one checkpoint)."""
    meta, ref, manifest = reference(name)
    weights = generate(manifest, seed=0, include=("decoder.", "per_channel_statistics."))
    config = {"vae": json.loads(meta["config"])["vae"]}
    tensors = {prefix + k: v for k, v in weights.items()}
    if prefix:
        config["transformer"] = TRANSFORMER
        tensors["model.diffusion_model.proj_in.weight"] = torch.zeros(4, 4)
        tensors[prefix + "encoder.conv_in.conv.weight"] = torch.zeros(8, 48, 3, 3, 3)
    path = tmp_path / f"{name}.safetensors"
    save_file(tensors, str(path), metadata={"config": json.dumps(config)})
    return path, meta, ref


def decode_as_reference(dec, meta: dict, latent: torch.Tensor) -> torch.Tensor:
    """The public decode at the decoder's defaults: only what a mode changes is passed (noise off, a seed)."""
    if meta["mode"] == "noise_off":
        return dec.decode(latent, noise_scale=0.0)
    if meta["mode"] == "seeded":
        return dec.decode(latent, generator=torch.Generator().manual_seed(int(meta["noise_seed"])))
    return dec.decode(latent)


def recording(path: Path) -> tuple[TensorSource, list[str]]:
    """The file as a TensorSource that records which tensors are read."""
    from flash_vaed.checkpoint.io import open_tensors

    src = open_tensors(path)
    asked: list[str] = []
    inner = src._loader

    def load(names):
        names = list(names)
        asked.extend(names)
        return inner(names)

    src._loader = load
    return src, asked


def shapes_only(shapes: dict, metadata: dict | None = None, origin: str = "file") -> TensorSource:
    """A source with the real layout's shapes whose tensors must never be read."""

    def load(names):
        raise AssertionError(f"read {list(names)[:3]}: detection must not read tensors")

    return TensorSource({k: tuple(v) for k, v in shapes.items()}, load, metadata, origin)


# ---- decoders: load_decoder = ComfyUI -------------------------------------------------------------


@pytest.mark.parametrize("name", FAST)
def test_load_decoder_decodes_like_comfyui(tmp_path, name):
    """The reduced and schema cases through a real file: config from the metadata, decode defaults from
    the config (the group-norm case's decode_timestep 0.1 / decode_noise_scale 0.05 are not passed)."""
    path, meta, ref = reference_file(tmp_path, name)
    dec = load_decoder(path)
    assert dec.family is Family.LTX2 and dec.role == "teacher"
    assert isinstance(dec.module, LTX2TeacherDecoder) and dec.latent_norm is not None
    ours = decode_as_reference(dec, meta, ref["latent"])
    assert ours.shape == ref["video"].shape
    err = (ours - ref["video"]).abs().max().item()
    assert err <= TOL, f"{name}: max abs error {err:.3g} vs ComfyUI"


def test_decode_defaults_are_the_modules():
    """`decode` without timestep / noise_scale uses the config's decode_timestep / decode_noise_scale."""
    meta, ref, _ = reference("groupnorm_causal_seeded")
    config = json.loads(meta["config"])["vae"]
    module = LTX2TeacherDecoder.from_comfy_config(config).eval()
    assert (module.decode_timestep, module.decode_noise_scale) == (0.1, 0.05)
    from flash_vaed.decoder import FlashDecoder

    dec = FlashDecoder(Family.LTX2, "teacher", module, None, "ltx2")
    z = ref["latent"]
    seeded = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    default = dec.decode(z, generator=seeded())
    torch.testing.assert_close(default, dec.decode(z, timestep=0.1, noise_scale=0.05, generator=seeded()))
    assert (default - dec.decode(z, timestep=0.05, noise_scale=0.025, generator=seeded())).abs().max() > 1e-3


def test_all_in_one_checkpoint_reads_only_the_vae_decoder(tmp_path):
    """`vae.`-prefixed VAE next to a diffusion model, config among the transformer's: only the decoder and
    the two statistics are read, and it decodes as the standalone file."""
    name = "ltx23_reduced"
    path, meta, ref = reference_file(tmp_path, name, prefix="vae.")
    src, asked = recording(path)
    from flash_vaed.checkpoint.load import build_decoder

    dec = build_decoder(src)
    assert asked and all(k.startswith(("vae.decoder.", "vae.per_channel_statistics.")) for k in asked)
    assert not any("stds" in k or k.endswith("channel") for k in asked)
    assert dec.family is Family.LTX2
    err = (decode_as_reference(dec, meta, ref["latent"]) - ref["video"]).abs().max().item()
    assert err <= TOL


@pytest.mark.parametrize("prefix", ["", "vae."])
@pytest.mark.parametrize("name", list(REAL))
def test_real_layouts_are_recognised_and_build_exactly(name, prefix):
    """Full-size LTX-2.0, 2.0 timestep-conditioned and 2.3 files (shapes from the manifests, nothing read):
    family, layout and the exact decoder the config describes, standalone and all-in-one."""
    manifest = load_manifest(name)
    shapes = {prefix + k: v for k, v in manifest_shapes(manifest).items()}
    config = {"vae": manifest["comfy_config"], **({"transformer": TRANSFORMER} if prefix else {})}
    recipe = detect(shapes_only(shapes, {"config": json.dumps(config)}))
    assert (recipe.family, recipe.layout, recipe.role) == (Family.LTX2, REAL[name], "teacher")
    with torch.device("meta"):
        module = recipe.build()
    built = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    assert built == {k: tuple(v) for k, v in manifest_shapes(manifest).items() if k.startswith("decoder.")}
    assert set(recipe.keys) == set(built)


def test_family_rule():
    """LTX-Video 0.9 = the three decoders ComfyUI builds for 0.9.x, without LTX-2's split settings."""
    for version, blocks in COMFY_DECODER_BLOCKS.items():
        config = {
            "latent_channels": 128,
            "norm_layer": "pixel_norm",
            "patch_size": 4,
            "decoder_blocks": blocks,
        }
        config["timestep_conditioning"] = version > 0
        assert family_of_config(config) is Family.LTXV
        for key in LTX2_ONLY_KEYS:
            value = 128 if key.endswith("channels") else "reflect"
            assert family_of_config({**config, key: value}) is Family.LTX2, key
        # another conditioning than 0.9.x's is another model
        assert family_of_config({**config, "timestep_conditioning": version == 0}) is Family.LTX2
    for name in REAL:
        assert family_of_config(load_manifest(name)["comfy_config"]) is Family.LTX2
    assert family_of_config({"decoder_blocks": [["attn", 1]]}) is Family.LTX2  # unbuildable: not 0.9.x


def test_ltxv_file_with_its_config_decodes_as_the_09_teacher(tmp_path):
    """An LTX-Video 0.9.1 checkpoint carrying its config (as Lightricks' files do) is LTX-Video 0.9 and its
    decode, built from the config, is the 0.9 teacher's (noise injection and conditioning included)."""
    config = {
        "latent_channels": 128,
        "norm_layer": "pixel_norm",
        "patch_size": 4,
        "decoder_blocks": COMFY_DECODER_BLOCKS[1],
        "timestep_conditioning": True,
    }
    small = [list(b) for b in COMFY_DECODER_BLOCKS[1]]
    for block in small:  # one resnet per stack keeps it fast; the kinds and options stay
        if block[0] == "res_x":
            block[1] = {**block[1], "num_layers": 1}
    teacher = LTXTeacherDecoder(small, timestep_conditioning=True, base_channels=8).eval()
    weights = generate({k: list(v.shape) for k, v in teacher.state_dict().items()}, seed=2)
    teacher.load_state_dict(weights)
    g = torch.Generator().manual_seed(5)
    stats = {"per_channel_statistics.mean-of-means": 0.1 * torch.randn(128, generator=g)}
    stats["per_channel_statistics.std-of-means"] = torch.exp(0.2 * torch.randn(128, generator=g))
    path = tmp_path / "ltxv091_with_config.safetensors"
    file_config = {**config, "decoder_blocks": small}
    save_file({**weights, **stats}, str(path), metadata={"config": json.dumps({"vae": file_config})})
    with pytest.raises(CheckpointError, match="other shapes"):  # 128-wide base in the config, 8 in the file
        load_decoder(path)
    path2 = tmp_path / "ltxv091_b8.safetensors"
    file_config["decoder_base_channels"] = 8  # what a reduced file must say (an LTX-2-style key)
    save_file({**weights, **stats}, str(path2), metadata={"config": json.dumps({"vae": file_config})})
    dec = load_decoder(path2)
    assert dec.module.injects_noise and dec.module.timestep_conditioned
    z = torch.randn(1, 128, 2, 2, 2, generator=g)
    from flash_vaed.decoder import FlashDecoder

    ref = FlashDecoder(Family.LTXV, "teacher", teacher, dec.latent_norm, "ltxv-0.9.1")
    ours = dec.decode(z, generator=torch.Generator().manual_seed(1))
    theirs = ref.decode(z, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)
    # the real 0.9.1 config, without LTX-2's keys: the LTX-Video 0.9 family
    assert LTX2DecoderConfig.from_comfy_config(config).family is Family.LTXV


# ---- what is refused, and files without their config ---------------------------------------------


@pytest.mark.parametrize("prefix", ["", "vae."])
def test_diffusion_decoder_is_refused_first(tmp_path, prefix):
    """Even next to the conv VAE's probe key and a config, the diffusion decoder is named and refused."""
    tensors = {
        f"{prefix}decoder.conv_in_x_t.weight": torch.zeros(8, 3, 3, 3, 3),
        f"{prefix}decoder.up_blocks.0.res_blocks.0.conv1.conv.weight": torch.zeros(8, 8, 3, 3, 3),
    }
    path = tmp_path / "ltx-2.5-diffusion-decoder.safetensors"
    save_file(
        tensors, str(path), metadata={"config": json.dumps({"vae": {"decoder_blocks": [["res_x", 1]]}})}
    )
    with pytest.raises(CheckpointError, match=r"(?s)diffusion\* decoder.*conv video VAE.*supported"):
        load_decoder(path)


@pytest.mark.parametrize(
    ("name", "says"),
    [("ltx2_comfy", "warns 'Missing VAE keys' for 42"), ("ltx23_comfy", "fails to load it")],
)
def test_configless_ltx2_files_are_refused_saying_what_comfyui_does(name, says):
    shapes = manifest_shapes(load_manifest(name))
    with pytest.raises(CheckpointError) as err:
        detect(shapes_only(shapes, None, "stripped.safetensors"))
    message = str(err.value)
    assert "stripped.safetensors" in message and says in message
    assert "metadata" in message and "as published" in message


def test_configless_timestep_conditioned_file_is_read_as_comfyui_does(caplog):
    """ComfyUI decodes it with its LTX-Video 0.9.5 guess, which is the same decoder: so do we, and say so."""
    shapes = manifest_shapes(load_manifest("ltx2_comfy_tc"))
    with caplog.at_level(logging.INFO, logger="flash_vaed.checkpoint.load"):
        recipe = detect(shapes_only(shapes))
    assert (recipe.family, recipe.layout) == (Family.LTXV, "ltxv-0.9.5")
    assert "no VAE config in its metadata" in caplog.text and "exactly" in caplog.text


def test_bad_config_metadata_is_an_error_naming_the_file(tmp_path):
    meta, _, manifest = reference("ltx23_reduced")
    weights = generate(manifest, seed=0, include=("decoder.", "per_channel_statistics."))
    path = tmp_path / "broken.safetensors"
    save_file(weights, str(path), metadata={"config": "{not json"})
    with pytest.raises(CheckpointError, match="broken.safetensors.*not valid JSON"):
        load_decoder(path)
    config = json.loads(meta["config"])["vae"]
    config["decoder_blocks"] = [*config["decoder_blocks"], ["compress_twice", {}]]
    save_file(weights, str(path), metadata={"config": json.dumps({"vae": config})})
    with pytest.raises(CheckpointError, match="'compress_twice'"):
        load_decoder(path)


def test_state_dict_with_its_metadata_loads_like_the_file(tmp_path):
    """What the Prune & Distill node hands over for a VAE ComfyUI built from a config: weights + config."""
    path, meta, ref = reference_file(tmp_path, "ltx20_reduced")
    weights = load_file(str(path))
    with safe_open(str(path), "pt") as f:
        metadata = f.metadata()
    with pytest.raises(CheckpointError):  # the bare state dict has lost the architecture
        load_decoder(weights)
    dec = load_decoder(from_state_dict(weights, metadata))
    assert dec.family is Family.LTX2
    assert (decode_as_reference(dec, meta, ref["latent"]) - ref["video"]).abs().max().item() <= TOL


# ---- encoders ---------------------------------------------------------------------------------------


def encoder_reference(name: str) -> tuple[dict, dict[str, torch.Tensor], dict]:
    path = DATA / f"{name}.safetensors"
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    manifest = (
        load_manifest(meta["manifest"]) if meta["manifest"] else {"keys": json.loads(meta["manifest_keys"])}
    )
    return meta, load_file(str(path)), manifest


def check_encoder(tmp_path: Path, name: str) -> None:
    meta, ref, manifest = encoder_reference(name)
    include = ("encoder.", "per_channel_statistics.", "decoder.up_blocks.0.res_blocks.0.conv1.")
    weights = generate(manifest, seed=0, include=include)
    path = tmp_path / f"{name}.safetensors"
    save_file(weights, str(path), metadata={"config": meta["config"]})
    del weights
    enc = load_encoder(path)
    assert enc.family is Family.LTX2 and enc.layout == "ltx2-encoder (config)"
    ours = enc.encode_images(ref["images"])
    assert ours.shape == ref["latent"].shape
    err = (ours - ref["latent"]).abs().max().item()
    assert err <= TOL, f"{name}: max abs error {err:.3g} vs ComfyUI's VAE Encode"


@pytest.mark.parametrize("name", ["ltx20_encoder_reduced", "ltx23_encoder_reduced"])
def test_load_encoder_encodes_like_comfyui(tmp_path, name):
    check_encoder(tmp_path, name)


@pytest.mark.slow
def test_full_size_ltx23_encoder_encodes_like_comfyui(tmp_path):
    check_encoder(tmp_path, "ltx23_encoder_full")


@pytest.mark.parametrize("name", list(REAL))
def test_real_encoder_layouts_build_exactly(name):
    manifest = load_manifest(name)
    shapes = manifest_shapes(manifest)
    src = shapes_only(shapes, {"config": json.dumps({"vae": manifest["comfy_config"]})})
    recipe = detect(src, ENCODER_LAYOUTS, part="encoder")
    assert recipe.family is Family.LTX2
    with torch.device("meta"):
        module = recipe.build()
    built = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    assert built == {k: tuple(v) for k, v in shapes.items() if k.startswith("encoder.")}
    assert (module.time_stride, module.space_stride) == (8, 32)


def test_materialize_reads_the_real_keys_only():
    """A full-size LTX-2.3 decoder from a source whose tensors are zeros: strict, nothing else read."""
    manifest = load_manifest("ltx23_comfy")
    shapes = manifest_shapes(manifest)
    asked: list[str] = []

    def load(names):
        names = list(names)
        asked.extend(names)
        return {n: torch.zeros(()).expand(shapes[n]) for n in names}

    src = TensorSource(shapes, load, {"config": json.dumps({"vae": manifest["comfy_config"]})})
    module = materialize(detect(src))
    assert sum(p.numel() for p in module.parameters()) == manifest["num_decoder_values"]
    assert asked and all(k.startswith("decoder.") for k in asked)
