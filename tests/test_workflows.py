"""Every file in workflows/: served as a template, valid on the real ComfyUI but for the absent model files,
loadable in the real frontend exactly as saved, and its decode part runs (tiny seeded weights) through the
HTTP API and through the browser.

The decode part of a workflow is the workflow with its sampler replaced by its own empty latent at 64 px
(or, for image-to-video, by the start image encoded with the workflow's VAE): the diffusion models and text
encoders are never loaded. One server serves the whole module; the frontend tests run once per frontend
(support.frontend.FRONTENDS: the bundled one on that server, the newest on a second server with the same files).

ltx2_3_t2v is ComfyUI's LTX-2.3 template, whose LTX-2 nodes ComfyUI 0.3.75 does not have (NEEDS_NEWER_COMFYUI):
the tests check that those, and only those, are what 0.3.75 lacks; its decode part is its Flash-VAED nodes
(as the file sets them) on the template's empty latent at 64 px, into its Create Video and Save Video. The
template's sampling, latent upscaling and audio decode are not run here.
"""

from __future__ import annotations

import contextlib
import copy
import json
import shutil
import urllib.error
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.server import (
    InvalidWorkflow,
    comfy_server,
    free_models,
    get_json,
    output_files,
    post_json,
    run_prompt,
    to_api_prompt,
)
from support.frontend import (
    BUNDLED,
    FRONTENDS,
    frontend_or_skip,
    frontend_or_skip_version,
    named_value_problems,
    workflow_meaning,
)
from support.tiny_clips import write_clips
from support.tiny_models import write_models

REPO_ROOT = Path(__file__).resolve().parents[1]
WORKFLOW_DIR = REPO_ROOT / "workflows"
WORKFLOWS = sorted(p.stem for p in WORKFLOW_DIR.glob("*.json"))
EXPECTED = {
    "wan21_t2v", "wan21_i2v", "ltxv_t2v", "wan21_compare_decoders", "wan21_prune_distill",
    "wan22_14b_t2v", "wan22_14b_i2v", "wan22_5b_ti2v", "ltx2_3_t2v",
}  # fmt: skip
# Workflows made from newer ComfyUI templates: the node types of theirs that ComfyUI 0.3.75 lacks.
NEEDS_NEWER_COMFYUI = {
    "ltx2_3_t2v": {
        "ComfyMathExpression", "ComfySwitchNode", "LTXAVTextEncoderLoader", "LTXVAudioVAEDecode",
        "LTXVAudioVAELoader", "LTXVConcatAVLatent", "LTXVEmptyLatentAudio", "LTXVImgToVideoInplace",
        "LTXVLatentUpsampler", "LTXVSeparateAVLatent", "ManualSigmas", "ResizeImageMaskNode",
        "TextGenerateLTX2Prompt",
    },
}  # fmt: skip
SAMPLERS = {"KSampler", "KSamplerAdvanced", "SamplerCustom", "SamplerCustomAdvanced"}
EMPTY_LATENTS = {"EmptyHunyuanLatentVideo", "EmptyLTXVLatentVideo", "EmptyHunyuanImageLatent"}
# Wan 2.2 5B's latent: zeros of 48 channels, unless a start image is connected (then it encodes it)
EMPTY_UNLESS_START_IMAGE = {"Wan22ImageToVideoLatent"}
SMALL = {"width": 64, "height": 64, "length": 9}  # Wan: 3 latent frames of 8x8; LTX: 2 of 2x2
# Inputs naming files the test server does not have (diffusion models, text encoders, CLIP vision).
MODEL_FILE_INPUTS = {"unet_name", "clip_name", "ckpt_name"}
# The user's own training clips (a folder in input/ the test server lacks): the full workflow must not train.
# ComfyUI 0.3.75 reports a failed validate_inputs once per input it takes: the missing videos folder marks
# preset (the node's other combo) too
USER_DATA_INPUTS = {
    ("FlashVAEDPruneDistill", "videos", "custom_validation_failed"),
    ("FlashVAEDPruneDistill", "preset", "custom_validation_failed"),
}
# Prune & Distill in a decode part: a few steps of the tiny student on tiny clips (input/TINY_CLIPS).
TINY_CLIPS = "tiny_clips"
TINY_DISTILL = {
    "videos": TINY_CLIPS,
    "preset": "tiny",
    "steps": 2,
    "crop_px": 32,
    "clip_frames": 5,
    "resume": False,
}


# The node types of the loaded graph, its subgraphs' included, that the frontend has no definition for.
UNREGISTERED_NODE_TYPES_JS = """
() => {
  const types = new Set(), graph = window.app.graph;
  const visit = (g) => { for (const n of g.nodes ?? g._nodes ?? []) types.add(n.type); };
  visit(graph);
  for (const sg of graph.subgraphs?.values?.() ?? []) visit(sg);
  return [...types].filter((t) => !(t in window.LiteGraph.registered_node_types));
}
"""


def load(name: str) -> dict:
    return json.loads((WORKFLOW_DIR / f"{name}.json").read_text())


def every_node(workflow: dict) -> list[dict]:
    """The UI-format workflow's nodes, those inside its subgraphs included."""
    subgraphs = (workflow.get("definitions") or {}).get("subgraphs") or []
    return list(workflow["nodes"]) + [n for sg in subgraphs for n in sg["nodes"]]


def api_prompt(name: str, url: str, object_info: dict) -> dict:
    """The workflow as an API prompt; for a NEEDS_NEWER_COMFYUI one, its decode part (see the docstring)."""
    if name in NEEDS_NEWER_COMFYUI:
        return flash_part(load(name), object_info)
    return decode_part(to_api_prompt(load(name), url), object_info)


def flash_part(workflow: dict, object_info: dict) -> dict:
    """The Flash-VAED decode of a workflow whose other nodes this ComfyUI lacks, as an API prompt: its empty
    latent (at 64 px), its Load Flash-VAED and Flash-VAED Decode with their widget values, and the Create
    Video (without audio) and Save Video it feeds."""
    nodes = {n["type"]: n for n in every_node(workflow)}

    def widgets(kind: str, skip: set[str] = frozenset()) -> dict:
        spec = object_info[kind]["input"]
        names = [k for group in ("required", "optional") for k in spec.get(group, {})]
        linked = {i["name"] for i in nodes[kind].get("inputs", []) if i.get("link") is not None}
        names = [k for k in names if k not in linked | skip and spec.get("required", {}).get(k, [None])[0]
                 not in ("LATENT", "FLASH_VAED", "IMAGE", "VAE", "AUDIO", "VIDEO")]  # fmt: skip
        values = [v for v in nodes[kind]["widgets_values"] if v not in ("fixed", "randomize")]
        return dict(zip(names, values, strict=False))

    create = {k: v for k, v in widgets("CreateVideo").items() if k == "fps"}
    save = widgets("SaveVideo")
    return {
        "1": {"class_type": "EmptyLTXVLatentVideo", "inputs": {**SMALL, "batch_size": 1}},
        "2": {"class_type": "FlashVAEDLoad", "inputs": widgets("FlashVAEDLoad")},
        "3": {"class_type": "FlashVAEDDecode", "inputs": {"flash_vaed": ["2", 0], "samples": ["1", 0],
                                                          **widgets("FlashVAEDDecode")}},
        "4": {"class_type": "CreateVideo", "inputs": {"images": ["3", 0], "fps": create.get("fps", 24.0)}},
        "5": {"class_type": "SaveVideo", "inputs": {"video": ["4", 0], "filename_prefix": save["filename_prefix"],
                                                    "format": "auto", "codec": "auto"}},
    }  # fmt: skip


@contextlib.contextmanager
def workflow_server(
    comfy_root: Path, tmp_path_factory: pytest.TempPathFactory, frontend: str | None = None
) -> Iterator[str]:
    """ComfyUI with this pack, the tiny model files the workflows name, and ComfyUI's example.png input."""
    run_dir = tmp_path_factory.mktemp(f"comfy-workflows-{frontend or BUNDLED}")
    models = write_models(run_dir.parent / f"{run_dir.name}-models")
    (run_dir / "input").mkdir()
    shutil.copy(comfy_root / "input" / "example.png", run_dir / "input" / "example.png")
    write_clips(run_dir / "input" / TINY_CLIPS, count=2, frames=9, size=32)
    with comfy_server(
        comfy_root, nodes=[REPO_ROOT], models_dir=models, run_dir=run_dir, frontend=frontend
    ) as url:
        yield url


@pytest.fixture(scope="module")
def server(comfy_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with workflow_server(comfy_root, tmp_path_factory) as url:
        yield url


@pytest.fixture(scope="module")
def object_info(server: str) -> dict:
    return get_json(server, "/object_info")


@pytest.fixture(scope="module", params=FRONTENDS)
def ui(request: pytest.FixtureRequest, comfy_root: Path, tmp_path_factory: pytest.TempPathFactory):
    """The frontend in Chromium: the bundled one on ``server``, another on a server of its own."""
    with contextlib.ExitStack() as stack:
        if request.param == BUNDLED:
            url = request.getfixturevalue("server")
        else:
            version = frontend_or_skip_version(request.param)
            url = stack.enter_context(workflow_server(comfy_root, tmp_path_factory, version))
        yield stack.enter_context(frontend_or_skip(url))


# ---- the decode part of a workflow ---------------------------------------------------------------------


def decode_part(prompt: dict, object_info: dict) -> dict:
    """API prompt -> the same graph with each sampler's output replaced by a small latent (every empty latent
    small), Prune & Distill training a tiny student for a few steps (under a new name), pruned to what the
    output nodes need."""
    p = copy.deepcopy(prompt)
    for node in p.values():
        if node["class_type"] in EMPTY_LATENTS:
            node["inputs"].update(SMALL)
        if node["class_type"] == "FlashVAEDPruneDistill":
            node["inputs"].update(TINY_DISTILL, output_name=f"decode_part_{uuid.uuid4().hex[:8]}")
    next_id = max(int(k) for k in p) + 1
    for node in p.values():
        if node["class_type"] in EMPTY_UNLESS_START_IMAGE and "start_image" not in node["inputs"]:
            node["inputs"].update(SMALL)
    encoded: set[str] = set()
    for sid in _samplers_in_order(p):
        src_id, src_slot = p[sid]["inputs"]["latent_image"]
        src = p[src_id]
        if src_id in encoded:  # the second expert of a chain: the first one's latent is made already
            latent = [src_id, src_slot]
        elif src["class_type"] in EMPTY_LATENTS or (
            src["class_type"] in EMPTY_UNLESS_START_IMAGE and "start_image" not in src["inputs"]
        ):
            src["inputs"].update(SMALL)
            latent = [src_id, src_slot]
        else:  # image to video: the start image, shrunk, through the workflow's own VAE (the drop-in)
            scale, encode = str(next_id), str(next_id + 1)
            next_id += 2
            p[scale] = {"class_type": "ImageScale", "inputs": {
                "image": src["inputs"]["start_image"], "upscale_method": "area", "width": 64, "height": 64,
                "crop": "disabled"}}  # fmt: skip
            p[encode] = {
                "class_type": "VAEEncode",
                "inputs": {"pixels": [scale, 0], "vae": src["inputs"]["vae"]},
            }
            latent = [encode, 0]
            encoded.add(encode)
        del p[sid]
        for node in p.values():
            for key, value in node["inputs"].items():
                if value == [sid, 0]:
                    node["inputs"][key] = latent
    needed: set[str] = set()
    todo = [k for k, n in p.items() if object_info[n["class_type"]].get("output_node")]
    while todo:
        nid = todo.pop()
        if nid not in needed:
            needed.add(nid)
            todo += [v[0] for v in p[nid]["inputs"].values() if isinstance(v, list) and len(v) == 2]
    return {k: v for k, v in p.items() if k in needed}


def _samplers_in_order(prompt: dict) -> list[str]:
    """Sampler ids, each after the samplers it takes its latent from (Wan 2.2 14B chains two experts): once a
    sampler is replaced by the small latent, the next one in the chain reads that latent."""
    todo = [k for k, n in prompt.items() if n["class_type"] in SAMPLERS]
    ordered: list[str] = []
    while todo:
        ready = [k for k in todo if prompt[k]["inputs"]["latent_image"][0] not in todo]
        ordered += ready
        todo = [k for k in todo if k not in ready]
    return ordered


def check_decode_outputs(name: str, prompt: dict, entry: dict) -> None:
    """Every output node wrote its files; every Flash-VAED Decode reported its statistics."""
    outputs = entry["outputs"]
    for nid, node in prompt.items():
        kind = node["class_type"]
        if kind in ("SaveVideo", "PreviewImage"):
            assert outputs.get(nid, {}).get("images"), (
                f"{name}: {kind} {nid} produced nothing: {outputs.get(nid)}"
            )
        if kind == "FlashVAEDDecode":
            (stats,) = outputs[nid]["flash_vaed_stats"]
            # 3 Wan latent frames -> 4 * 2 + 1 = 9; 2 LTX latent frames -> 8 * 1 + 1 = 9
            assert stats["frames"] == 9 and stats["size"] == [64, 64], stats
    if any(node["class_type"] == "SaveVideo" for node in prompt.values()):
        assert {r["filename"].rsplit(".", 1)[-1] for r in output_files(entry)} >= {"mp4"}, output_files(entry)


def validation_errors(url: str, prompt: dict) -> list[tuple[str, str, str]]:
    """(class_type, input name, error type) of every validation error of ``prompt`` (empty: it is valid)."""
    try:
        post_json(url, "/prompt", {"prompt": prompt, "client_id": "validation-only"})
    except urllib.error.HTTPError as e:
        body = json.loads(e.read() or b"{}")
        errors = [
            (ne["class_type"], (err.get("extra_info") or {}).get("input_name", ""), err.get("type", ""))
            for ne in (body.get("node_errors") or {}).values()
            for err in ne["errors"]
        ]
        return errors or [("prompt", "", json.dumps(body.get("error")))]
    raise AssertionError("the full workflow validated, but its model files are absent: it should not")


def only_missing_model_files(errors: list[tuple[str, str, str]]) -> bool:
    """Every error names a model file (or the user's training clips) the test server does not have."""
    return bool(errors) and all(
        (inp in MODEL_FILE_INPUTS and kind == "value_not_in_list") or (node, inp, kind) in USER_DATA_INPUTS
        for node, inp, kind in errors
    )


# ---- templates ---------------------------------------------------------------------------------------


def test_the_expected_workflows_are_shipped():
    assert set(WORKFLOWS) == EXPECTED
    assert not (REPO_ROOT / "example_workflows").exists(), (
        "ComfyUI 0.3.75 lists example_workflows/ AND workflows/: a second folder (or a link) shows every "
        "template twice"
    )


def test_workflow_meaning_ignores_how_a_frontend_writes_but_not_what_changed():
    saved = load("wan21_compare_decoders")
    rewritten = copy.deepcopy(saved)  # what 1.58.1's Export writes for the same graph
    rewritten["extra"]["frontendVersion"] = "1.58.1"
    for node in rewritten["nodes"]:
        node["size"] = [node["size"][0] + 40, node["size"][1]]
        if node.get("widgets_values") == []:
            del node["widgets_values"]
    for group in rewritten["groups"]:
        group.pop("font_size")
    assert workflow_meaning(rewritten) == workflow_meaning(saved)

    decode = next(n for n in rewritten["nodes"] if n["type"] == "FlashVAEDDecode")
    decode["widgets_values_named"] = {"mode": "auto", "chunk_frames": 4, "tile_px": 512, "overlap_px": 64}
    assert decode["widgets_values"] == ["auto", 4, 512, 64] and not named_value_problems(rewritten)
    decode["widgets_values_named"]["tile_px"] = 256
    assert named_value_problems(rewritten) and workflow_meaning(rewritten) == workflow_meaning(saved)

    for change in (
        lambda wf: wf["nodes"][0]["widgets_values"].__setitem__(0, "other.safetensors"),
        lambda wf: wf["links"][0].__setitem__(4, 1),
        lambda wf: wf["groups"][0].__setitem__("title", "renamed"),
        lambda wf: wf["nodes"].pop(),
    ):
        changed = copy.deepcopy(saved)
        change(changed)
        assert workflow_meaning(changed) != workflow_meaning(saved)


@pytest.mark.comfy
def test_template_browser_lists_each_workflow_once(server: str):
    listed = get_json(server, "/workflow_templates")
    assert list(listed) == [REPO_ROOT.name], listed
    names = listed[REPO_ROOT.name]
    assert sorted(names) == WORKFLOWS, names  # sorted() keeps duplicates, so this also checks "once"
    for name in names:  # what the template browser fetches when the user picks one
        assert get_json(server, f"/api/workflow_templates/{REPO_ROOT.name}/{name}.json") == load(name)


# ---- through the HTTP API (UI format converted by the harness) -----------------------------------------


@pytest.mark.comfy
@pytest.mark.parametrize("name", WORKFLOWS)
def test_workflow_is_valid_but_for_missing_model_files(server: str, name: str):
    if name in NEEDS_NEWER_COMFYUI:
        with pytest.raises(InvalidWorkflow) as err:
            to_api_prompt(load(name), server)
        unknown = {p.rsplit(": ", 1)[-1] for p in err.value.problems if "not known to the server" in p}
        assert unknown == NEEDS_NEWER_COMFYUI[name], err.value.problems
        assert {"FlashVAEDLoad", "FlashVAEDDecode"} <= {n["type"] for n in every_node(load(name))}
        return
    errors = validation_errors(server, to_api_prompt(load(name), server))
    assert only_missing_model_files(errors), errors


@pytest.mark.comfy
@pytest.mark.parametrize("name", WORKFLOWS)
def test_decode_part_runs_through_the_api(server: str, object_info: dict, name: str):
    prompt = api_prompt(name, server, object_info)
    assert {"FlashVAEDLoad", "FlashVAEDPruneDistill"} & {n["class_type"] for n in prompt.values()}
    free_models(server)  # the workflows share nodes: a cached node reports no outputs
    entry = run_prompt(server, prompt, timeout_s=300)
    check_decode_outputs(name, prompt, entry)


@pytest.mark.comfy
@pytest.mark.slow
def test_ltx_decode_part_with_the_official_student_layout(comfy_server, tmp_path: Path):
    """ltxv_t2v's decode part with a Flash_VAED_LTX.pth in the official layout (67 M values)."""
    models = write_models(tmp_path / "models", ltx="official")
    url = comfy_server(nodes=[REPO_ROOT], models_dir=models)
    prompt = decode_part(to_api_prompt(load("ltxv_t2v"), url), get_json(url, "/object_info"))
    entry = run_prompt(url, prompt, timeout_s=600)
    check_decode_outputs("ltxv_t2v", prompt, entry)
    (decode,) = [nid for nid, n in prompt.items() if n["class_type"] == "FlashVAEDDecode"]
    assert entry["outputs"][decode]["flash_vaed_stats"][0]["decoder"] == "Flash_VAED_LTX.pth"


# ---- through the frontend ------------------------------------------------------------------------------


@pytest.mark.comfy
@pytest.mark.parametrize("name", WORKFLOWS)
def test_workflow_loads_in_the_frontend_as_saved(ui, name: str):
    workflow = load(name)
    if name in NEEDS_NEWER_COMFYUI:
        # the frontend loads it with exactly the template's nodes ComfyUI 0.3.75 lacks left unregistered (the
        # pack's are there); the missing-node dialogs are closed for the next workflows
        ui.load(workflow)
        subgraphs = {sg["id"] for sg in workflow["definitions"]["subgraphs"]}
        assert set(ui.js(UNREGISTERED_NODE_TYPES_JS)) - subgraphs == NEEDS_NEWER_COMFYUI[name]
        for _ in range(5):
            if not ui.messages():
                break
            ui.page.keyboard.press("Escape")
            ui.page.wait_for_timeout(300)
        assert not ui.messages(), ui.messages()
        return
    ui.load(workflow)
    assert not [m for m in ui.messages() if "missing" in m.lower()], ui.messages()
    # loaded and exported again by the frontend, the workflow means the same (nodes, links, values, groups)
    again = ui.export_workflow()
    assert again["extra"]["frontendVersion"] == ui.version
    assert workflow_meaning(again) == workflow_meaning(workflow), (
        f"{name} changed in a load/export round trip"
    )
    assert not named_value_problems(again), named_value_problems(again)
    if ui.version == workflow["extra"]["frontendVersion"]:  # the frontend that saved it: unchanged as written
        for key in ("nodes", "links", "groups", "version"):
            assert again[key] == workflow[key], f"{name}: {key} differs after a load/export round trip"
    # queued as the Run button does: only the absent model files are refused
    status, body = ui.queue()
    assert status == 400, body
    errors = [
        (ne["class_type"], (e.get("extra_info") or {}).get("input_name", ""), e.get("type", ""))
        for ne in body["node_errors"].values()
        for e in ne["errors"]
    ]
    assert only_missing_model_files(errors), errors


@pytest.mark.comfy
@pytest.mark.parametrize(
    "name",  # the compare workflow has both decoders and every output kind; the others add ~15 s each
    [n if n == "wan21_compare_decoders" else pytest.param(n, marks=pytest.mark.slow) for n in WORKFLOWS],
)
def test_decode_part_runs_in_the_frontend(ui, object_info: dict, name: str):
    prompt = api_prompt(name, ui.url, object_info)
    free_models(ui.url)  # run, not cached: a cached node reports no outputs
    ui.load(prompt)
    entry = ui.run(timeout_s=300)
    check_decode_outputs(name, prompt, entry)
    for nid, node in prompt.items():
        if node["class_type"] == "FlashVAEDDecode":
            shown = ui.js(
                "id => window.app.graph.getNodeById(id).widgets.find(w => w.name === 'flash_vaed_stats')?.value",
                int(nid),
            )
            assert shown and shown.startswith("9 frames 64×64 in "), shown
