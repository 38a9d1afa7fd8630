"""ShapesBench: items, judge, aggregation, editors and the CLI (all on CPU, a few seconds)."""

from __future__ import annotations

import dataclasses
import json
import re
from collections import Counter

import numpy as np
import pytest
from PIL import Image, ImageFilter
from vincie_train.eval import (
    BenchResult,
    FolderEditor,
    ModelEditor,
    TurnRecord,
    TurnVerdict,
    copy_editor,
    cumulative_success,
    judge_turn,
    load_items,
    make_items,
    mask_iou,
    oracle_editor,
    run_shapes_bench,
    save_items,
    summarize,
)
from vincie_train.eval.cli import main as eval_main
from vincie_train.synth.instructions import EDIT_TYPES, TEMPLATES, diff_scenes
from vincie_train.synth.world import Scene, SceneObject, cell_center, render


def _obj(shape, color, size, row, col, oid):
    x, y = cell_center(row, col)
    return SceneObject(shape, color, size, x, y, id=oid)


RED = _obj("circle", "red", "small", 0, 0, 0)
BLUE = _obj("square", "blue", "medium", 1, 1, 1)
BASE = Scene(objects=(RED, BLUE), background="navy", background_style="vertical")


def _with(scene: Scene, *objs: SceneObject, background: str | None = None) -> Scene:
    return dataclasses.replace(scene, objects=tuple(objs), background=background or scene.background)


# --- items ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def items100():
    return make_items(100, seed=1234)


def test_items_are_deterministic_prefix_stable_and_seeded(items100):
    again = make_items(100, seed=1234)
    assert [i.to_dict() for i in again] == [i.to_dict() for i in items100]
    assert [i.to_dict() for i in make_items(20, seed=1234)] == [i.to_dict() for i in items100[:20]]
    assert [i.to_dict() for i in make_items(5, seed=1235)] != [i.to_dict() for i in items100[:5]]
    train_worded = make_items(5, seed=1234, phrasings="train")
    assert [i.scenes for i in train_worded] == [i.scenes for i in items100[:5]]
    assert all(a.instructions != b.instructions for a, b in zip(train_worded, items100))


def test_items_are_balanced_single_edits_in_the_benchmark_world(items100):
    counts = Counter(c for item in items100 for c in item.categories)
    assert set(counts) == set(EDIT_TYPES)
    assert sum(counts.values()) == 500
    assert max(counts.values()) - min(counts.values()) <= 2, counts
    assert len(Counter(item.categories[0] for item in items100)) == len(EDIT_TYPES)  # all appear at turn 1
    for item in items100:
        assert item.n_turns == 5 and len(item.scenes) == 6
        assert all(len(ch) == 1 for ch in item.changes)
        assert all(s.camera.is_identity and s.light == 1.0 for s in item.scenes)


def _template_regex(template: str) -> re.Pattern:
    parts = re.split(r"\{\w+\}", template)
    return re.compile("^" + ".+".join(re.escape(p) for p in parts) + "$")


def test_instructions_use_only_held_out_phrasings(items100):
    for key, splits in TEMPLATES.items():
        assert not set(splits["train"]) & set(splits["eval"]), key
    train = [_template_regex(t) for s in TEMPLATES.values() for t in s["train"]]
    held_out = [_template_regex(t) for s in TEMPLATES.values() for t in s["eval"]]
    for item in items100:
        for text in item.instructions:
            assert any(r.match(text) for r in held_out), text
            assert not any(r.match(text) for r in train), text


# --- judge ---------------------------------------------------------------------------------------------


def test_judge_accepts_the_ground_truth_of_each_edit_type():
    green = dataclasses.replace(RED, color="green")
    cases = [
        _with(BASE, green, BLUE),  # recolor
        _with(BASE, RED, dataclasses.replace(BLUE, size="large")),  # resize
        _with(BASE, BLUE),  # remove
        _with(BASE, RED, BLUE, _obj("triangle", "yellow", "large", 2, 2, 2)),  # add
        _with(BASE, _obj("circle", "red", "small", 2, 0, 0), BLUE),  # move
        _with(BASE, RED, BLUE, background="white"),  # background
    ]
    for expected in cases:
        verdict = judge_turn(render(expected), BASE, expected, diff_scenes(BASE, expected))
        assert verdict.success and verdict.consistency_score == 1.0, (verdict.category, verdict.reasons)


GREEN = dataclasses.replace(RED, color="green")
RECOLORED = _with(BASE, GREEN, BLUE)


@pytest.mark.parametrize("name, predicted, pf, consistent, kind", [
    ("wrong colour", _with(BASE, dataclasses.replace(RED, color="yellow"), BLUE), False, True, "target"),
    ("not edited", BASE, False, True, "target"),
    ("wrong cell", _with(BASE, _obj("circle", "green", "small", 2, 2, 0), BLUE), False, True, "target"),
    ("wrong size", _with(BASE, dataclasses.replace(GREEN, size="large"), BLUE), False, True, "target"),
    ("extra object", _with(BASE, GREEN, BLUE, _obj("diamond", "magenta", "small", 2, 1, 5)), True, False, "extra"),
    ("missing object", _with(BASE, GREEN), True, False, "missing"),
    ("other object changed", _with(BASE, GREEN, dataclasses.replace(BLUE, size="small")), True, False, "missing"),
    ("background changed", _with(BASE, GREEN, BLUE, background="brown"), True, False, "background"),
])
def test_judge_catches_each_failure_type(name, predicted, pf, consistent, kind):
    verdict = judge_turn(render(predicted), BASE, RECOLORED, diff_scenes(BASE, RECOLORED))
    assert (verdict.prompt_following, verdict.consistency, verdict.success) == (pf, consistent, False), name
    assert kind in verdict.failure_kinds, verdict.reasons
    assert verdict.category == "recolor"


def test_judge_catches_move_duplicates_unremoved_objects_and_smears():
    moved = _with(BASE, _obj("circle", "red", "small", 2, 0, 0), BLUE)
    changes = diff_scenes(BASE, moved)
    duplicated = _with(BASE, RED, BLUE, _obj("circle", "red", "small", 2, 0, 3))  # copied, not moved
    assert not judge_turn(render(duplicated), BASE, moved, changes).prompt_following

    removed = _with(BASE, BLUE)
    assert not judge_turn(render(BASE), BASE, removed, diff_scenes(BASE, removed)).prompt_following

    recolor_bg = _with(BASE, RED, BLUE, background="white")
    v = judge_turn(render(BASE), BASE, recolor_bg, diff_scenes(BASE, recolor_bg))
    assert v.category == "background" and not v.prompt_following and v.consistency

    smeared = render(RECOLORED).copy()
    smeared[40:52, 2:20] = (150, 110, 170)  # a blob of no palette colour: neither object nor background
    v = judge_turn(smeared, BASE, RECOLORED, diff_scenes(BASE, RECOLORED))
    assert v.prompt_following and not v.consistency and "artifacts" in v.failure_kinds

    assert judge_turn(None, BASE, RECOLORED, diff_scenes(BASE, RECOLORED)).failure_kinds == ("no-image",)


def test_judge_tolerates_model_like_degradations(items100):
    rng = np.random.default_rng(0)

    def add(im, delta):
        return Image.fromarray(np.clip(np.asarray(im) + delta, 0, 255).astype(np.uint8))

    degrade = {
        "noise": lambda im: add(im, rng.normal(0, 10, (64, 64, 3))),
        "colour shift": lambda im: add(im, np.array([20, -15, 10])),
        "blur": lambda im: im.filter(ImageFilter.GaussianBlur(1.0)),
        "upsampled": lambda im: im.resize((256, 256), Image.BILINEAR),
    }
    for item in items100[:4]:
        for k in range(1, item.n_turns + 1):
            for name, f in degrade.items():
                v = judge_turn(f(item.image(k)), item.scenes[k - 1], item.scenes[k], list(item.changes[k - 1]))
                assert v.success, (name, item.id, k, v.reasons)


def test_mask_iou():
    truth = np.zeros((8, 8), dtype=bool)
    truth[:4] = True
    assert mask_iou(Image.fromarray(truth.astype(np.uint8) * 255), truth) == 1.0
    half = np.zeros((8, 8), dtype=bool)
    half[:2] = True
    assert mask_iou(half, truth) == pytest.approx(0.5)
    assert mask_iou(np.zeros((16, 16), np.uint8), np.zeros((8, 8), bool)) == 1.0  # both empty agree


# --- runs and aggregation ------------------------------------------------------------------------------


def test_oracle_scores_exactly_one_at_every_turn(items100):
    s = summarize(run_shapes_bench(items100[:20], oracle_editor))
    assert s["cumulative_success"] == [1.0] * 5 and s["turn_success"] == [1.0] * 5
    assert s["prompt_following"] == s["consistency"] == 1.0
    assert s["mask_iou"]["current"] == s["mask_iou"]["next"] == 1.0 and s["mask_iou"]["n"] == 100
    assert all(c["all"]["success"] == 1.0 for c in s["per_category"].values())
    assert s["pixel_distance"] == {"l1": [0.0] * 5, "l2": [0.0] * 5}


def test_copy_scores_about_zero(items100):
    s = summarize(run_shapes_bench(items100[:50], copy_editor))
    assert s["cumulative_success"][0] <= 0.02
    assert s["evaluated_turns"] == 50  # every session stopped at its first (failed) turn
    assert s["consistency"] == 1.0 and s["mask_iou"]["n"] == 0
    # L1 / L2 to the true image are MagicBrush's, computed by hand here for the first session.
    item = items100[0]
    diff = np.asarray(item.image(0), float) / 255 - np.asarray(item.image(1), float) / 255
    first = summarize(run_shapes_bench(items100[:1], copy_editor))["pixel_distance"]
    assert first["l1"][0] == pytest.approx(np.abs(diff).mean()) and first["l2"][0] == pytest.approx((diff ** 2).mean())
    assert first["l1"][0] > 0 and first["l1"][1:] == [None] * 4


def test_cumulative_aggregation_matches_hand_computation():
    # Sessions: A passes, passes, fails; B fails turn 1; C passes all 5; D passes then fails.
    outcomes = {"A": [True, True, False], "B": [False], "C": [True] * 5, "D": [True, False]}
    assert cumulative_success(list(outcomes.values()), 5) == [0.75, 0.5, 0.25, 0.25, 0.25]
    assert cumulative_success([[True, False, True]], 3) == [1.0, 0.0, 0.0]  # nothing counts after a failure

    def verdict(ok, cat):
        return TurnVerdict(cat, ok, True, 1.0, () if ok else ("target: x",))

    records = [TurnRecord(sid, k + 1, verdict(ok, "add" if k == 0 else "move"), 1.0)
               for sid, oks in outcomes.items() for k, ok in enumerate(oks)]
    s = summarize(BenchResult(records, n_sessions=5, n_turns=5))  # a fifth session never ran: counts as 0
    assert s["cumulative_success"] == [0.6, 0.4, 0.2, 0.2, 0.2]
    assert s["turn_success"] == [0.75, pytest.approx(2 / 3), 0.5, 1.0, 1.0]
    assert s["per_category"]["add"]["turn1"] == {"n": 4, "success": 0.75}
    assert s["per_category"]["move"]["all"] == {"n": 7, "success": pytest.approx(5 / 7)}
    assert s["failure_kinds"] == {"target": 3}


def test_items_round_trip_and_folder_predictions_are_judged(tmp_path, items100):
    items = items100[:3]
    save_items(items, tmp_path / "data", seed=1234)
    loaded, meta = load_items(tmp_path / "data")
    assert meta["seed"] == 1234 and [i.to_dict() for i in loaded] == [i.to_dict() for i in items]
    preds = tmp_path / "preds"
    preds.mkdir()
    for item in items:
        for k in range(1, 6):
            item.image(k).save(preds / f"{item.id}_turn{k}.png")
    (preds / f"{items[1].id}_turn3.png").unlink()
    s = summarize(run_shapes_bench(loaded, FolderEditor(preds)))
    assert s["cumulative_success"] == [1.0, 1.0, pytest.approx(2 / 3), pytest.approx(2 / 3), pytest.approx(2 / 3)]
    assert s["failure_kinds"] == {"no-image": 1}


@pytest.fixture(scope="module")
def tiny_model():
    import torch

    from vincie_sdk import VincieModel
    from vincie_sdk.config import TINY

    # One thread: a tiny model gains nothing from two, and it is much slower when other jobs share the cores.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield VincieModel.from_random(TINY, seed=0)
    torch.set_num_threads(threads)


def test_model_editor_with_and_without_context_runs_a_tiny_model(items100, tiny_model):
    result = run_shapes_bench(items100[:1], ModelEditor(tiny_model, steps=1))
    rec = result.records[0]
    assert result.mask_error is None and rec.seconds > 0
    assert 0.0 <= rec.iou_current <= 1.0 and 0.0 <= rec.iou_next <= 1.0
    result = run_shapes_bench(items100[:1], ModelEditor(tiny_model, context=False, steps=1, masks=False))
    assert result.records[0].iou_current is None


def test_chain_editor_keeps_both_masks_in_context(items100, tiny_model):
    from vincie_sdk.prompts import FrameKind

    plain = ModelEditor(tiny_model, steps=1, masks=False)(items100[0])
    chain = ModelEditor(tiny_model, steps=1, masks=False, chain=True)(items100[0])
    for turns in (plain, chain):
        turns.edit(items100[0].instructions[0])
    assert [f.kind for f in plain.session.frames] == [FrameKind.IMAGE, FrameKind.IMAGE]
    assert [f.kind for f in chain.session.frames] == [FrameKind.IMAGE, FrameKind.CURRENT_MASK, FrameKind.NEXT_MASK,
                                                      FrameKind.IMAGE]


def test_teacher_forced_runs_judge_every_turn_from_the_ground_truth(items100, tiny_model):
    item = items100[0]
    with_history = ModelEditor(tiny_model, steps=1, masks=False)(item)
    alone = ModelEditor(tiny_model, context=False, steps=1, masks=False)(item)
    for turns in (with_history, alone):
        for k in (1, 2):
            turns.edit(item.instructions[k - 1])
            turns.follow_truth(item.instructions[k - 1], item.image(k))
    truth = [np.asarray(item.image(k).resize(with_history.session.size, Image.BICUBIC), dtype=int) for k in (0, 1, 2)]
    assert len(with_history.session.images) == 3 and with_history.session.prompts == list(item.instructions[:2])
    for shown, expected in zip(with_history.session.images, truth):
        assert np.abs(np.asarray(shown, dtype=int) - expected).mean() < 3
    assert len(alone.session.images) == 1 and alone.session.turns == 0
    assert np.abs(np.asarray(alone.session.images[0], dtype=int) - truth[2]).mean() < 3

    class Copying:  # copies the last true image: fails every turn, so only teacher forcing reaches turn 5
        def __init__(self, item):
            self.image = item.image(0)

        def edit(self, instruction):
            return self.image

        def predict_masks(self, instruction):
            return None

        def follow_truth(self, instruction, image):
            self.image = image

    s = summarize(run_shapes_bench(items100[:4], Copying, teacher_forced=True))
    assert s["teacher_forced"] and s["evaluated_turns"] == 20 and s["turn_success"] == [0.0] * 5
    assert summarize(run_shapes_bench(items100[:4], Copying))["evaluated_turns"] == 4
    with pytest.raises(ValueError, match="follow_truth"):
        run_shapes_bench(items100[:1], copy_editor, teacher_forced=True)


@pytest.mark.parametrize("history", ["no-text", "last-image", "last-image-no-text"])
def test_altered_true_histories_hold_what_they_name(items100, tiny_model, history):
    from vincie_train.eval.editors import WORDLESS

    item = items100[0]
    turns = ModelEditor(tiny_model, steps=1, masks=False, history=history)(item)
    for k in (1, 2):
        turns.edit(item.instructions[k - 1])
        turns.follow_truth(item.instructions[k - 1], item.image(k))
    s = turns.session
    words = [WORDLESS] * 2 if history.endswith("no-text") else list(item.instructions[:2])
    assert s.prompts == words and len(s.images) == 3
    shown = [np.asarray(i, dtype=int) for i in s.images]
    truth = [np.asarray(item.image(k).resize(s.size, Image.BICUBIC), dtype=int) for k in (0, 1, 2)]
    expected = [truth[2]] * 3 if history.startswith("last-image") else truth
    assert all(np.abs(a - b).mean() < 3 for a, b in zip(shown, expected))
    with pytest.raises(ValueError, match="history='all'"):
        ModelEditor(tiny_model, history="all")


def test_cli_writes_the_json_results(tmp_path, capsys, monkeypatch, tiny_model):
    from vincie_train.eval import cli

    monkeypatch.setattr(cli, "_load_model", lambda args: tiny_model)
    out = tmp_path / "shapes.json"
    argv = ["shapes", "--mode", "oracle", "--sessions", "2", "--json", str(out), "-q", "--baselines", "--steps", "1",
            "--no-masks"]
    assert eval_main(argv) == 0
    data = json.loads(out.read_text())
    assert data["cumulative_success"] == [1.0] * 5 and data["mode"] == "oracle" and data["seed"] == 1234
    for key in ("turn_success", "per_category", "prompt_following", "consistency", "mask_iou", "seconds_per_turn",
                "n_sessions", "model"):
        assert key in data
    assert set(data["baselines"]) == {"copy", "no-context"}
    assert data["baselines"]["copy"]["cumulative_success"] == [0.0] * 5
    assert len(data["baselines"]["no-context"]["cumulative_success"]) == 5
    assert "cumulative success" in capsys.readouterr().out
    # the recall variant: the oracle restores what the history holds, the report counts those turns
    assert eval_main(["shapes", "--mode", "oracle", "--sessions", "6", "--recall", "1", "--json", str(out), "-q",
                      "--no-masks"]) == 0
    data = json.loads(out.read_text())
    assert data["recall"] == 1.0 and data["recall_turns"]["n"] >= 12 and data["recall_turns"]["success"] == 1.0
    assert "phrased by reference to the history (recall)" in capsys.readouterr().out


def test_cli_ground_truth_modes(tmp_path, capsys, monkeypatch, tiny_model):
    from vincie_train.eval import cli

    monkeypatch.setattr(cli, "_load_model", lambda args: tiny_model)
    for mode in ("gt-history", "gt-source"):
        out = tmp_path / f"{mode}.json"
        assert eval_main(["shapes", "--mode", mode, "--sessions", "1", "--turns", "3", "--steps", "1", "--no-masks",
                          "-q", "--json", str(out)]) == 0
        data = json.loads(out.read_text())
        assert data["mode"] == mode and data["teacher_forced"] and data["evaluated_turns"] == 3
    assert "turn success (from the true past)" in capsys.readouterr().out
    assert eval_main(["shapes", "--mode", "gt-history", "--history", "no-text", "--sessions", "1", "--turns", "2",
                      "--steps", "1", "--no-masks", "-q", "--json", str(out)]) == 0
    assert json.loads(out.read_text())["history"] == "no-text"
    capsys.readouterr()
    assert eval_main(["shapes", "--mode", "model", "--history", "last-image", "--sessions", "1", "-q"]) == 2
    assert "--history last-image alters the true past of --mode gt-history" in capsys.readouterr().err


def test_cli_chain_mode_runs_the_model_with_its_adapters(tmp_path, monkeypatch, tiny_model):
    import vincie_sdk.cli
    from vincie_train.eval import cli

    loaded, applied = [], []
    monkeypatch.setattr(cli, "_load_model", lambda args: loaded.append(args.model) or tiny_model)
    monkeypatch.setattr(vincie_sdk.cli, "apply_loras", lambda model, specs: applied.append(specs))
    out = tmp_path / "chain.json"
    argv = ["shapes", "--mode", "chain", "--sessions", "1", "--turns", "1", "--steps", "1", "--no-masks", "-q",
            "--model", "some/model", "--lora", "a/adapter:0.5", "--json", str(out)]
    assert eval_main(argv) == 0
    data = json.loads(out.read_text())
    assert loaded == ["some/model"] and applied == [["a/adapter:0.5"]]
    assert data["mode"] == "chain" and data["model"] == "some/model" and data["lora"] == ["a/adapter:0.5"]
    assert data["evaluated_turns"] == 1
