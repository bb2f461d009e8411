"""What a student file says about itself, checked against what it holds before anything is built.

Our student files describe their layout in metadata (`flash_vaed.spec`). The description is only text: a
few-KB file whose spec says `blocks` (Wan) or `mid_layers` (LTX) = 10**8 would have the builder create
modules for minutes and gigabytes before the strict key check could run. `implied_key_count` gives the
number of tensors a spec's module holds, in milliseconds (one small module per kind of block, built on the
meta device), so a description that does not fit the file is refused first; the shapes are compared on
the meta device after that (`load.materialize`), before any tensor is read.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from ..arch.ltx_student import LTXStudentDecoder, LTXStudentSpec, StudentResBlock
from ..arch.wan import WanFamilyDecoder, residual_block
from ..errors import CheckpointError
from ..finite import first_non_finite
from ..spec import DecoderSpec, Family


def _count(build) -> int:
    with torch.device("meta"):
        module: nn.Module = build()
    return len(module.state_dict())


def implied_key_count(spec: DecoderSpec | LTXStudentSpec) -> int:
    """State-dict keys of the module `spec` builds: the layout with one block per run of blocks, built on
    the meta device, plus the keys of each further (width -> width) block."""
    if isinstance(spec, DecoderSpec):
        one = dataclasses.replace(spec, stages=tuple(dataclasses.replace(s, blocks=1) for s in spec.stages))
        extra = sum(
            (s.blocks - 1) * _count(lambda s=s: residual_block(s.width, s.width, s.op)) for s in spec.stages
        )
        return _count(lambda: WanFamilyDecoder(one)) + extra
    one = dataclasses.replace(
        spec,
        mid_layers=min(spec.mid_layers, 1),
        stages=tuple(dataclasses.replace(s, layers=min(s.layers, 1)) for s in spec.stages),
    )
    runs = [(spec.mid_layers, spec.mid_width, spec.mid_op, False)]
    runs += [(s.layers, s.width, s.op, s.shortcut) for s in spec.stages]
    extra = sum(
        (n - 1) * _count(lambda w=w, op=op, sc=sc: StudentResBlock(w, w, op, sc))
        for n, w, op, sc in runs
        if n > 1
    )
    return _count(lambda: LTXStudentDecoder(one)) + extra


def check_spec_family(spec: DecoderSpec | LTXStudentSpec, family: Family, origin: str) -> None:
    """Raise CheckpointError when the spec cannot decode the latents of the family the file names."""
    if isinstance(spec, DecoderSpec):
        if spec.family is not family:
            raise CheckpointError(
                f"{origin}: its metadata names the family {family.value} but its student description is a "
                f"{spec.family.value} Wan-family decoder; the file is corrupt or edited: export it again."
            )
        return
    if spec.family is not family:
        raise CheckpointError(
            f"{origin}: its metadata names the family {family.value} but its student description is an "
            f"{spec.family.value} decoder; the file is corrupt or edited: export it again."
        )
    if spec.latent_channels != family.latent_channels or spec.out_channels != 3:
        raise CheckpointError(
            f"{origin}: its LTX student description reads {spec.latent_channels} latent channels and "
            f"writes {spec.out_channels}, for the family {family.value}; an LTX decoder reads "
            f"{family.latent_channels} and writes 3 (RGB). The file is corrupt or edited: export it again."
        )


def block_count(spec: DecoderSpec | LTXStudentSpec) -> int:
    """Residual blocks, upsamples and attention blocks of the module `spec` builds: each holds a tensor."""
    if isinstance(spec, DecoderSpec):
        return 3 + sum(s.blocks for s in spec.stages) + len(spec.stages) - 1
    return spec.mid_layers + sum(s.layers + s.upsample for s in spec.stages)


def check_spec_fits_file(spec: DecoderSpec | LTXStudentSpec, keys: int, origin: str) -> None:
    """Raise CheckpointError when the module `spec` describes holds another number of tensors than the
    file's `keys` (its decoder tensors), before that module is built."""
    # every block holds a tensor: a description of more blocks than the file has tensors is refused
    # without building even one of each kind
    blocks = block_count(spec)
    implied = blocks if blocks > keys else implied_key_count(spec)
    if implied != keys:
        raise CheckpointError(
            f"{origin}: its student description (metadata 'flash_vaed.spec') implies "
            f"{'at least ' if blocks > keys else ''}{implied} tensors, the "
            f"file holds {keys}; the file is corrupt or edited: nothing was built or loaded. Export or "
            "download it again."
        )


def tensor_problem(t: object, shape: torch.Size) -> str | None:
    """What keeps a tensor read from a checkpoint out of a decoder whose module expects `shape`, or None.
    The shape was checked against the file's header; a file replaced between that check and the read
    (or a .pth holding meta or sparse tensors, or NaN weights) is caught here."""
    if not isinstance(t, torch.Tensor):
        return f"is a {type(t).__name__}, not a tensor"
    if t.is_meta:
        return (
            "is on the meta device: the file holds its shape but no values (it was saved from an empty model)"
        )
    if t.layout is not torch.strided:
        return f"is a {t.layout} tensor; decoders take dense tensors (save it with .to_dense())"
    if not t.is_floating_point():
        return f"has dtype {t.dtype}, expected floating point"
    if t.shape != shape:
        return (
            f"has shape {tuple(t.shape)}, but the file's header said {tuple(shape)}: the file changed while "
            "it was read (replaced or still being copied?); load it again once it is complete"
        )
    bad = first_non_finite([("", t)])
    if bad:
        return (
            f"holds {bad[1]} NaN/Inf values of {t.numel()}: every decoded frame would be NaN. The file is damaged "
            "or was saved from a diverged training run: download or export it again"
        )
    return None
