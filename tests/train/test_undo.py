"""Undoing earlier changes: the edits only a session's history explains, from video to benchmark."""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import pytest
import torch
from vincie_train.data.annotate import SyntheticAnnotator
from vincie_train.data.build import BuildConfig, build_shards
from vincie_train.data.format import SessionRecord, TurnRecord, read_sessions
from vincie_train.data.masks import SyntheticMasker
from vincie_train.data.sampling import SamplingConfig
from vincie_train.embedded import extend_vocabulary
from vincie_train.eval.editors import copy_editor, oracle_editor
from vincie_train.eval.shapes_bench import load_items, make_items, run_shapes_bench, save_items, summarize
from vincie_train.pretrain import DataConfig, SessionPool, instructions_of, recall_turns, with_back_instructions
from vincie_train.synth import TEMPLATES, Scene, SceneObject, load_sidecar
from vincie_train.synth.dynamics import Edit, apply_edit
from vincie_train.synth.instructions import describe_changes, diff_scenes
from vincie_train.synth.undo import undo_edits, undo_span
from vincie_train.synth.video import sample_video, synth_dataset
from vincie_train.synth.world import cell_center

KINDS = ("add", "remove", "move", "recolor", "resize", "background")


def _obj(shape, color, size, row, col, oid):
    x, y = cell_center(row, col)
    return SceneObject(shape, color, size, x, y, id=oid)


RED = _obj("circle", "red", "small", 0, 0, 1)
BLUE = _obj("square", "blue", "large", 2, 2, 2)
START = Scene(objects=(RED, BLUE), background="white")


def _after(scene, *edits):
    out = [scene]
    for e in edits:
        out.append(apply_edit(out[-1], e))
    return out


def _regex(template):
    return re.compile("^" + ".+".join(re.escape(p) for p in re.split(r"\{\w+\}", template)) + "$")


def _back_regex(split):
    return [_regex(t) for k, v in TEMPLATES.items() if k.endswith("_back") for t in v[split]]


def test_undo_restores_the_state_before_the_latest_change_of_each_thing():
    history = _after(START, Edit("move", 1, (1, 1)), Edit("move", 1, (0, 2)), Edit("recolor", 2, "green"),
                     Edit("background", value=("navy", "flat")), Edit("remove", 2))
    edits = {e.type: e for e in undo_edits(history)}
    # the circle goes back to the cell before its latest move (1, 1), not to where it started
    assert edits["move"] == Edit("move", 1, (1, 1))
    # the removed square comes back as last seen (green now), in its cell, with a fresh id
    back = edits["add"].value
    assert (back.color, back.shape, back.size, back.x, back.y) == ("green", "square", "large", BLUE.x, BLUE.y)
    assert edits["background"].value == ("white", START.background_style)
    assert "recolor" not in edits and "resize" not in edits  # the circle's colour and size never changed
    # how far back the restored state was last shown
    assert undo_span(history, apply_edit(history[-1], edits["move"])) == 4
    assert undo_span(history, apply_edit(history[-1], edits["add"])) == 1
    assert undo_span(history, apply_edit(history[-1], edits["background"])) == 2
    # a change that restores nothing earlier is not an undo
    assert undo_span(history, apply_edit(history[-1], Edit("move", 1, (2, 0)))) is None
    assert undo_edits(history[:1]) == [] and undo_span(history[:1], history[0]) is None


def test_a_reused_id_is_not_the_old_object():
    # the square (id 2) leaves; a new object takes id 2: its "earlier state" must not be the square's
    new = _obj("diamond", "yellow", "medium", 2, 2, 2)
    history = _after(START, Edit("remove", 2), Edit("add", value=new))
    assert [e.type for e in undo_edits(history)] == []  # the square's cell is taken, the diamond is new


def test_videos_revert_and_the_default_stream_is_unchanged():
    kinds = KINDS
    plain = sample_video(np.random.default_rng([7, 1]), 10, 12.0, types=kinds)
    same = sample_video(np.random.default_rng([7, 1]), 10, 12.0, types=kinds, revert_prob=0.0)
    assert plain.scenes == same.scenes
    undone = total = 0
    for i in range(40):
        video = sample_video(np.random.default_rng([7, i]), 10, 12.0, types=kinds, revert_prob=0.5)
        history = [video.events[0].before]
        for event in video.events:
            total += 1
            undone += undo_span(history, event.after) is not None
            history.append(event.after)
    assert 0.25 < undone / total < 0.75, (undone, total)
    with pytest.raises(ValueError, match="revert_prob"):
        synth_dataset("/nonexistent", 1, revert_prob=1.5, progress=False)


@pytest.fixture(scope="module")
def back_shards(tmp_path_factory):
    videos = tmp_path_factory.mktemp("revert_videos")
    synth_dataset(videos, 8, seed=3, seconds=(10.0, 12.0), types=KINDS, revert_prob=0.6, progress=False)
    out = tmp_path_factory.mktemp("back_shards")
    build_shards(videos, out, SyntheticAnnotator(back_prob=1.0), SyntheticMasker(),
                 BuildConfig(videos_per_shard=4, sampling=SamplingConfig(strategy="rests")), progress=False)
    return videos, out


def test_annotator_phrases_undos_by_reference_with_the_right_span(back_shards):
    videos, out = back_shards
    train_back, eval_back = _back_regex("train"), _back_regex("eval")
    found = 0
    for s in read_sessions(out):
        side = load_sidecar(videos / s.provenance["video"].replace(".mp4", ".json"))
        scenes = [side["frames"][k]["scene"] for k in s.provenance["frame_indices"]]
        for i, turn in enumerate(s.turns):
            span = undo_span(scenes[: i + 1], scenes[i + 1])
            back = turn.extra.get("back")
            if span is not None and len(turn.changes) == 1:
                assert back is not None, (turn.instruction, span)  # back_prob 1: every undo
            if back is None:
                continue
            found += 1
            assert back["span"] == span and any(r.match(back["instruction"]) for r in train_back), back
            assert not any(r.match(back["instruction"]) for r in eval_back)
            assert not any(r.match(turn.instruction) for r in train_back)  # the explicit phrasing stays
    assert found >= 5


def test_trainer_uses_the_back_phrasing_only_when_the_session_holds_its_referent():
    frame = np.zeros((8, 8, 3), np.uint8)
    back = TurnRecord("move the red circle to the top left", extra={"back": {"instruction": "move the red circle back",
                                                                            "span": 2}})
    turns = [TurnRecord("move the red circle to the center"), TurnRecord("make the blue square green"), back]
    record = SessionRecord("k", [frame] * 4, turns)
    assert with_back_instructions(record).turns[2].instruction == "move the red circle back"
    cut = SessionRecord("k", [frame] * 3, turns[1:])  # starts one frame later: the referent is gone
    assert with_back_instructions(cut).turns[1].instruction == "move the red circle to the top left"
    assert instructions_of(back) == ["move the red circle to the top left", "move the red circle back"]


def test_recall_share_draws_samples_ending_at_a_back_turn_with_its_referent():
    frames = [np.full((8, 8, 3), i, np.uint8) for i in range(6)]
    turns = [TurnRecord(f"explicit {k}") for k in range(5)]
    turns[3] = TurnRecord("explicit 3", extra={"back": {"instruction": "move it back", "span": 2}})
    turns[1] = TurnRecord("explicit 1", extra={"back": {"instruction": "too far back", "span": 2}})  # no room
    plain = SessionRecord("plain", frames[:3], [TurnRecord("a"), TurnRecord("b")])
    sessions = [plain, SessionRecord("k", frames, turns)]
    assert recall_turns(sessions, min_turns=1, max_turns=5) == [(1, 3, 3)]
    assert recall_turns(sessions, min_turns=1, max_turns=2) == []  # a sample of 2 turns cannot reach back 2 frames
    pool = SessionPool.from_sessions(sessions, DataConfig(min_turns=1, max_turns=5, recall_share=1.0))
    drawn = pool.draw(np.random.default_rng(0), 200)
    assert all(d.turns[-1].instruction == "move it back" for d in drawn)
    lengths = {len(d.turns) for d in drawn}
    assert lengths == {3, 4}  # span + 1 .. all turns up to the back turn
    assert all(int(d.frames[-1][0, 0, 0]) == 4 and len(d.frames) == len(d.turns) + 1 for d in drawn)
    half = SessionPool.from_sessions(sessions, DataConfig(min_turns=1, max_turns=5, recall_share=0.5))
    share = np.mean([d.turns[-1].instruction == "move it back" for d in half.draw(np.random.default_rng(1), 2000)])
    assert 0.5 <= share < 0.6  # the configured half, plus uniform draws that happen to end there
    with pytest.raises(ValueError, match="recall_share"):
        SessionPool.from_sessions([plain], DataConfig(recall_share=0.5))


def test_extend_vocabulary_keeps_the_trained_words(tmp_path):
    from vincie_sdk.config import TextEncoderConfig
    from vincie_sdk.models.text_encoder import TextEncoder, build_text_encoder_folder

    cfg = TextEncoderConfig(hidden_size=32, max_length=16, trust_remote_code=False, dtype="float32")
    folder = build_text_encoder_folder(tmp_path / "te", vocab=["move", "the", "red", "circle"], max_length=16)
    text = TextEncoder.from_pretrained(folder, cfg, dtype=torch.float32)
    with torch.no_grad():
        before = text.encode(["move the red circle"])[0].clone()
    rows = text.model.get_input_embeddings().weight.detach().clone()
    assert text.token_ids("move the red circle back")[-2] == 0  # [UNK]
    added = extend_vocabulary(text, ["move", "back", "its", "Old", "back"], seed=1)
    assert added == ["back", "its", "old"]
    ids = text.token_ids("move the red circle back")
    assert ids[:4] == [2, 3, 4, 5] and ids[4] == 6
    weight = text.model.get_input_embeddings().weight
    assert weight.shape[0] == 9 and torch.equal(weight[:6], rows)
    with torch.no_grad():
        assert torch.allclose(text.encode(["move the red circle"])[0], before)  # cache dropped, same result
    assert extend_vocabulary(text, ["back"]) == []
    text.save_pretrained(tmp_path / "saved")
    again = TextEncoder.from_pretrained(tmp_path / "saved", cfg, dtype=torch.float32)
    assert again.token_ids("move the red circle back") == ids


def test_shapesbench_recall_variant(tmp_path):
    items = make_items(40, recall=0.5)
    assert make_items(40) == make_items(40, recall=0.0) and not any(i.back for i in make_items(40))
    back_turns = [(i, k) for i in items for k in range(1, i.n_turns + 1) if i.is_back(k)]
    assert 30 <= len(back_turns) <= 110 and all(k >= 2 for _, k in back_turns)
    eval_back = _back_regex("eval")
    train = [_regex(t) for v in TEMPLATES.values() for t in v["train"]]
    for item, k in back_turns:
        text = item.instructions[k - 1]
        assert any(r.match(text) for r in eval_back) and not any(r.match(text) for r in train), text
        assert undo_span(item.scenes[:k], item.scenes[k]) is not None
    oracle = summarize(run_shapes_bench(items, oracle_editor, masks=False))
    assert oracle["cumulative_success"] == [1.0] * 5 and oracle["recall_turns"] == {"n": len(back_turns), "success": 1.0}
    assert summarize(run_shapes_bench(items, copy_editor, masks=False))["cumulative_success"] == [0.0] * 5
    save_items(items, tmp_path / "bench")
    loaded, _ = load_items(tmp_path / "bench")
    assert [i.back for i in loaded] == [i.back for i in items]
    with pytest.raises(ValueError, match="recall"):
        make_items(2, recall=2.0)


def test_back_phrasing_needs_one_change():
    a = START
    b = dataclasses.replace(apply_edit(a, Edit("recolor", 1, "green")), background="navy")
    text, _ = describe_changes(diff_scenes(a, b), np.random.default_rng(0), "train", back=True)
    assert not {"back", "old"} & set(text.split()) and " and " in text, text


def test_focus_share_draws_samples_ending_at_a_turn_of_the_focus_categories():
    frames = [np.full((8, 8, 3), i, np.uint8) for i in range(6)]
    cats = ["add", "background", "move", "remove", "background"]
    sessions = [SessionRecord("k", frames, [TurnRecord(f"i{k}", category=c) for k, c in enumerate(cats)]),
                SessionRecord("plain", frames[:3], [TurnRecord("a", category="add"), TurnRecord("b", category="move")])]
    pool = SessionPool.from_sessions(sessions, DataConfig(min_turns=1, max_turns=3, focus_categories=("background",),
                                                          focus_share=1.0))
    drawn = pool.draw(np.random.default_rng(0), 300)
    assert all(d.turns[-1].category == "background" for d in drawn)
    assert {len(d.turns) for d in drawn} == {1, 2, 3}  # min_turns..max_turns, within the session
    assert all(len(d.frames) == len(d.turns) + 1 and int(d.frames[-1][0, 0, 0]) in (2, 5) for d in drawn)
    plain = SessionPool.from_sessions(sessions, DataConfig(min_turns=1, max_turns=3))
    part = SessionPool.from_sessions(sessions, DataConfig(min_turns=1, max_turns=3, focus_categories=("background",),
                                                          focus_share=0.4))
    def share(p):
        return np.mean([d.turns[-1].category == "background" for d in p.draw(np.random.default_rng(1), 3000)])
    base = share(plain)
    assert abs(share(part) - (0.4 + 0.6 * base)) < 0.04  # the configured share plus uniform draws ending there
    with pytest.raises(ValueError, match=r"focus_categories=\['resize'\].*'background'"):
        SessionPool.from_sessions(sessions, DataConfig(focus_categories=("resize",), focus_share=0.5))
