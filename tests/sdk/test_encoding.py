"""Session encoding exactly as the official code: prompts, ids, positions, condition, noise, pixels."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from vincie_sdk.config import STATIC_CAMERA_PREFIX, TINY
from vincie_sdk.image import preprocess, working_size
from vincie_sdk.models.rope import text_positions, video_positions
from vincie_sdk.pipeline import FrameRequest, build_condition, draw_noise, fuse_prompts, pack_requests
from vincie_sdk.prompts import FrameKind, compose_prompts, frame_prompt


@pytest.mark.parametrize("j,text,expected", [
    (0, "Lower the pineapple beside her face, and change it to a smaller one.",
     "Based on <IMG0>, Lower the pineapple beside her face, and change it to a smaller one. Output <IMG1>: "),
    (1, "Add a crown to the woman's head. ", "Based on <IMG1>, Add a crown to the woman's head. Output <IMG2>: "),
    (4, " ..Add a colorful bird hovering above the crown... ",
     "Based on <IMG4>, Add a colorful bird hovering above the crown. Output <IMG5>: "),
])
def test_official_prompt_padding(j, text, expected):
    assert frame_prompt(text, src=j, index=j + 1) == expected


def test_padding_switch_and_camera_prefix():
    assert frame_prompt("add a hat", src=0, index=1, pad_img_placeholder=False) == "add a hat"
    assert frame_prompt("add a hat", src=0, index=1, camera_prefix=STATIC_CAMERA_PREFIX) == \
        "Based on <IMG0>, [###CAMERA: None###] add a hat. Output <IMG1>: "
    assert frame_prompt("add a hat", src=2, index=3, kind=FrameKind.CURRENT_MASK).endswith("Current region mask <IMG3>: ")


def test_compose_prompts_follow_the_readme():
    p = compose_prompts("A smiling man in the park.", 3)
    assert p == ["<IMG1>: ", "<IMG2>: ", "Based on <IMG0>, <IMG1>, and <IMG2>, A smiling man in the park. Output <IMG3>: "]


def test_positions_text_then_frames():
    assert text_positions(3).tolist() == [[0, 0, 0], [1, 1, 1], [2, 2, 2]]
    v = video_positions(2, 2, 3, offset=7)
    assert v.shape == (12, 3)
    assert v[0].tolist() == [7, 0, 0] and v[5].tolist() == [7, 1, 2] and v[6].tolist() == [8, 0, 0]


def test_condition_channels():
    ctx = torch.randn(2, 3, 4, 16)
    c = build_condition(ctx)
    assert c.shape == (3, 3, 4, 17)
    assert torch.equal(c[:2, ..., :16], ctx) and (c[:2, ..., 16] == 1).all() and (c[2] == 0).all()


def test_noise_is_one_seeded_block():
    a = draw_noise((3, 4, 5, 16), 1, torch.device("cpu"))
    b = draw_noise((3, 4, 5, 16), 1, torch.device("cpu"))
    assert a.shape == (3, 4, 5, 16) and torch.equal(a, b)
    assert not torch.equal(a, draw_noise((3, 4, 5, 16), 2, torch.device("cpu")))


def test_prompt_ids_are_fused_per_prompt(tiny_model):
    e0, e1 = torch.randn(3, 32), torch.randn(5, 32)
    fused = fuse_prompts(tiny_model, [e0, e1])
    ids = tiny_model.dit.prompt_id_embedding.embedding.weight
    assert fused.shape == (10, 32)
    assert torch.equal(fused[0], ids[0]) and torch.equal(fused[1:4], e0)
    assert torch.equal(fused[4], ids[1]) and torch.equal(fused[5:], e1)


def test_packed_inputs(tiny_model):
    ctx = torch.randn(2, 4, 6, 16)
    req = FrameRequest(ctx, ["first prompt", "second prompt"], seed=5)
    inputs = pack_requests(tiny_model, [req, req], negative_prompt="bad")
    assert inputs.vid_shape.tolist() == [[3, 4, 6], [3, 4, 6]]
    assert inputs.noise.shape == (2 * 3 * 4 * 6, 16) and inputs.condition.shape == (2 * 3 * 4 * 6, 17)
    n_first = len(tiny_model.text_encoder.token_ids("first prompt"))
    n_second = len(tiny_model.text_encoder.token_ids("second prompt"))
    assert inputs.txt_pos_shape.tolist() == [[n_first + n_second + 2]] * 2
    assert inputs.txt_neg_shape.tolist() == [[len(tiny_model.text_encoder.token_ids("bad")) + 1]] * 2
    with pytest.raises(ValueError, match="needs 2 prompts"):
        pack_requests(tiny_model, [FrameRequest(ctx, ["only one"], 0)], None)


@pytest.mark.parametrize("size,resolution,expected", [
    ((230, 338), 256, (208, 304)),  # README woman image (W x H)
    ((205, 246), 256, (224, 272)),  # da_vinci.png
    ((367, 368), 256, (256, 256)),
    ((367, 368), 512, (496, 512)),
    ((400, 400), 512, (512, 512)),  # small images are upsampled
])
def test_working_sizes_from_the_spec(size, resolution, expected):
    assert working_size(size, resolution) == expected
    img = Image.fromarray(np.zeros((size[1], size[0], 3), np.uint8))
    assert preprocess([img], resolution).shape == (1, 3, expected[1], expected[0])


def test_size_multiple_crops_to_whole_tokens():
    img = Image.fromarray(np.zeros((64, 64, 3), np.uint8))
    assert working_size((64, 64), 36) == (32, 32)  # the official multiple, 16
    assert working_size((64, 64), 36, 4) == (36, 36)
    assert preprocess([img], 36, 4).shape == (1, 3, 36, 36)
    with pytest.raises(ValueError, match="leaves no 8x8 block"):
        working_size((400, 4), 16, 8)


def test_preprocess_resizes_later_images_to_the_first_and_scales_to_pm1():
    a = Image.fromarray(np.full((40, 60, 3), 255, np.uint8))
    b = Image.fromarray(np.zeros((20, 20, 3), np.uint8))
    x = preprocess([a, b], 64)
    assert x.shape == (2, 3, 48, 64)
    assert torch.allclose(x[0], torch.ones_like(x[0]), atol=1e-5) and torch.allclose(x[1], -torch.ones_like(x[1]), atol=1e-5)


def test_tiny_preset_is_tiny():
    assert TINY.dit.vid_dim * TINY.dit.num_layers < 1000
