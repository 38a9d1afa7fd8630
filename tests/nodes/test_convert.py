"""nodes/convert.py: ComfyUI IMAGE/MASK <-> PIL, mask fitting and mask geometry. No ComfyUI needed."""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

_SPEC = importlib.util.spec_from_file_location("vincie_nodes_convert",
                                               Path(__file__).resolve().parents[2] / "nodes" / "convert.py")
convert = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(convert)


def test_image_round_trip_is_exact_on_8_bit_values():
    pixels = torch.randint(0, 256, (2, 5, 7, 3)).float() / 255
    pils = convert.image_to_pils(pixels)
    assert [p.size for p in pils] == [(7, 5), (7, 5)]
    assert torch.equal(convert.pils_to_image(pils), pixels)


def test_alpha_is_dropped_and_bad_shapes_are_named():
    assert convert.image_to_pils(torch.ones(1, 4, 4, 4))[0].mode == "RGB"
    with pytest.raises(ValueError, match=r"source must be a ComfyUI IMAGE .*\(4, 4, 3\)"):
        convert.image_to_pils(torch.ones(4, 4, 3), "source")


def test_pils_to_image_resizes_to_a_common_size():
    out = convert.pils_to_image([Image.new("RGB", (10, 10)), Image.new("RGB", (20, 8))], size=(16, 12))
    assert out.shape == (2, 12, 16, 3) and out.dtype == torch.float32


def test_fit_mask_resizes_other_sizes_with_a_note(caplog):
    mask = torch.zeros(1, 4, 4)
    mask[0, :2, :2] = 1
    with caplog.at_level(logging.WARNING):
        fitted = convert.fit_mask(mask, (8, 8), "next_mask")
    assert fitted.shape == (8, 8) and fitted[:4, :4].all() and not fitted[4:, :].any()
    assert "next_mask is 4x4, the session works at 8x8: resized" in caplog.text
    assert convert.fit_mask(None, (8, 8)) is None


def test_fit_mask_keeps_matching_masks_and_uses_the_first_of_a_batch(caplog):
    batch = torch.stack([torch.ones(6, 8), torch.zeros(6, 8)])
    with caplog.at_level(logging.WARNING):
        fitted = convert.fit_mask(batch, (8, 6))
    assert fitted.shape == (6, 8) and fitted.all()
    assert "batch of 2 masks; using the first" in caplog.text
    with pytest.raises(ValueError, match="ComfyUI MASK"):
        convert.fit_mask(torch.ones(1, 1, 4, 4), (4, 4))


def _l_shape() -> torch.Tensor:
    m = torch.zeros(8, 8)
    m[2:5, 2] = 1  # a vertical bar ...
    m[4, 3] = 1  # ... with a foot to the right
    return m


def test_transform_identity_and_translation():
    m = _l_shape()
    assert torch.equal(convert.transform_mask(m), m)
    moved = convert.transform_mask(m[None], translate_x=0.25, translate_y=-0.25)
    assert moved.shape == (1, 8, 8)
    assert torch.equal(moved[0], torch.roll(m, shifts=(-2, 2), dims=(0, 1)))


def test_transform_flip_mirrors_in_place():
    flipped = convert.transform_mask(_l_shape(), flip="horizontal")
    assert sorted(map(tuple, flipped.nonzero().tolist())) == [(2, 3), (3, 3), (4, 2), (4, 3)]
    assert torch.equal(convert.transform_mask(_l_shape(), flip="both"),
                       convert.transform_mask(convert.transform_mask(_l_shape(), flip="vertical"), flip="horizontal"))


def test_transform_rotation_is_counter_clockwise_on_screen():
    rotated = convert.transform_mask(_l_shape(), rotate=90)
    # The bar now points left from the corner and the foot points up.
    assert sorted(map(tuple, rotated.nonzero().tolist())) == [(3, 3), (4, 1), (4, 2), (4, 3)]


def test_transform_scale_about_the_region_centre():
    m = torch.zeros(16, 16)
    m[6:10, 6:10] = 1
    grown = convert.transform_mask(m, scale=2)
    assert grown.sum() == 64 and grown[4:12, 4:12].all()
    with pytest.raises(ValueError, match="scale must be > 0"):
        convert.transform_mask(m, scale=0)
    with pytest.raises(ValueError, match="flip="):
        convert.transform_mask(m, flip="sideways")


def test_transform_of_an_empty_mask_stays_empty():
    assert not convert.transform_mask(torch.zeros(1, 8, 8), translate_x=0.5, scale=3, rotate=30).any()


def test_instruction_lines_skip_blanks_and_comments():
    assert convert.instruction_lines("  add a circle \n\n# a comment\nmake it red\n") == ["add a circle", "make it red"]
    with pytest.raises(ValueError, match="instructions are empty"):
        convert.instruction_lines("\n  \n# only a comment")


def test_masks_from_pils():
    masks = convert.pils_to_mask([Image.new("L", (4, 4), 255), Image.new("L", (2, 2), 0)], size=(4, 4))
    assert masks.shape == (2, 4, 4) and masks[0].eq(1).all() and masks[1].eq(0).all()
    assert np.isclose(float(convert.pils_to_mask(Image.new("L", (3, 3), 128)).mean()), 128 / 255)
