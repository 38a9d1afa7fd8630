"""Benchmarks of editing models. ShapesBench: held-out multi-turn sessions of the synthetic shapes world.

* :func:`make_items` / :func:`save_items` / :func:`load_items` -- the benchmark sessions.
* :func:`run_shapes_bench` + :func:`summarize` + :func:`format_report` -- run an editor, score, report.
* :func:`judge_turn` / :func:`parse_prediction` / :func:`mask_iou` -- the pixel judge.
* editors: :class:`ModelEditor` (with or without context), :func:`copy_editor`, :func:`oracle_editor`,
  :class:`FolderEditor`.
* :func:`register_eval` -- adds ``vincie eval shapes|mse-bench|magicbrush`` to the command line.
* :mod:`.mse_bench` -- MSE-Bench: :func:`load_mse_bench`, :func:`generate_sessions`, :class:`VlmJudge`,
  :func:`judge_all`, :func:`aggregate` (the official VLM-judge protocol, any OpenAI-compatible endpoint).
* :mod:`.magicbrush` -- MagicBrush metrics per turn (L1, L2, CLIP-I, CLIP-T, DINO).

Example:
    >>> from vincie_train.eval import make_items, oracle_editor, run_shapes_bench, summarize
    >>> summarize(run_shapes_bench(make_items(3), oracle_editor))["cumulative_success"]
    [1.0, 1.0, 1.0, 1.0, 1.0]
"""

from .cli import register_eval
from .editors import FolderEditor, ModelEditor, copy_editor, oracle_editor
from .judge import JudgeConfig, ParsedFrame, TurnVerdict, judge_turn, mask_iou, parse_prediction
from .shapes_bench import (
    BenchResult,
    ShapesItem,
    TurnRecord,
    cumulative_success,
    format_report,
    load_items,
    make_items,
    run_shapes_bench,
    save_items,
    summarize,
)

__all__ = [
    "BenchResult",
    "FolderEditor",
    "JudgeConfig",
    "ModelEditor",
    "ParsedFrame",
    "ShapesItem",
    "TurnRecord",
    "TurnVerdict",
    "copy_editor",
    "cumulative_success",
    "format_report",
    "judge_turn",
    "load_items",
    "make_items",
    "mask_iou",
    "oracle_editor",
    "parse_prediction",
    "register_eval",
    "run_shapes_bench",
    "save_items",
    "summarize",
]
