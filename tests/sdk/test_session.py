"""Session behaviour on a tiny random model: history, context, caches, masks, persistence."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from vincie_sdk import Session, VincieModel
from vincie_sdk.config import TINY
from vincie_sdk.prompts import FrameKind


def test_multi_turn_edit_grows_the_context(tiny_model, source_image):
    s = Session(tiny_model, source_image, seed=3)
    assert s.size == (64, 48)
    img = s.edit("add a red circle")
    assert img.size == (64, 48) and img.mode == "RGB"
    s.edit("make it blue")
    assert s.prompts == ["add a red circle", "make it blue"] and s.turns == 2 and len(s.images) == 3
    assert [f.prompt for f in s.frames[1:]] == ["Based on <IMG0>, add a red circle. Output <IMG1>: ",
                                                "Based on <IMG1>, make it blue. Output <IMG2>: "]
    assert all(f.latent.shape == (6, 8, 16) for f in s.frames)


def test_turns_see_the_history(tiny_model, source_image):
    """The same instruction after a different history gives a different image (context is used)."""
    a = Session(tiny_model, source_image, seed=3)
    b = Session(tiny_model, source_image, seed=3)
    a.edit("add a red circle")
    b.edit("remove everything")
    out_a = np.asarray(a.edit("make it blue"), dtype=int)
    out_b = np.asarray(b.edit("make it blue"), dtype=int)
    assert np.abs(out_a - out_b).max() > 0


def test_text_cache_encodes_each_prompt_once(tiny_model, source_image):
    te = tiny_model.text_encoder
    te.cache_clear()
    s = Session(tiny_model, source_image, steps=2)
    s.edit("turn one")
    misses = te.cache_info().misses
    s.edit("turn two")
    assert te.cache_info().misses == misses + 1  # only the new prompt is encoded


def test_copy_is_independent_and_undo(tiny_model, source_image):
    s = Session(tiny_model, source_image, steps=2)
    s.edit("one")
    t = s.copy()
    t.edit("two")
    assert s.turns == 1 and t.turns == 2
    t.undo()
    assert t.turns == 1 and len(t.frames) == 2
    t.undo(5)
    assert t.turns == 0 and len(t.frames) == 1


@pytest.mark.parametrize("attention", ["full", "block_causal"])
def test_add_turn_records_a_given_result_as_if_generated(tiny_model, source_image, attention):
    model = VincieModel.from_random(dataclasses.replace(TINY, dit=dataclasses.replace(TINY.dit, attention=attention)),
                                    seed=0) if attention != TINY.dit.attention else tiny_model
    truth = source_image.transpose(0)  # another picture, at the source's size
    s = Session(model, source_image, seed=3, steps=2)
    s.edit("add a red circle")  # warms the block-causal cache with the generated frame
    s.undo()
    shown = s.add_turn("add a red circle", truth)
    assert shown.size == s.size and s.turns == 1 and s.prompts == ["add a red circle"]
    assert s.frames[-1].prompt == "Based on <IMG0>, add a red circle. Output <IMG1>: "
    fresh = Session(model, source_image, seed=3, steps=2)
    fresh.add_turn("add a red circle", truth)
    assert np.array_equal(np.asarray(shown), np.asarray(fresh.images[-1]))
    assert torch.equal(s.frames[-1].latent, fresh.frames[-1].latent)
    # The next turn sees the given image, not the generated one (no stale cache).
    np.testing.assert_array_equal(np.asarray(s.edit("make it blue")), np.asarray(fresh.edit("make it blue")))
    with pytest.raises(ValueError, match="instruction"):
        s.add_turn("  ", truth)


def test_user_masks_enter_the_context(tiny_model, source_image):
    s = Session(tiny_model, source_image, steps=2)
    mask = np.zeros((10, 10))
    mask[2:5, 2:5] = 1  # another size than the session: resized, not refused
    s.edit("move the circle", mask=mask, next_mask=np.roll(mask, 3, axis=1))
    kinds = [f.kind for f in s.frames]
    assert kinds == [FrameKind.IMAGE, FrameKind.CURRENT_MASK, FrameKind.NEXT_MASK, FrameKind.IMAGE]
    assert s.frames[1].prompt.endswith("Current region mask <IMG1>: ")
    assert s.frames[3].prompt == "Based on <IMG0>, move the circle. Output <IMG3>: "
    m = np.asarray(s.masks[0])
    assert m.shape == (48, 64) and m.max() == 255 and m.min() == 0
    assert s.turns == 1 and s.prompts == ["move the circle"]


def test_mask_prediction_and_chain(tiny_model, source_image):
    s = Session(tiny_model, source_image, steps=2)
    m = s.predict_mask("remove the square", which="next")
    assert m.mode == "L" and m.size == (64, 48) and len(s.frames) == 1
    with pytest.raises(ValueError, match="which"):
        s.predict_mask("x", which="previous")
    s.chain_edit("remove the square")
    assert [f.kind for f in s.frames] == [FrameKind.IMAGE, FrameKind.CURRENT_MASK, FrameKind.NEXT_MASK, FrameKind.IMAGE]


def test_compose(tiny_model, source_image):
    s = Session.compose(tiny_model, [source_image, source_image.rotate(90, expand=True)], "put both together", steps=2)
    assert [f.prompt for f in s.frames] == [None, "<IMG1>: ",
                                            "Based on <IMG0>, and <IMG1>, put both together. Output <IMG2>: "]
    assert s.images[-1].size == s.size


def test_save_load_round_trip(tiny_model, source_image, tmp_path):
    s = Session(tiny_model, source_image, seed=4, steps=2)
    s.edit("one", mask=np.ones((4, 4)))
    path = s.save(tmp_path / "s.vincie")
    r = Session.load(path, tiny_model)
    assert r.prompts == s.prompts and [f.kind for f in r.frames] == [f.kind for f in s.frames]
    assert all(torch.equal(a.latent, b.latent) for a, b in zip(s.frames, r.frames))
    assert np.array_equal(np.asarray(r.edit("two")), np.asarray(s.edit("two")))
    (tmp_path / "bad.vincie").write_bytes(b"not a session")
    with pytest.raises(ValueError, match="cannot read session"):
        Session.load(tmp_path / "bad.vincie", tiny_model)


def test_model_save_load_gives_identical_outputs(tiny_model, tiny_model_dir, source_image):
    loaded = VincieModel.from_pretrained(tiny_model_dir)
    tiny_model.text_encoder.cache_clear()  # same prompt batches on both sides: bitwise-equal embeddings
    a = Session(tiny_model, source_image, seed=2, steps=2).edit("add a hat")
    b = Session(loaded, source_image, seed=2, steps=2).edit("add a hat")
    assert np.array_equal(np.asarray(a), np.asarray(b))


def test_exact_official_mode_runs_the_round_trip(tiny_model, source_image):
    fast = Session(tiny_model, source_image, seed=2, steps=2)
    exact = Session(tiny_model, source_image, seed=2, steps=2, exact_official=True)
    for s in (fast, exact):
        s.edit("one")
        s.edit("two")
    assert exact.frames[1].latent is None and fast.frames[1].latent is not None
    assert exact.images[-1].size == fast.images[-1].size


def test_bad_instructions_and_turn_limit(source_image):
    small = VincieModel.from_random(dataclasses.replace(TINY, dit=dataclasses.replace(TINY.dit, max_num_prompts=3)))
    s = Session(small, source_image, steps=1, cfg_scale=1.0)
    for bad in ("", "   ", None):
        with pytest.raises(ValueError, match="non-empty"):
            s.edit(bad)
    s.edit("one")
    s.edit("two")
    with pytest.raises(ValueError, match="turn embeddings"):
        s.edit("three")


def test_single_file_checkpoint(tiny_model, source_image, tmp_path):
    path = tiny_model.save_single_file(tmp_path / "tiny.safetensors")
    loaded = VincieModel.from_pretrained(path)
    tiny_model.text_encoder.cache_clear()
    a = Session(tiny_model, source_image, seed=2, steps=2).edit("add a hat")
    b = Session(loaded, source_image, seed=2, steps=2).edit("add a hat")
    assert np.array_equal(np.asarray(a), np.asarray(b))
    bare = tiny_model.save_single_file(tmp_path / "bare.safetensors", include_text_encoder=False)
    with pytest.raises(FileNotFoundError, match="text_encoder_path"):
        VincieModel.from_pretrained(bare)
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(1)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ValueError, match="without a VINCIE config"):
        VincieModel.from_pretrained(tmp_path / "other.safetensors")


def test_several_source_images(tiny_model, source_image):
    s = Session(tiny_model, [source_image, source_image.rotate(180)], steps=2)
    assert [f.prompt for f in s.frames] == [None, "<IMG1>: "]
    s.edit("combine them")
    assert s.frames[-1].prompt == "Based on <IMG1>, combine them. Output <IMG2>: "
    with pytest.raises(ValueError, match="empty list"):
        Session(tiny_model, [])
