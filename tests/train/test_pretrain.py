"""Pretraining: composition statistics, loss falls, exact resume, both attention variants."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from vincie_train.data.format import SessionRecord, ShardWriter, TurnRecord
from vincie_train.pretrain import DataConfig, TrainConfig, lr_lambda, train
from vincie_train.synth.dynamics import WorldConfig, sample_transition_session
from vincie_train.tasks import CompositionConfig, compose, unknown_verb, without_dropped

from vincie_sdk import Session, VincieModel
from vincie_data_helpers import MICRO as TRAIN_MICRO
from vincie_sdk.prompts import FrameKind

MICRO = TRAIN_MICRO


def _record(rng, n_turns=3, size=32, key="s"):
    s = sample_transition_session(rng, n_turns, WorldConfig(size=size))
    turns = [TurnRecord(instruction=i, camera=c, roe_src=a, roe_tgt=b)
             for i, c, a, b in zip(s.instructions, s.cameras, s.roe_src, s.roe_tgt)]
    return SessionRecord(key, s.frames, turns)


@pytest.fixture(scope="module")
def shard(tmp_path_factory):
    path = tmp_path_factory.mktemp("shards") / "shard-00000.tar"
    rng = np.random.default_rng(0)
    with ShardWriter(path) as w:
        for i in range(24):
            w.write(_record(rng, key=f"s{i}"))
    return path


def test_composition_statistics():
    rng = np.random.default_rng(0)
    record = _record(np.random.default_rng(1), n_turns=3)
    cfg = CompositionConfig()
    counts = {"roe": 0, "cur": 0, "cur_n": 0, "nxt": 0, "nxt_n": 0, "frame": 0, "frame_n": 0, "text": 0, "text_n": 0}
    for _ in range(3000):
        c = compose(record, rng, cfg)
        has_masks = FrameKind.CURRENT_MASK in c.kinds
        counts["roe"] += has_masks
        for k, kind in enumerate(c.kinds):
            if k == 0:
                continue
            counts["text"] += k in c.text_dropped
            counts["text_n"] += 1
            if kind == FrameKind.CURRENT_MASK:
                counts["cur"] += k in c.dropped
                counts["cur_n"] += 1
            if kind == FrameKind.NEXT_MASK:
                counts["nxt"] += k in c.dropped
                counts["nxt_n"] += 1
        images = [k for k, kind in enumerate(c.kinds) if kind == FrameKind.IMAGE]
        for k in images[1:-1]:  # current frames of turns 2.. (the first source is never dropped)
            counts["frame"] += k in c.dropped
            counts["frame_n"] += 1
        assert [c.kinds[k] for k in c.sources] == [FrameKind.IMAGE] * len(c.sources)
    assert abs(counts["roe"] / 3000 - cfg.roe_prob) < 0.03
    assert abs(counts["cur"] / counts["cur_n"] - cfg.drop_current_roe) < 0.03
    assert abs(counts["nxt"] / counts["nxt_n"] - cfg.drop_next_roe) < 0.03
    assert abs(counts["frame"] / counts["frame_n"] - cfg.drop_current_frame) < 0.03
    assert abs(counts["text"] / counts["text_n"] - cfg.text_drop) < 0.02


def test_unknown_verb_replaces_the_leading_verb_phrase():
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(200):
        out = unknown_verb("take away the red circle", rng).split()
        assert out[-3:] == ["the", "red", "circle"] and set(out[:-3]) == {"[UNK]"}
        seen.add(len(out) - 3)
        assert unknown_verb("add a small red circle at the top left", rng).split()[-8:] == \
            "a small red circle at the top left".split()
        assert unknown_verb("zoom in", rng).split()[-1:] == ["in"]
    assert seen == {1, 2, 3}  # an unseen verb phrase may be one to three words
    record = _record(np.random.default_rng(1), n_turns=1)
    prompts = [compose(record, rng, CompositionConfig(roe_prob=0.0, word_drop=0.3)).prompts[0] for _ in range(2000)]
    assert abs(sum("[UNK]" in p for p in prompts) / 2000 - 0.3) < 0.04


def test_full_layout_view_renumbers_prompts():
    record = _record(np.random.default_rng(2), n_turns=2)
    c = compose(record, np.random.default_rng(0), CompositionConfig(roe_prob=1.0, drop_current_roe=1.0,
                                                                    drop_next_roe=1.0, word_drop=0, camera_tags=False))
    assert c.kinds == [FrameKind.IMAGE, FrameKind.CURRENT_MASK, FrameKind.NEXT_MASK, FrameKind.IMAGE] * 1 + \
        [FrameKind.CURRENT_MASK, FrameKind.NEXT_MASK, FrameKind.IMAGE]
    view = without_dropped(c, 6)  # the second turn's image: masks removed, frames renumbered
    assert view.kinds == [FrameKind.IMAGE, FrameKind.IMAGE, FrameKind.IMAGE]
    assert view.prompts[0].endswith("Output <IMG1>: ") and view.prompts[1].startswith("Based on <IMG1>, ")
    assert view.prompts[1].endswith("Output <IMG2>: ")


def _config(tmp_path, shard, attention="block_causal", **kw):
    from vincie_sdk import config as cfg_module

    cfg_module.PRESETS["micro"] = MICRO
    return TrainConfig(out_dir=str(tmp_path / "run"), preset="micro", attention=attention,
                       data=DataConfig(shards=(str(shard),), max_turns=3), batch_size=4, lr=2e-3, warmup_steps=5, max_steps=kw.pop("max_steps", 40), seed=0,
                       checkpoint_minutes=1e9, log_every=1, **kw)


def _heldout_loss(model, cfg, records, zero_output=False):
    """Loss of ``model`` on fixed held-out batches (fixed composition, timesteps and noise); with
    ``zero_output`` the output projection is zeroed, i.e. the untrained starting point (zero velocity,
    or a copy of the source for ``source_residual``)."""
    import copy

    import torch
    from vincie_train.pretrain import Objective, step_generators

    from vincie_sdk.sampler import FlowMatchSampler

    dit = copy.deepcopy(model.dit)
    if zero_output:
        torch.nn.init.zeros_(dit.vid_out.proj.weight)
        torch.nn.init.zeros_(dit.vid_out.proj.bias)
    objective = Objective(dit, model.vae, model.text_encoder, FlowMatchSampler(model.config.sampler), cfg, 32)
    values = []
    with torch.no_grad():
        for seed in range(6):
            rng, gen = step_generators(1000 + seed, 0, 0)
            values.append(float(objective.loss([compose(r, rng, cfg.composition) for r in records], gen, "cpu")))
    return float(np.mean(values))


def _losses(run):
    return [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("attention,prediction", [("block_causal", "velocity"), ("full", "velocity"),
                                                   ("block_causal", "source_residual"), ("full", "source_residual"),
                                                   ("block_causal", "source_preconditioned"),
                                                   ("block_causal", "source_gated")])
def test_loss_falls_and_the_result_loads(tmp_path, shard, attention, prediction):
    cfg = _config(tmp_path, shard, attention=attention, prediction=prediction, max_steps=60)
    model_dir = train(cfg, progress=False)
    losses = _losses(tmp_path / "run")
    assert len(losses) == 60
    model = VincieModel.from_pretrained(model_dir)
    # Held-out sessions (not in the shard): the trained model beats its own untrained starting point.
    heldout = [_record(np.random.default_rng(100 + i), key=f"h{i}") for i in range(4)]
    trained, untrained = _heldout_loss(model, cfg, heldout), _heldout_loss(model, cfg, heldout, zero_output=True)
    # (For source_residual the start is already an exact copy and an empty mask: a strong baseline.)
    assert trained < 0.85 * untrained, (trained, untrained)
    assert (tmp_path / "run" / "loss.png").stat().st_size > 1000
    assert model.config.dit.attention == attention and model.config.dit.prediction == prediction
    img = Session(model, _record(np.random.default_rng(5)).frames[0], steps=2).edit("add a red circle")
    assert img.size == (32, 32)


def test_pretraining_reads_edit_pairs_from_scratch(tmp_path):
    """Pairwise-only training (the paper's Table 5 baseline): an edit folder from `vincie data pairs` is a data source."""
    from vincie_train.data.edits import read_edits, synth_edits
    from vincie_train.pretrain import SessionPool

    pairs = synth_edits(tmp_path / "pairs", 24, seed=1, size=32)
    pool = SessionPool(DataConfig(shards=(str(pairs),)))
    assert len(pool.sessions) == 24 and all(len(s.turns) == 1 for s in pool.sessions)
    assert [s.instructions for s in pool.sessions] == [s.instructions for s in read_edits(pairs)]
    cfg = _config(tmp_path, pairs, max_steps=40)
    train(cfg, progress=False)
    losses = _losses(tmp_path / "run")
    assert np.mean(losses[-10:]) < 0.8 * np.mean(losses[:10]), losses


def test_kill_and_resume_is_exact(tmp_path, shard):
    # One thread: multi-threaded CPU scatter-adds in backward are not bit-reproducible run to run.
    straight = _config(tmp_path / "a", shard, max_steps=12, threads=1)
    train(straight, progress=False)
    resumed = _config(tmp_path / "b", shard, max_steps=12, threads=1)
    train(resumed, progress=False, stop_after=5)  # "killed" after 5 steps (a checkpoint was written)
    assert len(_losses(tmp_path / "b" / "run")) == 5
    train(resumed, progress=False)
    assert _losses(tmp_path / "a" / "run") == _losses(tmp_path / "b" / "run")


def test_static_camera_parts_split_sessions_at_camera_moves():
    from vincie_train.pretrain import static_camera_parts

    frames = [np.full((4, 4, 3), i, np.uint8) for i in range(6)]
    cams = ["None", "zoom-in", "None", "None", "pan-left"]
    record = SessionRecord("s", frames, [TurnRecord(instruction=f"i{k}", camera=c) for k, c in enumerate(cams)])
    parts = static_camera_parts(record)
    assert [p.instructions for p in parts] == [["i0"], ["i2", "i3"]]
    assert [[int(f[0, 0, 0]) for f in p.frames] for p in parts] == [[0, 1], [2, 3, 4]]


def test_categories_filter_keeps_runs_of_wanted_turns(tmp_path):
    from vincie_train.data.format import ShardWriter
    from vincie_train.pretrain import SessionPool

    frames = [np.full((4, 4, 3), i, np.uint8) for i in range(6)]
    cats = ["remove", "lighting", "recolor", "remove", "multi"]
    record = SessionRecord("s", frames, [TurnRecord(instruction=f"i{k}", category=c) for k, c in enumerate(cats)])
    with ShardWriter(tmp_path / "s.tar") as w:
        w.write(record)
    pool = SessionPool(TrainConfig.from_dict({"data": {"shards": [str(tmp_path / "s.tar")],
                                                       "categories": ["remove", "recolor"]}}).data)
    assert [p.instructions for p in pool.sessions] == [["i0"], ["i2", "i3"]]
    assert len(pool.corpus) == 1 and len(pool.corpus[0].turns) == 5  # the vocabulary still sees everything
    with pytest.raises(ValueError, match=r"no turns of categories \['resize'\].*'lighting'"):
        SessionPool(DataConfig(shards=(str(tmp_path / "s.tar"),), categories=("resize",)))


def test_fresh_text_encoder_tells_words_apart():
    """A fresh embedded-model text encoder must give clearly different states for different words, or the
    DiT never learns to read instructions (the LM default embedding scale drowns them)."""
    import torch
    from vincie_train.embedded import fresh_model

    from vincie_sdk.config import SHAPES

    model = fresh_model(SHAPES, vae_dir=None, vocab=["turn", "the", "red", "blue", "square", "green"], seed=0)
    # Embeddings at the scale of the normalised states, so that the layers' context mixing (which grows in
    # training) cannot drown a token's identity; the LM default (std 0.02) let it fall to ~7 %.
    assert abs(float(model.text_encoder.model.get_input_embeddings().weight.std()) - 1.0) < 0.1
    with torch.no_grad():
        a, b = model.text_encoder.encode(["turn the red square green", "turn the blue square green"])
    word = 2  # "red" / "blue"
    assert (a[word] - b[word]).norm() > 0.5 * a[word].norm()
    assert torch.allclose(a[:word], b[:word])  # a causal encoder: earlier tokens are unaffected


def test_changed_weight_counts_changed_image_pixels_more():
    import torch
    from vincie_train.pretrain import Objective

    class _Dit:
        config = MICRO.dit

    # Three targets of 4 rows: a local image edit (1 of 4 rows changed), a mask target, and a global
    # image change (every row changed, like a new background).
    x0, source = torch.zeros(12, 3), torch.zeros(12, 3)
    x0[0, 1] = 0.5
    x0[7, 0] = 0.5
    x0[8:, 2] = 0.5
    is_image = torch.tensor([True] * 4 + [False] * 4 + [True] * 4)
    rows = torch.tensor([4, 4, 4])
    per_row = torch.tensor([4.0] + [1.0] * 11)
    plain = Objective(_Dit(), None, None, None, TrainConfig(), 32)
    weighted = Objective(_Dit(), None, None, None, TrainConfig(changed_weight=3.0), 32)
    everything = Objective(_Dit(), None, None, None, TrainConfig(changed_weight=3.0, changed_max_share=1.0), 32)
    assert float(plain._weighted(per_row, x0, source, is_image, rows)) == 15 / 12
    # Only the local edit's changed row counts 4x; the mask row and the global change count once.
    assert float(weighted._weighted(per_row, x0, source, is_image, rows)) == pytest.approx((4 * 4 + 11) / 15)
    assert float(everything._weighted(per_row, x0, source, is_image, rows)) == pytest.approx((4 * 4 + 7 + 4 * 4) / 27)


def test_copy_error_is_zero_for_a_residual_model_that_outputs_nothing():
    import torch
    from vincie_train.pretrain import SessionPool, copy_error

    rng = np.random.default_rng(0)
    frame = rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)
    # A turn that changes nothing: every latent pixel is "unchanged", so an exact copy scores 0.
    pool = SessionPool.from_sessions([SessionRecord("s", [frame, frame.copy()], [TurnRecord(instruction="keep it")])],
                                     DataConfig())
    residual = dataclasses.replace(MICRO, dit=dataclasses.replace(MICRO.dit, prediction="source_residual"))
    model = VincieModel.from_random(residual, seed=0)
    noisy = copy_error(model, pool)
    assert set(noisy) == {"1000", "950"} and min(noisy.values()) > 1e-3
    for p in model.dit.vid_out.parameters():
        torch.nn.init.zeros_(p)  # output 0 = x0 is the source: an exact copy
    assert max(copy_error(model, pool).values()) < 1e-8
    full = dataclasses.replace(MICRO, dit=dataclasses.replace(MICRO.dit, attention="full"))
    assert copy_error(VincieModel.from_random(full, seed=0), pool) is None


def test_keep_snapshots_keeps_a_loadable_model_per_checkpoint(tmp_path, shard):
    cfg = _config(tmp_path, shard, max_steps=8, threads=1, keep_snapshots=True)
    train(cfg, progress=False, stop_after=5)  # a checkpoint at the interruption ...
    train(cfg, progress=False)  # ... and one at the end
    snaps = tmp_path / "run" / "snapshots"
    assert sorted(p.name for p in snaps.iterdir()) == ["step0000005", "step0000008"]
    first, last = (VincieModel.from_pretrained(snaps / name) for name in ("step0000005", "step0000008"))
    latest = VincieModel.from_pretrained(tmp_path / "run" / "model")
    w = lambda m: m.dit.vid_out.proj.weight  # noqa: E731
    assert torch.equal(w(last), w(latest)) and not torch.equal(w(first), w(last))


def test_resume_with_a_new_learning_rate_applies_it(tmp_path, shard):
    first = _config(tmp_path, shard, max_steps=12, threads=1)  # warm-up 5 steps, then constant 2e-3
    train(first, progress=False, stop_after=4)
    train(dataclasses.replace(first, lr=5e-4), progress=False)
    lrs = [json.loads(line)["lr"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    f = lr_lambda(first)  # the logged lr is the one for the next step
    assert lrs[3] == pytest.approx(2e-3 * f(4))
    assert lrs[4:] == pytest.approx([5e-4 * f(k + 1) for k in range(4, 12)])  # new base, same schedule


def test_stop_step_stops_early_on_the_full_schedule_and_a_later_stage_starts_from_it(tmp_path, shard):
    first = _config(tmp_path, shard, max_steps=12, threads=1, decay_to=0.1, stop_step=7)
    model_dir = train(first, progress=False)
    lrs = [json.loads(line)["lr"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(lrs) == 7 and lrs == pytest.approx([2e-3 * lr_lambda(first)(k + 1) for k in range(7)])
    assert lrs[-1] > 2e-3 * 0.2  # part-way down a cosine that ends at step 12, not at 7
    assert train(first, progress=False) == model_dir and len(_losses(tmp_path / "run")) == 7  # nothing left to do
    # ... and may move the prompts to their frames (no new weights: allowed on an initialised model).
    later = dataclasses.replace(first, out_dir=str(tmp_path / "stage3"), init=str(model_dir), stop_step=None,
                                max_steps=3, prompt_position="frame")
    later_dir = train(later, progress=False)
    assert len(_losses(tmp_path / "stage3")) == 3
    assert json.loads((Path(later_dir) / "config.json").read_text())["dit"]["prompt_position"] == "frame"


def test_text_sensitivity_is_zero_when_the_text_path_is_cut():
    import torch
    from vincie_train.pretrain import SessionPool, text_sensitivity

    rng = np.random.default_rng(0)
    words = ["make the red circle blue", "make the blue square green", "make the green circle red"]
    records = [SessionRecord(f"s{i}", [rng.integers(0, 255, (32, 32, 3), dtype=np.uint8) for _ in range(2)],
                             [TurnRecord(instruction=w)]) for i, w in enumerate(words)]  # equal token counts
    pool = SessionPool.from_sessions(records, DataConfig())
    model = VincieModel.from_random(MICRO, seed=0)
    assert model.config.dit.attention == "block_causal"
    assert text_sensitivity(model, pool) > 1e-4
    torch.nn.init.zeros_(model.dit.txt_in.weight)  # every text token becomes the same vector
    torch.nn.init.zeros_(model.dit.txt_in.bias)
    model.dit.prompt_id_embedding.embedding.weight.data.zero_()
    assert text_sensitivity(model, pool) < 1e-6
    full = dataclasses.replace(MICRO, dit=dataclasses.replace(MICRO.dit, attention="full"))
    assert text_sensitivity(VincieModel.from_random(full, seed=0), pool) is None


def test_patch_size_override_sets_the_token_size_of_a_fresh_model(tmp_path, shard):
    cfg = TrainConfig.from_dict({**dataclasses.asdict(_config(tmp_path, shard, max_steps=3, threads=1)),
                                 "data": {"shards": [str(shard)], "max_turns": 2}, "composition": {},
                                 "patch_size": [1, 1, 1]})
    assert cfg.patch_size == (1, 1, 1)
    model = VincieModel.from_pretrained(train(cfg, progress=False))
    assert model.config.dit.patch_size == (1, 1, 1) != MICRO.dit.patch_size
    img = Session(model, _record(np.random.default_rng(5)).frames[0], steps=2).edit("add a red circle")
    assert img.size == (32, 32)


def test_resolution_override_trains_at_a_finer_size_multiple(tmp_path, shard):
    """36 px with 4-pixel tokens (a 9x9 grid: the shapes world's cells on whole tokens): the run trains at
    that size and the exported model edits at it; a multiple that splits tokens is refused by name."""
    cfg = TrainConfig.from_dict({**dataclasses.asdict(_config(tmp_path, shard, max_steps=2, threads=1)),
                                 "data": {"shards": [str(shard)], "max_turns": 2}, "composition": {},
                                 "resolution": 36, "size_multiple": 4})
    model = VincieModel.from_pretrained(train(cfg, progress=False))
    assert (model.config.session.resolution, model.config.session.size_multiple) == (36, 4)
    img = Session(model, _record(np.random.default_rng(5)).frames[0], steps=2).edit("add a red circle")
    assert img.size == (36, 36)  # the default multiple (16) would have cropped it to 32
    bad = dataclasses.replace(cfg, out_dir=str(tmp_path / "bad"), size_multiple=6)
    with pytest.raises(ValueError, match="size_multiple=6 is not a multiple of the token side"):
        train(bad, progress=False)


def test_architecture_overrides_train_and_round_trip(tmp_path, shard):
    cfg = TrainConfig.from_dict({**dataclasses.asdict(_config(tmp_path, shard, max_steps=3, threads=1)),
                                 "data": {"shards": [str(shard)], "max_turns": 2}, "composition": {},
                                 "frame_position": 3, "pixel_head": 4})
    out = train(cfg, progress=False)
    model = VincieModel.from_pretrained(out)
    assert model.config.dit.frame_position == 3 and model.config.dit.pixel_head == 4
    assert model.dit.vid_pos.proj.weight.abs().sum() > 0 and model.dit.pixel_head.conv2.weight.abs().sum() > 0  # trained
    img = Session(model, _record(np.random.default_rng(5)).frames[0], steps=2).edit("add a red circle")
    assert img.size == (32, 32)
    # Continuing from that model with another setting would silently drop or invent weights: refused.
    other = dataclasses.replace(cfg, out_dir=str(tmp_path / "again"), init=str(out), frame_position=0)
    with pytest.raises(ValueError, match="frame_position"):
        train(other, progress=False)


def test_history_degradation_changes_the_context_only(tmp_path):
    """With ``context_degrade`` the history images after the first are blurred and noised as context,
    the targets stay exact, and the changed-pixel weighting still compares with the exact source."""
    from vincie_sdk import block_causal as bc
    from vincie_sdk.config import VAEConfig
    from vincie_sdk.sampler import FlowMatchSampler
    from vincie_train.degrade import gaussian_blur
    from vincie_train.pretrain import Objective, ObjectiveConfig

    pixel = dataclasses.replace(MICRO, vae=VAEConfig(kind="pixel", spatial_downsample_factor=2, latent_channels=12),
                                dit=dataclasses.replace(MICRO.dit, vid_in_channels=25, vid_out_channels=12,
                                                        prediction="source_residual"))
    model = VincieModel.from_random(pixel, seed=0)
    record = _record(np.random.default_rng(3), n_turns=2)
    session = compose(record, np.random.default_rng(0), CompositionConfig(roe_prob=0.0, drop_current_frame=0.0,
                                                                           text_drop=0.0, word_drop=0.0))
    config = ObjectiveConfig(context_degrade=1.0, context_blur=1.0, context_noise=0.05, changed_weight=4.0)
    obj = Objective(model.dit, model.vae, model.text_encoder, FlowMatchSampler(model.config.sampler), config,
                    model.config.session.resolution)
    lat = obj.encode_frames([session], "cpu")[0]
    ctx = obj._degraded_history(session, lat, torch.Generator().manual_seed(0))
    assert torch.equal(ctx[0], lat[0])  # the user's image is never degraded
    assert all(not torch.equal(ctx[k], lat[k]) for k in range(1, len(lat)))
    assert (ctx[1] - lat[1]).abs().mean() < 0.2  # degraded, not replaced
    seq = bc.TrainingSequence(lat, [torch.randn(3, model.config.dit.txt_in_dim)] * 2, [0, 1], [2], torch.tensor([500.0]),
                              torch.randn(1, *lat.shape[1:]), [None], set(), [None], ctx)
    packed = bc.pack_training(model.dit, FlowMatchSampler(model.config.sampler), [seq])
    assert torch.equal(packed.x0.reshape(lat[2].shape), lat[2])  # exact target
    assert torch.equal(packed.source.reshape(lat[1].shape), ctx[1])  # degraded source
    assert torch.equal(packed.exact_source.reshape(lat[1].shape), lat[1])
    # Blur keeps the mean and flattens an edge; sigma 0 is the identity.
    x = torch.zeros(2, 1, 9, 9); x[:, :, :, 5:] = 1
    y = gaussian_blur(x, torch.tensor([0.0, 1.0]))
    assert torch.equal(y[0], x[0]) and 0 < y[1, 0, 4, 4] < 0.5 < y[1, 0, 4, 5] < 1
    # Full attention has no history blocks; a learned VAE would decode and encode every step.
    for other in (dataclasses.replace(pixel, dit=dataclasses.replace(pixel.dit, attention="full")), MICRO):
        m = VincieModel.from_random(other, seed=0)
        with pytest.raises(ValueError, match="context_degrade"):
            Objective(m.dit, m.vae, m.text_encoder, FlowMatchSampler(m.config.sampler), config, 32)
