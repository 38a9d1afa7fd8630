"""The shipped embedded model ``vincie-shapes``: it loads offline, fits the size budget, edits the right
object and predicts where an edit happens. ShapesBench's judge decides what "right" means."""

from __future__ import annotations

import socket
from pathlib import Path

import numpy as np
import pytest
from vincie_train.eval.editors import ModelEditor, copy_editor
from vincie_train.eval.judge import mask_iou
from vincie_train.eval.shapes_bench import make_items, run_shapes_bench

from vincie_sdk import Session, VincieModel
from vincie_sdk.config import SHAPES

FOLDER = Path(__file__).resolve().parents[2] / "vincie_sdk" / "weights" / "vincie-shapes"
INSTALLED = (FOLDER / "config.json").is_file()
pytestmark = pytest.mark.skipif(not INSTALLED, reason=f"the embedded model is not installed at {FOLDER} "
                                "(scripts/train_embedded.sh trains and installs it)")

# Benchmark sessions of one kind at turn 1, from a seed of their own (not the benchmark's 1234).
SEED = 77


def _items(category: str, n: int):
    items = [i for i in make_items(200, seed=SEED, n_turns=1) if i.categories[0] == category]
    assert len(items) >= n
    return items[:n]


@pytest.fixture(scope="module")
def model():
    return VincieModel.from_pretrained("vincie-shapes", dtype="float32")


def test_loads_offline_within_the_size_budget(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def no_network(*args, **kwargs):
        raise AssertionError("the embedded model must load without the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    model = VincieModel.from_pretrained("vincie-shapes")
    size = sum(f.stat().st_size for f in FOLDER.rglob("*") if f.is_file())
    assert size <= 20 * 2**20, f"{size / 2**20:.1f} MB"
    assert model.config.dit == SHAPES.dit
    assert sum(p.numel() for p in model.dit.parameters()) > 1e6


@pytest.mark.parametrize("category,n,at_least", [("remove", 6, 4), ("recolor", 6, 4)])
def test_an_edit_changes_the_right_object(model, category, n, at_least):
    items = _items(category, n)
    result = run_shapes_bench(items, ModelEditor(model, masks=False), masks=False)
    wins = sum(r.verdict.success for r in result.records)
    assert wins >= at_least, [(r.item, r.verdict.reasons) for r in result.records]
    # The judge is not fooled by doing nothing.
    assert not any(r.verdict.success for r in run_shapes_bench(items, copy_editor, masks=False).records)


def test_predicts_the_region_an_edit_changes(model):
    items = _items("remove", 6)
    ious = []
    for item in items:
        session = Session(model, item.image(0), seed=1)
        current = session.predict_mask(item.instructions[0], "current")
        ious.append(mask_iou(current, item.roe(1)[0]))
    # An all-empty or all-full mask scores ~0 here (the removed object covers a few percent of the frame).
    assert np.mean(ious) >= 0.5, ious
