"""`vincie data synth|build|show` through the standalone entry and the `vincie.commands` hook."""

from __future__ import annotations

import argparse
import doctest
import importlib
import json
from importlib.metadata import entry_points

import pytest
from vincie_train import cli


@pytest.mark.parametrize("argv", [["data"], ["data", "synth"], ["data", "build"], ["data", "show"]])
def test_help(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main([*argv, "--help"])
    assert exc.value.code == 0
    assert "usage:" in capsys.readouterr().out


def test_register_adds_data_to_a_foreign_parser():
    parser = argparse.ArgumentParser(prog="vincie")
    sub = parser.add_subparsers(dest="command")
    cli.register(sub)
    args = parser.parse_args(["data", "show", "x.tar", "-o", "y.png"])
    assert args.func is cli.cmd_show and args.shard == "x.tar"


def test_entry_point_is_declared():
    found = [ep for ep in entry_points(group="vincie.commands") if ep.value == "vincie_train.cli:register"]
    if not found:
        pytest.skip("package metadata not installed (pip install -e .)")
    assert found[0].load() is cli.register


def test_synth_build_show_round_trip(tmp_path, capsys):
    videos, shards, sheet = tmp_path / "v", tmp_path / "s", tmp_path / "sheet.png"
    assert cli.main(["data", "synth", "--out", str(videos), "--videos", "3", "--seed", "1", "--max-seconds", "3",
                     "--no-progress"]) == 0
    assert len(list(videos.glob("*.mp4"))) == 3 and len(list(videos.glob("*.json"))) == 3
    assert cli.main(["data", "build", "--videos", str(videos), "--out", str(shards), "--interval", "1",
                     "--no-progress"]) == 0
    out = capsys.readouterr().out
    summary = json.loads(out[out.index("{"):])
    assert summary["sessions"] > 0 and (shards / "shard-00000.tar").exists()
    assert cli.main(["data", "show", str(shards / "shard-00000.tar"), "-o", str(sheet)]) == 0
    assert sheet.stat().st_size > 1000


def test_synth_types_restrict_the_events(tmp_path, capsys):
    from vincie_train.synth import load_sidecar

    videos = tmp_path / "v"
    assert cli.main(["data", "synth", "--out", str(videos), "--videos", "4", "--min-seconds", "6", "--max-seconds", "8",
                     "--types", "recolor, move", "--no-progress"]) == 0
    types = [ev["type"] for p in sorted(videos.glob("*.json")) for ev in load_sidecar(p)["events"]]
    assert len(types) >= 8 and set(types) == {"recolor", "move"}, types
    assert cli.main(["data", "synth", "--out", str(tmp_path / "w"), "--videos", "1", "--types", "recolour"]) == 2
    assert "recolour" in capsys.readouterr().err


def test_errors_are_reported_not_raised(tmp_path, capsys):
    assert cli.main(["data", "build", "--videos", str(tmp_path / "missing"), "--out", str(tmp_path / "o"),
                     "--no-progress"]) == 2
    assert "missing" in capsys.readouterr().err
    assert cli.main(["data", "build", "--videos", str(tmp_path), "--out", str(tmp_path / "o"), "--shard", "3/2"]) == 2
    assert "I/N" in capsys.readouterr().err
    assert cli.main(["data", "build", "--videos", str(tmp_path), "--out", str(tmp_path / "o"),
                     "--annotator", "openai"]) == 2
    assert "--openai-model" in capsys.readouterr().err
    assert cli.main(["data", "build", "--videos", str(tmp_path), "--out", str(tmp_path / "o"),
                     "--annotator", "openai", "--openai-model", "m", "--back-phrasing", "0.5"]) == 2
    assert "--back-phrasing needs the synthetic annotator" in capsys.readouterr().err
    assert cli.main(["data", "build", "--videos", str(tmp_path), "--out", str(tmp_path / "o"),
                     "--back-phrasing", "1.5"]) == 2
    assert "back_prob=1.5" in capsys.readouterr().err
    assert cli.main(["data", "synth", "--out", str(tmp_path / "w"), "--videos", "1", "--revert-prob", "-1"]) == 2
    assert "revert_prob=-1" in capsys.readouterr().err
    assert cli.main(["data", "show", str(tmp_path / "none.tar"), "-o", str(tmp_path / "x.png")]) == 2


@pytest.mark.parametrize(
    "module",
    ["vincie_train.synth.world", "vincie_train.synth.instructions", "vincie_train.synth.dynamics",
     "vincie_train.synth.parse", "vincie_train.synth.video", "vincie_train.synth", "vincie_train.synth.undo", "vincie_train.data.sampling",
     "vincie_train.data.shots", "vincie_train.data.annotate", "vincie_train.data.format", "vincie_train.data.masks",
     "vincie_train.data.build"],
)
def test_docstring_examples(module):
    result = doctest.testmod(importlib.import_module(module), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0
