"""The nodes, run in-process against ComfyUI's modules (no server) with a tiny random checkpoint."""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
TINY_NAME = "tiny-random"  # the checkpoint folder the `tiny_checkpoint` fixture writes

NODE_IDS = ["VincieModelLoader", "VincieSessionBuilder", "VincieSessionToImages", "VincieUndo", "VincieNIPSampler",
            "VincieStoryChain", "VincieCompose", "VincieMaskPredictor", "VincieMaskTransform", "VincieLoraLoader"]


def scene(h: int = 48, w: int = 64) -> torch.Tensor:
    image = torch.zeros(1, h, w, 3)
    image[..., 2] = 0.3
    image[0, 8:24, 8:24, 0] = 0.9
    return image


@pytest.fixture()
def session(pack, model):
    nodes = pack.nodes.session
    return nodes.VincieSessionBuilder.execute(model, seed=1, resolution=0, negative_prompt="", camera_prefix="",
                                              image=scene()).args[0]


def run(node, **inputs):
    return node.execute(**inputs).args


# ---------------------------------------------------------------------------------------------- entry point
def test_entry_point_outside_comfyui_exports_nothing():
    code = textwrap.dedent(f"""
        import importlib.util, sys
        spec = importlib.util.spec_from_file_location("pack", {str(REPO / "__init__.py")!r},
                                                      submodule_search_locations=[{str(REPO)!r}])
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        assert module.__all__ == [] and not hasattr(module, "comfy_entrypoint"), dir(module)
        assert not hasattr(module, "NODE_CLASS_MAPPINGS")
        assert "comfy_api" not in sys.modules and "torch" not in sys.modules
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/", check=False)
    assert result.returncode == 0, result.stderr


def test_entry_point_registers_every_node_with_v3(pack):
    import asyncio

    assert not hasattr(pack, "NODE_CLASS_MAPPINGS")  # it would make ComfyUI ignore comfy_entrypoint
    extension = asyncio.run(pack.comfy_entrypoint())
    nodes = asyncio.run(extension.get_node_list())
    assert [n.define_schema().node_id for n in nodes] == NODE_IDS


def test_every_node_is_documented(pack):
    for node in pack.NODES:
        schema = node.define_schema()
        assert schema.category == "VINCIE" and schema.display_name.startswith("VINCIE ")
        assert len(schema.description) > 40
        for spec in schema.inputs:
            is_socket = spec.get_io_type() in ("IMAGE", "MASK", "VINCIE_MODEL", "VINCIE_SESSION")
            assert is_socket or spec.tooltip, f"{schema.node_id}.{spec.id} has no tooltip"


# ---------------------------------------------------------------------------------------------- model loading
def test_loader_lists_folders_and_hides_the_missing_embedded_model(pack, tiny_checkpoint):
    runtime = pack.nodes.runtime
    (tiny_checkpoint / "not-a-checkpoint").mkdir(exist_ok=True)
    from vincie_sdk import VincieModel

    single = tiny_checkpoint / "single-tiny.safetensors"
    if not single.exists():
        VincieModel.from_pretrained(tiny_checkpoint / TINY_NAME).save_single_file(single)
    (tiny_checkpoint / "unrelated.safetensors").write_bytes(b"junk")
    names = runtime.list_checkpoints()
    assert TINY_NAME in names and "not-a-checkpoint" not in names
    assert "single-tiny.safetensors" in names and "unrelated.safetensors" not in names
    assert runtime.resolve_checkpoint("single-tiny.safetensors") == str(single.resolve())
    embedded = (REPO / "vincie_sdk" / "weights" / "vincie-shapes" / "config.json").is_file()
    assert ("vincie-shapes" in names) == embedded
    with pytest.raises(FileNotFoundError, match="'nope' not found in the 'vincie' model folders"):
        runtime.load_model("nope")


def test_loader_caches_and_comfyui_manages_the_weights(pack, comfy, tiny_checkpoint):
    import comfy.model_management as mm

    runtime = pack.nodes.runtime
    loader = pack.nodes.loader.VincieModelLoader
    a = run(loader, checkpoint=TINY_NAME, dtype="float32", text_encoder="cpu")[0]
    assert run(loader, checkpoint=TINY_NAME, dtype="float32", text_encoder="cpu")[0] is a
    assert run(loader, checkpoint=TINY_NAME, dtype="float32", text_encoder="gpu")[0] is not a
    runtime.prepare(a)
    loaded = [p.model for p in mm.loaded_models()]
    assert any(getattr(w, "dit", None) is a.dit for w in loaded)
    mm.unload_all_models()  # what POST /free does
    assert a not in runtime.cached_models() and not mm.loaded_models()
    b = run(loader, checkpoint=TINY_NAME, dtype="float32", text_encoder="cpu")[0]
    assert b is not a  # reloaded from disk after the unload


# ---------------------------------------------------------------------------------------------- sessions
def test_builder_errors_are_clear(pack, model):
    builder = pack.nodes.session.VincieSessionBuilder
    common = {"seed": 1, "resolution": 0, "negative_prompt": "", "camera_prefix": ""}
    with pytest.raises(ValueError, match="connect an image to start a session, or a session"):
        builder.execute(model, **common)
    batch = run(builder, model=model, image=torch.rand(2, 32, 32, 3), **common)[0]
    assert len(batch.frames) == 2 and batch.frames[1].prompt == "<IMG1>: "  # frame 0 + a reference
    with pytest.raises(ValueError, match=r"image: image 400x4 at resolution 64 leaves no \d+x\d+ block"):
        builder.execute(model, image=torch.zeros(1, 4, 400, 3), **common)


def test_builder_continues_a_session_without_changing_it(pack, model, session):
    builder = pack.nodes.session.VincieSessionBuilder
    s2 = run(builder, model=model, seed=7, resolution=0, negative_prompt="blurry", camera_prefix="", session=session)[0]
    assert s2 is not session and s2.settings.seed == 7 and s2.settings.negative_prompt == "blurry"
    assert session.settings.seed == 1 and session.settings.negative_prompt is None
    with pytest.raises(ValueError, match="keeps its working size"):
        builder.execute(model, seed=1, resolution=128, negative_prompt="", camera_prefix="", session=session)


def test_nip_sampler_returns_a_new_session_and_reports_every_step(pack, session, progress_calls):
    image, s1 = run(pack.nodes.sampling.VincieNIPSampler, session=session, instruction="make the square blue",
                    steps=3, cfg=1.0, seed=-1)
    w, h = session.size
    assert image.shape == (1, h, w, 3) and 0 <= image.min() and image.max() <= 1
    assert session.turns == 0 and s1.turns == 1 and s1.prompts == ["make the square blue"]
    assert progress_calls == [(1, 3), (2, 3), (3, 3)]
    # Re-running on the same (cached) input gives the same turn again: the input was not extended.
    image2, s1b = run(pack.nodes.sampling.VincieNIPSampler, session=session, instruction="make the square blue",
                      steps=3, cfg=1.0, seed=-1)
    assert s1b.turns == 1 and torch.equal(image, image2)


def test_masks_of_another_size_are_resized_with_a_note(pack, session, caplog):
    mask = torch.zeros(1, 64, 64)
    mask[0, :20, :20] = 1
    with caplog.at_level(logging.WARNING):
        _, s1 = run(pack.nodes.sampling.VincieNIPSampler, session=session, instruction="edit here", steps=1,
                    cfg=1.0, seed=3, mask=mask, next_mask=mask)
    assert "mask is 64x64, the session works at" in caplog.text
    assert len(s1.masks) == 2 and s1.masks[0].size == session.size


def test_empty_instructions_fail_validation(pack):
    sampling, masks = pack.nodes.sampling, pack.nodes.masks
    assert "instruction is empty" in sampling.VincieNIPSampler.validate_inputs(instruction="  ")
    assert "instruction is empty" in sampling.VincieStoryChain.validate_inputs(instructions="\n")
    assert "instruction is empty" in masks.VincieMaskPredictor.validate_inputs(instruction="")
    assert sampling.VincieCompose.validate_inputs(prompt="put <IMG0> left") is True
    assert sampling.VincieNIPSampler.validate_inputs(instruction=None) is True  # linked: checked at run time


def test_interrupt_is_honoured_within_one_step(pack, comfy, session):
    import comfy.model_management as mm
    import comfy.utils

    updates = []

    def hook(value, total, preview=None, node_id=None):
        updates.append(value)
        mm.interrupt_current_processing(True)  # the user presses Cancel during the first step

    comfy.utils.set_progress_bar_global_hook(hook)
    try:
        with pytest.raises(mm.InterruptProcessingException):
            pack.nodes.sampling.VincieNIPSampler.execute(session=session, instruction="x", steps=50, cfg=1.0, seed=-1)
    finally:
        comfy.utils.set_progress_bar_global_hook(None)
        mm.interrupt_current_processing(False)
    assert updates == [1]
    assert session.turns == 0


def test_story_chain_gives_every_frame(pack, session, progress_calls):
    frames, s = run(pack.nodes.sampling.VincieStoryChain, session=session, instructions="add a circle\n\nmove it left",
                    steps=2, cfg=1.0, seed=-1, chain_of_editing=False)
    w, h = session.size
    assert frames.shape == (3, h, w, 3) and s.turns == 2 and session.turns == 0
    assert progress_calls[-1] == (4, 4)
    frames, s = run(pack.nodes.sampling.VincieStoryChain, session=session, instructions="add a circle",
                    steps=1, cfg=1.0, seed=-1, chain_of_editing=True)
    assert frames.shape[0] == 2 and len(s.masks) == 2


def test_mask_predictor_leaves_the_session_alone(pack, session):
    for which in ("current", "next"):
        (mask,) = run(pack.nodes.masks.VincieMaskPredictor, session=session, instruction="the red square",
                      which=which, steps=1, cfg=1.0, seed=-1)
        w, h = session.size
        assert mask.shape == (1, h, w) and 0 <= mask.min() and mask.max() <= 1
    assert session.turns == 0 and len(session.frames) == 1


def test_mask_transform_node(pack):
    mask = torch.zeros(1, 8, 8)
    mask[0, 0, 0] = 1
    (moved,) = run(pack.nodes.masks.VincieMaskTransform, mask=mask, translate_x=0.5, translate_y=0.25, scale=1.0,
                   rotate=0.0, flip="none")
    assert moved[0, 2, 4] == 1 and moved.sum() == 1


def test_compose_takes_references_of_any_size(pack, model):
    b = torch.rand(2, 40, 40, 3)  # a batch counts image by image
    image, s = run(pack.nodes.sampling.VincieCompose, model=model, image_1=scene(), prompt="put <IMG0> next to <IMG1>",
                   seed=1, resolution=0, steps=1, cfg=1.0, image_2=b)
    w, h = s.size
    assert image.shape == (1, h, w, 3) and len(s.images) == 4 and s.turns == 1


def test_session_to_images_and_undo(pack, session):
    _, s1 = run(pack.nodes.sampling.VincieNIPSampler, session=session, instruction="a", steps=1, cfg=1.0, seed=-1,
                mask=torch.ones(1, 8, 8))
    _, s2 = run(pack.nodes.sampling.VincieNIPSampler, session=s1, instruction="b", steps=1, cfg=1.0, seed=-1)
    images, masks, prompts, turns = run(pack.nodes.session.VincieSessionToImages, session=s2)
    w, h = session.size
    assert images.shape == (3, h, w, 3) and masks.shape == (1, h, w) and prompts == "a\nb" and turns == 2
    _, empty_masks, _, _ = run(pack.nodes.session.VincieSessionToImages, session=session)
    assert empty_masks.shape == (1, h, w) and not empty_masks.any()
    s3, last = run(pack.nodes.session.VincieUndo, session=s2, turns=1)
    assert s3.turns == 1 and s2.turns == 2 and torch.equal(last[0], images[1])
