"""ShapesBench: held-out multi-turn editing sessions of the synthetic shapes world, run and scored.

Items are deterministic for a seed: a start scene (64 px, identity camera, full light) and ``n_turns``
single-object edits drawn from add / remove / move / recolor / resize / background in a shuffled
"deck" order, so every category comes up equally often over the benchmark; instructions use the
*eval* phrasings (never seen in training). Each item keeps the ground-truth scene after every turn.

A run feeds every item to an editor (a model session, a baseline, or a folder of predictions) turn by
turn; the judge (:mod:`.judge`) scores each turn against the expected scene, and a session stops at its
first failed turn (as in MSE-Bench), so ``cumulative_success[k]`` is the share of sessions whose first
``k + 1`` turns all succeeded.

Example:
    >>> from vincie_train.eval.editors import oracle_editor
    >>> items = make_items(n_sessions=2, seed=1234)
    >>> summary = summarize(run_shapes_bench(items, oracle_editor, masks=False))
    >>> summary["cumulative_success"]
    [1.0, 1.0, 1.0, 1.0, 1.0]
"""

from __future__ import annotations

import itertools
import json
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
from PIL import Image
from vincie_train.synth.dynamics import WorldConfig, apply_edit, propose_edit, roe_from_masks, sample_scene
from vincie_train.synth.instructions import EDIT_TYPES, Change, category_of, describe_changes, diff_scenes
from vincie_train.synth.undo import sample_undo
from vincie_train.synth.world import Scene, render, render_layers

from .judge import ImageLike, JudgeConfig, TurnVerdict, judge_turn, mask_iou, to_rgb_array
from .magicbrush import distances

log = logging.getLogger(__name__)

DATA_FORMAT = "vincie-shapesbench/1"
DEFAULT_SEED = 1234
DEFAULT_SESSIONS = 100
DEFAULT_TURNS = 5
# Mixed into the seed so a benchmark stream never equals a training stream built from the same integer.
BENCH_SALT = 0x5348_4150
# The benchmark's world: WorldConfig's defaults (64 px, 1-4 objects at exact cell centres).
BENCH_WORLD = WorldConfig()


# --- items ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ShapesItem:
    """One benchmark session.

    Attributes:
        id: e.g. ``"s007"``; prediction files are named ``{id}_turn{k}.png``.
        scenes: ``n_turns + 1`` ground-truth scenes; ``scenes[k]`` is the state after turn ``k``.
        instructions: one per turn (eval phrasings).
        changes: the semantic change(s) of each turn (``diff_scenes(scenes[k - 1], scenes[k])``).
        size: frame side in pixels.
        back: per turn, whether it undoes an earlier change and is phrased by reference ("move the red
            circle back"), so that only the history tells what to do (the recall variant); empty = none.
    """

    id: str
    scenes: tuple[Scene, ...]
    instructions: tuple[str, ...]
    changes: tuple[tuple[Change, ...], ...]
    size: int = 64
    back: tuple[bool, ...] = ()

    def is_back(self, turn: int) -> bool:
        """Whether turn ``turn`` (1-based) is phrased by reference to the history."""
        return bool(self.back) and self.back[turn - 1]

    @property
    def n_turns(self) -> int:
        return len(self.instructions)

    @property
    def categories(self) -> tuple[str, ...]:
        return tuple(category_of(list(c)) for c in self.changes)

    def image(self, k: int = 0) -> Image.Image:
        """The ground-truth image after turn ``k`` (``k = 0``: the start image)."""
        return Image.fromarray(render(self.scenes[k], self.size))

    def roe(self, turn: int) -> tuple[np.ndarray, np.ndarray]:
        """Ground-truth region-of-editing masks of turn ``turn`` (1-based), as in the training data:
        ``(current, next)``, each (size, size) bool (the whole frame for a background change)."""
        _, src = render_layers(self.scenes[turn - 1], self.size)
        _, tgt = render_layers(self.scenes[turn], self.size)
        return roe_from_masks(list(self.changes[turn - 1]), src, tgt, (self.size, self.size))

    def to_dict(self) -> dict:
        return {"id": self.id, "instructions": list(self.instructions), "categories": list(self.categories),
                "scenes": [s.to_dict() for s in self.scenes],
                "changes": [[c.to_dict() for c in ch] for ch in self.changes],
                **({"back": list(self.back)} if any(self.back) else {})}

    @classmethod
    def from_dict(cls, d: dict, size: int = 64) -> ShapesItem:
        scenes = tuple(Scene.from_dict(s) for s in d["scenes"])
        if len(scenes) != len(d["instructions"]) + 1:
            raise ValueError(f"item {d.get('id')!r}: {len(scenes)} scenes for {len(d['instructions'])} "
                             "instructions; expected one more scene than instructions")
        # Changes are recomputed from the scenes (the stored ones are for readers of the file).
        changes = tuple(tuple(diff_scenes(a, b)) for a, b in itertools.pairwise(scenes))
        return cls(d["id"], scenes, tuple(d["instructions"]), changes, size, tuple(bool(b) for b in d.get("back", ())))


def _draw_edit(scene: Scene, rng: np.random.Generator, config: WorldConfig, deck: list[str]):
    # Take the first type in the deck that is possible in this scene; an impossible type stays at the
    # front for later, and a fresh shuffled deck is appended when nothing left is possible.
    while True:
        if not deck:
            deck.extend(EDIT_TYPES[int(k)] for k in rng.permutation(len(EDIT_TYPES)))
        for i, edit_type in enumerate(deck):
            edit = propose_edit(scene, edit_type, rng, config)
            if edit is not None:
                del deck[i]
                return edit
        deck.extend(EDIT_TYPES[int(k)] for k in rng.permutation(len(EDIT_TYPES)))


def make_items(n_sessions: int = DEFAULT_SESSIONS, seed: int = DEFAULT_SEED, n_turns: int = DEFAULT_TURNS,
               config: WorldConfig = BENCH_WORLD, phrasings: str = "eval", recall: float = 0.0) -> list[ShapesItem]:
    """The benchmark sessions for ``seed``. The first ``n`` items do not depend on ``n_sessions``.

    Args:
        n_sessions: number of sessions (>= 1).
        seed: benchmark seed (salted, so it never collides with a training stream of the same integer).
        n_turns: edits per session (>= 1).
        config: the world; keep the identity camera and full light (the judge assumes them).
        phrasings: ``"eval"`` (held-out wordings, the benchmark) or ``"train"`` (the training wordings: a
            diagnostic that separates unseen phrasing from editing skill; scenes and edits are identical).
        recall: the recall variant (0 = the benchmark itself): from turn 2 on, each turn is with this
            probability an undo of the latest change of one thing (:func:`vincie_train.synth.undo.sample_undo`)
            phrased by reference ("put the red circle back", "restore the background"), which only the
            session's history can resolve. Drawn from a stream of its own; items differ from the
            benchmark's from their first such turn on.

    Returns:
        ``n_sessions`` :class:`ShapesItem`, ids ``s000, s001, ...``.
    """
    if n_sessions < 1 or n_turns < 1:
        raise ValueError(f"make_items: n_sessions={n_sessions}, n_turns={n_turns}; both must be >= 1")
    if phrasings not in ("eval", "train"):
        raise ValueError(f"make_items: phrasings={phrasings!r}; use 'eval' (the benchmark) or 'train'")
    if seed < 0:
        raise ValueError(f"make_items: seed={seed}; use a non-negative integer")
    if not 0.0 <= recall <= 1.0:
        raise ValueError(f"make_items: recall={recall}; use a probability within [0, 1]")
    rng = np.random.default_rng([BENCH_SALT, seed])
    recalls = np.random.default_rng([BENCH_SALT, seed, 2])
    # Wordings draw from their own stream, so both phrasings give the same scenes and edits.
    words = np.random.default_rng([BENCH_SALT, seed, 1])
    deck: list[str] = []
    items = []
    for index in range(n_sessions):
        scenes, instructions, changes, back = [sample_scene(rng, config)], [], [], []
        for _ in range(n_turns):
            edit = sample_undo(scenes, recalls, config) if recall > 0 and recalls.random() < recall else None
            back.append(edit is not None)
            edit = edit or _draw_edit(scenes[-1], rng, config, deck)
            nxt = apply_edit(scenes[-1], edit, rng, config)
            change = diff_scenes(scenes[-1], nxt)
            instructions.append(describe_changes(change, words, split=phrasings, back=back[-1])[0])
            changes.append(tuple(change))
            scenes.append(nxt)
        items.append(ShapesItem(f"s{index:03d}", tuple(scenes), tuple(instructions), tuple(changes), config.size,
                                tuple(back) if any(back) else ()))
    return items


def save_items(items: list[ShapesItem], folder: str | Path, seed: int | None = None) -> Path:
    """Write ``items.json``, the start images ``{id}_turn0.png`` and the ground truth ``{id}_gt{k}.png``.

    Another system can be judged by reading ``items.json`` + the start images and writing its outputs
    as ``{id}_turn{k}.png`` (see :class:`~vincie_train.eval.editors.FolderEditor`).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for item in items:
        for k in range(item.n_turns + 1):
            item.image(k).save(folder / (f"{item.id}_turn0.png" if k == 0 else f"{item.id}_gt{k}.png"))
    meta = {"format": DATA_FORMAT, "seed": seed, "size": items[0].size if items else 64,
            "n_turns": items[0].n_turns if items else 0, "items": [i.to_dict() for i in items]}
    path = folder / "items.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(meta, indent=1))
    tmp.replace(path)
    return path


def load_items(folder: str | Path) -> tuple[list[ShapesItem], dict]:
    """Read a folder written by :func:`save_items`. Returns ``(items, metadata without the items)``."""
    path = Path(folder) / "items.json"
    if not path.is_file():
        raise FileNotFoundError(f"ShapesBench data not found: {path} (write it with --data on a new folder)")
    meta = json.loads(path.read_text())
    if meta.get("format") != DATA_FORMAT:
        raise ValueError(f"{path} has format {meta.get('format')!r}; expected {DATA_FORMAT!r}")
    items = [ShapesItem.from_dict(d, int(meta.get("size", 64))) for d in meta.pop("items")]
    return items, meta


# --- running -------------------------------------------------------------------------------------------


class TurnEditor(Protocol):
    """Edits one session turn by turn (see :mod:`vincie_train.eval.editors`)."""

    def edit(self, instruction: str) -> ImageLike | None: ...

    def predict_masks(self, instruction: str) -> tuple[ImageLike, ImageLike] | None: ...


EditorFactory = Callable[[ShapesItem], TurnEditor]


@dataclass(frozen=True)
class TurnRecord:
    """One evaluated turn. IoUs are ``None`` when masks were not predicted."""

    item: str
    turn: int  # 1-based
    verdict: TurnVerdict
    seconds: float
    iou_current: float | None = None
    iou_next: float | None = None
    back: bool = False  # phrased by reference to the history (recall variant)
    # MagicBrush's L1 / L2 against the ground-truth image of the turn (the paper's Table 4 measures context
    # with these); None when the editor returned no image.
    l1: float | None = None
    l2: float | None = None

    @property
    def category(self) -> str:
        return self.verdict.category


@dataclass
class BenchResult:
    records: list[TurnRecord]
    n_sessions: int
    n_turns: int
    mask_error: str | None = None
    teacher_forced: bool = False


def run_shapes_bench(items: list[ShapesItem], editor: EditorFactory, *, masks: bool = True,
                     judge: JudgeConfig = JudgeConfig(), progress: Callable[[Iterable], Iterable] | None = None,
                     teacher_forced: bool = False) -> BenchResult:
    """Run ``editor`` on every item; each session stops at its first failed turn.

    Args:
        items: from :func:`make_items` or :func:`load_items`.
        editor: ``editor(item)`` returns a fresh :class:`TurnEditor` for that session.
        masks: also ask for CSP/NSP masks before each edit (skipped for editors returning ``None``; the
            first exception turns masks off for the rest of the run and is reported in ``mask_error``).
        judge: judge tolerances.
        progress: optional wrapper over the item iterator (e.g. ``tqdm``).
        teacher_forced: a diagnostic, not the benchmark: after every turn the editor's session continues
            from the ground-truth image (``follow_truth(instruction, image)``, required) and no session
            stops early, so every turn is judged from a perfect history (``turn_success`` per turn).

    Returns:
        A :class:`BenchResult` with one :class:`TurnRecord` per evaluated turn.
    """
    if not items:
        raise ValueError("run_shapes_bench: no items; build them with make_items(n_sessions >= 1)")
    records, mask_error = [], None
    for item in (progress(items) if progress else items):
        session = editor(item)
        if teacher_forced and not hasattr(session, "follow_truth"):
            raise ValueError(f"run_shapes_bench: teacher_forced needs an editor with follow_truth(); "
                             f"{type(session).__name__} has none")
        for turn in range(1, item.n_turns + 1):
            instruction = item.instructions[turn - 1]
            ious: tuple[float | None, float | None] = (None, None)
            if masks and mask_error is None:
                try:
                    pred = session.predict_masks(instruction)
                    if pred is not None:
                        truth = item.roe(turn)
                        ious = (mask_iou(pred[0], truth[0]), mask_iou(pred[1], truth[1]))
                except Exception as e:  # a model without mask training must not stop the benchmark
                    mask_error = f"{type(e).__name__}: {e}"
                    log.warning("mask prediction failed (%s); continuing without masks", mask_error)
            start = time.perf_counter()
            image = session.edit(instruction)
            seconds = time.perf_counter() - start
            verdict = judge_turn(image, item.scenes[turn - 1], item.scenes[turn], list(item.changes[turn - 1]),
                                 judge, item.size)
            target = item.image(turn)
            l1, l2 = (None, None) if image is None else distances(
                Image.fromarray(to_rgb_array(image, item.size)), target)
            records.append(TurnRecord(item.id, turn, verdict, seconds, *ious, back=item.is_back(turn), l1=l1, l2=l2))
            if teacher_forced:
                session.follow_truth(instruction, target)
            elif not verdict.success:
                break
    return BenchResult(records, len(items), max(i.n_turns for i in items), mask_error, teacher_forced)


# --- aggregation ---------------------------------------------------------------------------------------


def cumulative_success(outcomes: list[list[bool]], n_turns: int) -> list[float]:
    """Share of sessions whose first ``k`` turns all succeeded, for ``k = 1..n_turns``.

    Args:
        outcomes: per session, the success of its turns in order (may stop early; anything after the
            first failure is ignored).
        n_turns: turns per session.

    Example:
        >>> cumulative_success([[True, True, False], [False], [True, True, True]], 3)
        [0.6666666666666666, 0.6666666666666666, 0.3333333333333333]
    """
    if not outcomes:
        return [0.0] * n_turns
    passed = [0] * n_turns
    for turns in outcomes:
        for k, ok in enumerate(turns[:n_turns]):
            if not ok:
                break
            passed[k] += 1
    return [p / len(outcomes) for p in passed]


def _mean(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


def _rate(records: list[TurnRecord], attr: str) -> float | None:
    return _mean([float(getattr(r.verdict, attr)) for r in records])


def summarize(result: BenchResult) -> dict:
    """JSON-ready summary of a run (see ``docs/shapes_bench.md`` for every key)."""
    recs, n = result.records, result.n_turns
    by_item: dict[str, list[TurnRecord]] = {}
    for r in recs:
        by_item.setdefault(r.item, []).append(r)
    outcomes = [[r.verdict.success for r in rs] for rs in by_item.values()]
    outcomes += [[] for _ in range(result.n_sessions - len(by_item))]
    reached = [[r for r in recs if r.turn == k] for k in range(1, n + 1)]
    per_category = {}
    for cat in sorted({r.category for r in recs}):
        rs = [r for r in recs if r.category == cat]
        first = [r for r in rs if r.turn == 1]
        per_category[cat] = {
            "turn1": {"n": len(first), "success": _rate(first, "success")},
            "all": {"n": len(rs), "success": _rate(rs, "success")},
            "prompt_following": _rate(rs, "prompt_following"),
            "consistency": _rate(rs, "consistency"),
        }
    back = [r for r in recs if r.back]
    iou_c = [r.iou_current for r in recs if r.iou_current is not None]
    iou_n = [r.iou_next for r in recs if r.iou_next is not None]
    return {
        "n_sessions": result.n_sessions,
        "n_turns": n,
        "teacher_forced": result.teacher_forced,
        "evaluated_turns": len(recs),
        "cumulative_success": cumulative_success(outcomes, n),
        "turn_success": [_rate(rs, "success") for rs in reached],
        # Per turn, over the turns evaluated there (all of them when teacher-forced; otherwise only sessions
        # that got that far, so compare editors on teacher-forced runs).
        "pixel_distance": {k: [_mean([getattr(r, k) for r in rs if getattr(r, k) is not None]) for rs in reached]
                           for k in ("l1", "l2")},
        "per_category": per_category,
        "recall_turns": {"n": len(back), "success": _rate(back, "success")},
        "prompt_following": _rate(recs, "prompt_following"),
        "consistency": _rate(recs, "consistency"),
        "consistency_score": _mean([r.verdict.consistency_score for r in recs]),
        "mask_iou": {"current": _mean(iou_c), "next": _mean(iou_n), "n": len(iou_c),
                     **({"error": result.mask_error} if result.mask_error else {})},
        "seconds_per_turn": _mean([r.seconds for r in recs]),
        "failure_kinds": dict(sorted(Counter(k for r in recs for k in set(r.verdict.failure_kinds)).items())),
        "sessions": [{"id": item, "turns": [{"turn": r.turn, "category": r.category, "success": r.verdict.success,
                                             "prompt_following": r.verdict.prompt_following,
                                             "consistency": r.verdict.consistency, "l1": r.l1, "l2": r.l2,
                                             "reasons": list(r.verdict.reasons)} for r in rs]}
                     for item, rs in by_item.items()],
    }


# --- report --------------------------------------------------------------------------------------------


def _f(x: float | None, digits: int = 2) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def format_report(summary: dict, title: str = "ShapesBench", baselines: dict[str, dict] | None = None) -> str:
    """Markdown tables: cumulative and per-turn success, per-category success, PF/consistency, mask IoU,
    seconds per turn, failure kinds, and (optionally) the baselines' cumulative success."""
    n = summary["n_turns"]
    turns = list(range(1, n + 1))
    # Teacher-forced runs judge every turn from the ground-truth past: that row is the one to read.
    per_turn = "turn success (from the true past)" if summary.get("teacher_forced") else "turn success (given reached)"
    lines = [f"{title}: {summary['n_sessions']} sessions x {n} turns, {summary['evaluated_turns']} turns evaluated", "",
             "| turn | " + " | ".join(map(str, turns)) + " |", "|---|" + "---:|" * n,
             "| cumulative success | " + " | ".join(_f(x) for x in summary["cumulative_success"]) + " |",
             f"| {per_turn} | " + " | ".join(_f(x) for x in summary["turn_success"]) + " |",
             *(f"| {k.upper()} to the true image | " + " | ".join(_f(x, 4) for x in v) + " |"
               for k, v in summary.get("pixel_distance", {}).items()), "",
             "| category | turn-1 n | turn-1 success | all n | all success | prompt following | consistency |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for cat, c in summary["per_category"].items():
        lines.append(f"| {cat} | {c['turn1']['n']} | {_f(c['turn1']['success'])} | {c['all']['n']} | "
                     f"{_f(c['all']['success'])} | {_f(c['prompt_following'])} | {_f(c['consistency'])} |")
    iou = summary["mask_iou"]
    lines += ["", (f"prompt following {_f(summary['prompt_following'])}, consistency {_f(summary['consistency'])} "
                   f"(graded {_f(summary['consistency_score'])}) over evaluated turns"),
              f"mask IoU: current {_f(iou['current'])}, next {_f(iou['next'])} ({iou['n']} turns)"
              + (f"; masks failed: {iou['error']}" if iou.get("error") else ""),
              f"seconds per turn: {_f(summary['seconds_per_turn'], 3)}"]
    recall = summary.get("recall_turns") or {"n": 0}
    if recall["n"]:
        lines.append(f"turns phrased by reference to the history (recall): {recall['n']}, success {_f(recall['success'])}")
    if summary["failure_kinds"]:
        lines.append("failed turns by kind: " + ", ".join(f"{k} {v}" for k, v in summary["failure_kinds"].items()))
    if baselines:
        lines += ["", "| mode | " + " | ".join(f"turn {t}" for t in turns) + " | s/turn |", "|---|" + "---:|" * (n + 1)]
        for name, s in {"(this run)": summary, **baselines}.items():
            lines.append(f"| {name} | " + " | ".join(_f(x) for x in s["cumulative_success"])
                         + f" | {_f(s['seconds_per_turn'], 3)} |")
    return "\n".join(lines)
