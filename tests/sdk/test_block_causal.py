"""The block-causal variant: mask semantics, cached == uncached, sessions on a tiny model."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from vincie_sdk import Session, VincieModel
from vincie_sdk import block_causal as bc
from vincie_sdk.config import TINY
from vincie_sdk.sampler import FlowMatchSampler

BC_TINY = dataclasses.replace(TINY, name="tiny-bc", dit=dataclasses.replace(TINY.dit, attention="block_causal"))


@pytest.fixture(scope="module", params=[{}, {"frame_position": 4}, {"pixel_head": 8, "pixel_fold": 2},
                                        {"prompt_position": "frame"}, {"target_prompts": "own"}],
                ids=["plain", "frame-position", "pixel-head", "prompt-at-frame", "own-prompt"])
def bc_model(request):
    """The block-causal tiny model, plain, with absolute in-frame positions (``frame_position``), with
    the per-pixel output head, with prompts placed at their frame (``prompt_position``) and with targets
    that read their own prompt only (``target_prompts``): every test
    here must hold for all (training and the KV cache must place every token alike)."""
    config = dataclasses.replace(BC_TINY, dit=dataclasses.replace(BC_TINY.dit, **request.param))
    model = VincieModel.from_random(config, seed=1)
    g = torch.Generator().manual_seed(0)
    if model.dit.vid_pos is not None:  # a fresh projection is zero; make the positions matter
        torch.nn.init.normal_(model.dit.vid_pos.proj.weight, std=0.5, generator=g)
    if model.dit.pixel_head is not None:
        torch.nn.init.normal_(model.dit.pixel_head.conv2.weight, std=0.5, generator=g)
    return model


def _sequence(dit, n_frames=3, targets=(1, 2), seed=0, null=None, dropped=()):
    g = torch.Generator().manual_seed(seed)
    latents = torch.randn(n_frames, 6, 8, 16, generator=g)
    prompts = [torch.randn(3 + k, 32, generator=g) for k in range(n_frames - 1)]
    return bc.TrainingSequence(
        latents=latents, prompts=prompts, sources=list(range(n_frames - 1)), targets=list(targets),
        timesteps=torch.tensor([700.0, 300.0, 500.0][: len(targets)]), noise=torch.randn(len(targets), 6, 8, 16, generator=g),
        null_prompts=null or [None] * len(targets), dropped=set(dropped))


def test_mask_block_structure(bc_model):
    seq = _sequence(bc_model.dit, null=[torch.randn(2, 32), None])
    blocks = []
    for k in range(3):
        blocks += [("F", k)] * 2
    for j in range(2):
        blocks += [("N", j)] * 2
    for k in (1, 2):
        blocks += [("P", k)] * 2
    blocks += [("Z", 0)] * 2
    m = bc.block_causal_mask(blocks, seq)
    at = {b: i for i, b in reversed(list(enumerate(blocks)))}
    assert m[at[("F", 1)], at[("F", 0)]] and m[at[("F", 1)], at[("P", 1)]] and not m[at[("F", 1)], at[("F", 2)]]
    assert not m[at[("F", 0)], at[("P", 1)]]  # causal across blocks
    assert m[at[("F", 1)], at[("F", 1)] + 1]  # bidirectional within a block
    # Noisy target 1 (frame 2): sees F0, F1, P1, its null prompt instead of P2; never F2 or other noisy blocks.
    n1 = at[("N", 1)]
    assert m[n1, at[("F", 1)]] and m[n1, at[("P", 1)]] and m[n1, at[("P", 2)]] and not m[n1, at[("F", 2)]]
    n0 = at[("N", 0)]
    assert not m[n0, at[("P", 1)]] and m[n0, at[("Z", 0)]] and not m[n1, at[("Z", 0)]]
    assert not m[n0, n1] and not m[at[("F", 2)], n0]
    # target_prompts="own": a noisy target reads no earlier prompt; the clean frames still do.
    own = bc.block_causal_mask(blocks, seq, own_prompt_only=True)
    assert not own[n1, at[("P", 1)]] and own[n1, at[("P", 2)]] and own[n1, at[("F", 1)]] and own[n1, at[("F", 0)]]
    assert own[at[("F", 1)], at[("P", 1)]] and own[n0, at[("Z", 0)]]
    assert torch.equal(own | m, m) and (m & ~own).sum() > 0  # it only hides


def test_later_tokens_do_not_change_earlier_outputs(bc_model):
    dit, sampler = bc_model.dit, FlowMatchSampler(BC_TINY.sampler)
    seq = _sequence(dit, n_frames=3, targets=(1, 2))
    base = bc.training_velocity(dit, bc.pack_training(dit, sampler, [seq]))
    changed = dataclasses.replace(seq, latents=seq.latents.clone(), prompts=list(seq.prompts))
    changed.latents[2] += 5.0  # a later image
    changed.prompts[1] = changed.prompts[1] * -1  # a later prompt
    out = bc.training_velocity(dit, bc.pack_training(dit, sampler, [changed]))
    rows = 6 * 8
    assert torch.allclose(out[:rows], base[:rows], atol=1e-5)  # target frame 1 cannot see frame 2 or P2
    assert not torch.allclose(out[rows:], base[rows:], atol=1e-3)  # target frame 2 sees P2


def test_context_dropout_hides_frames(bc_model):
    dit, sampler = bc_model.dit, FlowMatchSampler(BC_TINY.sampler)
    seq = _sequence(dit, n_frames=3, targets=(2,), dropped={0})
    base = bc.training_velocity(dit, bc.pack_training(dit, sampler, [seq]))
    other = dataclasses.replace(seq, latents=seq.latents.clone())
    other.latents[0] += 3.0
    assert torch.allclose(bc.training_velocity(dit, bc.pack_training(dit, sampler, [other])), base, atol=1e-5)


def test_unseen_clean_frames_are_left_out_without_changing_outputs(bc_model, monkeypatch):
    dit, sampler = bc_model.dit, FlowMatchSampler(BC_TINY.sampler)
    # Frames 0..3; targets 1 and 2; frame 1 dropped (still the source of target 2), frame 3 after the last target.
    seq = _sequence(dit, n_frames=4, targets=(1, 2), dropped={1}, null=[None, torch.randn(2, 32)])
    assert bc.seen_clean_frames(seq) == [0, 1]
    seq = dataclasses.replace(seq, sources=[0, 1, 0])  # frame 3 (a mask, say) generated from frame 0
    seq = dataclasses.replace(seq, dropped={2})
    assert bc.seen_clean_frames(seq) == [0, 1]  # 2 is dropped and nobody's source; 3 comes after the last target
    pruned = bc.pack_training(dit, sampler, [seq])
    assert pruned.vid.shape[0] == (2 + 2) * 6 * 8
    monkeypatch.setattr(bc, "seen_clean_frames", lambda s: list(range(len(s.latents))))
    full = bc.pack_training(dit, sampler, [seq])
    assert full.vid.shape[0] == (4 + 2) * 6 * 8
    a, b = bc.training_velocity(dit, pruned), bc.training_velocity(dit, full)
    assert torch.allclose(a, b, atol=1e-5), (a - b).abs().max()


def test_cached_equals_uncached(bc_model):
    dit, sampler = bc_model.dit, FlowMatchSampler(BC_TINY.sampler)
    seq = _sequence(dit, n_frames=3, targets=(2,), null=[None])
    full = bc.training_velocity(dit, bc.pack_training(dit, sampler, [seq])).reshape(6, 8, 16)

    history = bc.empty_history(dit)
    history = bc.extend_history(dit, history, frame=seq.latents[0])
    history = bc.extend_history(dit, history, prompt=seq.prompts[0])
    history = bc.extend_history(dit, history, frame=seq.latents[1])
    [prefix] = bc.prompt_cache(dit, history, [seq.prompts[1]])
    xt = sampler.add_noise(seq.latents[2], seq.noise[0], seq.timesteps[0])
    pos = (bc.video_positions(1, 3, 4, offset=2), torch.zeros(0, 3))
    out, _ = bc._run_block(dit, [prefix], [bc._frame_channels(xt, seq.latents[1])[None]], [None], [pos],
                           seq.timesteps[:1], False)
    assert torch.allclose(out.reshape(6, 8, 16), full, atol=1e-4), (out.reshape(6, 8, 16) - full).abs().max()
    # The cache can be truncated back (undo) and re-extended to the same state.
    again = bc.extend_history(dit, history.truncated(1), prompt=seq.prompts[0])
    again = bc.extend_history(dit, again, frame=seq.latents[1])
    for (a, b), (c, d) in zip(history.cache.layers[0], again.cache.layers[0]):
        assert torch.allclose(a, c) and torch.allclose(b, d)


def test_prompt_positions_at_the_frame_shift_time_alone():
    cursor = bc.prompt_positions("cursor", 3, frame=3, cursor=10)
    assert cursor.tolist() == [[10, 10, 10], [11, 11, 11], [12, 12, 12]]
    at_frame = bc.prompt_positions("frame", 3, frame=3, cursor=10)
    assert at_frame.tolist() == [[2, 0, 0], [3, 1, 1], [4, 2, 2]]  # turn 1's layout, two frames later
    assert bc.prompt_positions("frame", 3, frame=1, cursor=0).tolist() == cursor.sub(10).tolist()
    with pytest.raises(ValueError, match="prompt_position='time'"):
        dataclasses.replace(TINY.dit, prompt_position="time")


def test_block_causal_session(bc_model, source_image):
    s = Session(bc_model, source_image, seed=2, steps=3, cfg_scale=2.0)
    a = s.edit("add a red circle")
    s.edit("make it blue", mask=np.ones((4, 4)))
    assert s._history[0].frames == 3  # the cache holds the history up to the last generated frame's source
    t = s.copy()
    t.undo()
    again = t.edit("make it blue", mask=np.ones((4, 4)))
    assert np.array_equal(np.asarray(again), np.asarray(s.images[-1]))  # undo + redo reproduces the turn
    fresh = Session(bc_model, source_image, seed=2, steps=3, cfg_scale=2.0)
    assert np.array_equal(np.asarray(fresh.edit("add a red circle")), np.asarray(a))
    m = s.predict_mask("remove it")
    assert m.size == s.size


def test_frame_position_features():
    """Absolute positions: zero at the start (a fresh model equals one without them), different per
    cell, repeated per frame, and the same relative cell at any resolution."""
    from vincie_sdk.models.dit import FramePosition

    pos = FramePosition(3, 8)
    assert not pos((2, 4, 4), torch.device("cpu"), torch.float32).any()
    torch.nn.init.normal_(pos.proj.weight, generator=torch.Generator().manual_seed(0))
    out = pos((2, 4, 4), torch.device("cpu"), torch.float32)
    assert out.shape == (32, 8) and torch.equal(out[:16], out[16:])
    assert torch.cdist(out[:16], out[:16]).add(torch.eye(16)).min() > 1e-3  # every cell distinct
    fine = pos((1, 9, 9), torch.device("cpu"), torch.float32).reshape(9, 9, 8)
    coarse = pos((1, 3, 3), torch.device("cpu"), torch.float32).reshape(3, 3, 8)
    assert torch.allclose(fine[1::3, 1::3], coarse, atol=1e-5)  # cell (i, j) of 3x3 is cell (3i+1, 3j+1) of 9x9


def test_pixel_head_folds_pixels_like_the_pixel_autoencoder():
    """The head unfolds the source to pixels and folds its outputs back exactly as the pixel patcher does:
    with weights that pass the source straight through, its output is the source latent (both groups of a
    gated output); x_t does not reach it."""
    from vincie_sdk.config import VAEConfig
    from vincie_sdk.models.dit import PixelHead
    from vincie_sdk.models.patcher import PixelPatcher

    cfg = dataclasses.replace(TINY.dit, vid_in_channels=2 * 48 + 1, vid_out_channels=96, pixel_head=3, pixel_fold=4,
                              prediction="source_gated", patch_size=(1, 1, 1))
    head = PixelHead(cfg)
    b = 20.0  # silu(z + b) = z + b for z << b: the convolutions become linear
    with torch.no_grad():
        head.expand.weight.zero_(); head.expand.bias.zero_()
        head.conv1.weight.zero_(); head.conv1.bias.fill_(b)
        head.conv2.weight.zero_(); head.conv2.bias.fill_(-b)
        for c in range(3):
            head.conv1.weight[c, 3 + c, 1, 1] = 1.0  # hidden c = source colour c (inputs: hidden 3, source 3)
            head.conv2.weight[c, c, 1, 1] = head.conv2.weight[3 + c, c, 1, 1] = 1.0
    images = torch.rand(2, 3, 16, 12) * 2 - 1
    latents = PixelPatcher(VAEConfig(kind="pixel", spatial_downsample_factor=4, latent_channels=48)).encode_images(images)
    raw = torch.cat((torch.randn_like(latents), latents, torch.ones(2, 4, 3, 1)), -1)  # [x_t | source | flag]
    out = head(torch.randn(2 * 4 * 3, cfg.vid_dim), (2, 4, 3), raw)
    assert out.shape == (2, 4, 3, 96)
    assert torch.allclose(out[..., :48], latents, atol=1e-4) and torch.allclose(out[..., 48:], latents, atol=1e-4)


def test_source_residual_zero_output_copies_the_source():
    """With x0 = source + output, a network that outputs zero copies the image it edits, whatever the
    noise, in both attention variants (the starting point of the embedded model's training)."""
    for attention in ("block_causal", "full"):
        config = dataclasses.replace(TINY, dit=dataclasses.replace(TINY.dit, attention=attention,
                                                                    prediction="source_residual"))
        model = VincieModel.from_random(config, seed=3)
        torch.nn.init.zeros_(model.dit.vid_out.proj.weight)
        torch.nn.init.zeros_(model.dit.vid_out.proj.bias)
        sampler = FlowMatchSampler(config.sampler)
        g = torch.Generator().manual_seed(0)
        source, noise = torch.randn(6, 8, 16, generator=g), torch.randn(6, 8, 16, generator=g)
        if attention == "block_causal":
            history = bc.extend_history(model.dit, bc.empty_history(model.dit), frame=source)
            prefix = bc.prompt_cache(model.dit, history, [torch.randn(3, 32, generator=g)])
            out = bc.denoise_next_frame(model.dit, sampler, prefix, source, noise, 1, steps=4)
        else:
            from vincie_sdk.denoise import PackedInputs, denoise
            from vincie_sdk.pipeline import build_condition
            inputs = PackedInputs(torch.randn(2 * 48, 16, generator=g), build_condition(source[None], source=0).reshape(-1, 17),
                                  torch.tensor([[2, 6, 8]]), torch.randn(3, 32, generator=g), torch.tensor([[3]]))
            out = denoise(model.dit, sampler, inputs, steps=4, cfg_scale=1.0)[48:].reshape(6, 8, 16)
        assert torch.allclose(out, source, atol=1e-4), (attention, (out - source).abs().max())


def test_source_residual_training_loss_is_zero_for_a_copy(bc_model):
    """The packed training targets use the same conversion: a zero output is exact when target == source."""
    config = dataclasses.replace(BC_TINY, dit=dataclasses.replace(BC_TINY.dit, prediction="source_residual"))
    sampler = FlowMatchSampler(config.sampler)
    seq = _sequence(bc_model.dit, n_frames=3, targets=(1, 2))
    seq.latents[2] = seq.latents[1]  # frame 2 is an unchanged copy of frame 1
    packed = bc.pack_training(bc_model.dit, sampler, [seq])
    zero = torch.zeros_like(packed.velocity)
    err = (packed.velocity_of(zero, sampler, "source_residual", 0.25)
           - packed.velocity_target(sampler, "source_residual", 0.25)).pow(2).reshape(2, -1).mean(1)
    assert err[1] < 1e-10 and err[0] > 0.1  # frame 1 differs from frame 0, frame 2 is a copy


@pytest.mark.parametrize("prediction", ["source_residual", "source_gated"])
def test_residual_masks_are_residuals_of_an_empty_mask(source_image, prediction):
    """Masks are predicted as residuals of a black frame, not of the image: a "nothing" output (zero
    residual, shut gate) gives an empty mask (and still a copy for images), in both attention variants,
    through the Session API."""
    from vincie_sdk.config import SHAPES  # pixel space: a black frame decodes to exactly black

    for attention in ("block_causal", "full"):
        dit = dataclasses.replace(SHAPES.dit, attention=attention, vid_dim=64, heads=1, num_layers=2, mm_layers=1,
                                  prediction=prediction, vid_out_channels=SHAPES.dit.output_channels(prediction))
        config = dataclasses.replace(SHAPES, dit=dit)
        model = VincieModel.from_random(config, seed=3)
        torch.nn.init.zeros_(model.dit.vid_out.proj.weight)
        torch.nn.init.zeros_(model.dit.vid_out.proj.bias)
        if prediction == "source_gated":  # the second half of the output: gate logits, shut
            model.dit.vid_out.proj.bias.data[dit.vid_out_channels // 2:] = -50.0
        s = Session(model, source_image, seed=1, steps=3)
        mask = np.asarray(s.predict_mask("remove the red circle", "current").convert("L"))
        assert mask.max() == 0, attention  # nothing marked
        blank = model.blank_latent(*s.size[::-1])
        black = model.decode_latents(blank[None])[0]
        assert float(black.max()) < -0.99  # the base decodes to black
        # Training uses the same base: with target = the blank latent, a "nothing" output has zero loss.
        sampler = FlowMatchSampler(config.sampler)
        g = torch.Generator().manual_seed(0)
        image = model.encode_images(torch.rand(1, 3, *s.size[::-1], generator=g) * 2 - 1)[0]
        seq = bc.TrainingSequence(torch.stack((image, blank)), [torch.randn(3, config.dit.txt_in_dim, generator=g)], [0], [1],
                                  torch.tensor([900.0]), torch.randn((1,) + tuple(blank.shape), generator=g),
                                  residual_bases=[blank])
        packed = bc.pack_training(model.dit, sampler, [seq])
        nothing = torch.zeros(packed.velocity.shape[:-1] + (dit.vid_out_channels,))
        if prediction == "source_gated":
            nothing[..., dit.vid_out_channels // 2:] = -50.0
        err = packed.velocity_of(nothing, sampler, prediction) - packed.velocity_target(sampler, prediction)
        assert float(err.abs().max()) < 1e-5
