"""Editing datasets for fine-tuning: pairwise edits and multi-turn sequences as :class:`SessionRecord`s.

Sources are folders or files: ``.jsonl`` (one row per line), ``.json`` (a list of rows), ``.parquet``
(one row per table row; needs pyarrow) and this project's session shards (``.tar``, see
:mod:`.format`). A folder contributes every such file at its top level, sorted by name. Rows are:

* a **pair** -- ``source``, ``instruction``, ``target``: one edit, i.e. a 1-turn session. Pairs that
  share a ``session`` key are chained in ``turn`` order into one multi-turn session (the MagicBrush
  layout: the source of turn k + 1 is the target of turn k);
* a **sequence** -- ``images`` (K + 1) and ``instructions`` (K): a K-turn session.

An image value is a path (absolute, or relative to the file's folder), raw bytes, or a dict with
``bytes`` and/or ``path`` (how Hugging Face ``datasets`` stores Image columns in parquet). Column names
of common exports are recognised (:data:`ALIASES`: MagicBrush ``img_id``/``turn_index``/
``source_img``/``target_img``, OmniEdit ``src_img``/``edited_img``/``edited_prompt_list``, X2I2
``input_images``/``output_image``); any other naming is mapped with ``columns``. A list-valued
instruction keeps its first entry; a row with several input images (composition) is skipped. Every
skipped row is counted by reason and logged, never silently dropped. There are no region-of-editing
masks (``roe_src=None``), so the composition trains next-image prediction only.

Example:
    >>> records = read_edits("data/shapes-pairs")          # doctest: +SKIP
    >>> records[0].instructions                             # doctest: +SKIP
    ['add a small red circle at the top left']
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
from collections import Counter
from pathlib import Path
from typing import Any, Iterator

import numpy as np
from PIL import Image

from .format import CAMERA_NONE, SessionRecord, TurnRecord, read_sessions

log = logging.getLogger(__name__)

SUFFIXES = (".jsonl", ".json", ".parquet", ".tar")
ALIASES: dict[str, tuple[str, ...]] = {
    "source": ("source", "source_image", "source_img", "src_img", "input_image", "input_images", "input"),
    "target": ("target", "target_image", "target_img", "edited_img", "edited_image", "output_image", "output"),
    "instruction": ("instruction", "edit_instruction", "edited_prompt_list", "prompt", "text"),
    "session": ("session", "session_id", "img_id"),
    "turn": ("turn", "turn_index"),
    "images": ("images", "frames"),
    "instructions": ("instructions", "prompts"),
    "camera": ("camera",),
    "category": ("category", "task", "edit_type"),
}


class SkipRow(Exception):
    """A row that cannot be used; the message is the reason it is counted under."""


# ----------------------------------------------------------------------------------------------
# Reading
# ----------------------------------------------------------------------------------------------

def edit_files(path: str | os.PathLike) -> list[Path]:
    """The data files of a source: the file itself, or a folder's top-level ``.jsonl/.json/.parquet/.tar``."""
    path = Path(path).expanduser()
    if path.is_file():
        if path.suffix not in SUFFIXES:
            raise ValueError(f"edit data {path}: unsupported file type {path.suffix!r}; use one of {SUFFIXES}")
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix in SUFFIXES)
        if not files:
            raise FileNotFoundError(f"edit data {path}: no {'/'.join(SUFFIXES)} file in this folder "
                                    "(see docs/lora.md for the formats)")
        return files
    raise FileNotFoundError(f"edit data not found: {path}")


def read_edits(path: str | os.PathLike, *, columns: dict[str, str] | None = None, limit: int | None = None,
               max_side: int | None = None, stats: Counter | None = None) -> list[SessionRecord]:
    """Read every session of a source (see the module docstring for the formats).

    Args:
        path: a folder, or a ``.jsonl``/``.json``/``.parquet``/``.tar`` file.
        columns: our field name -> the column name in the files (e.g. ``{"source": "before"}``).
        limit: stop after this many sessions.
        max_side: shrink images whose longer side exceeds this (aspect ratio kept); None keeps them.
        stats: a Counter receiving ``sessions`` and one count per skip reason.

    Returns:
        Sessions with frames at the first frame's size (H, W, 3) uint8, in file and row order.
    """
    stats = stats if stats is not None else Counter()
    records: list[SessionRecord] = []
    for file in edit_files(path):
        before = Counter(stats)
        if file.suffix == ".tar":
            new = list(read_sessions(file))
        else:
            new = _records_from_rows(file, _rows(file), columns or {}, max_side, stats)
        records.extend(new)
        stats["sessions"] += len(new)
        skipped = {k: v - before.get(k, 0) for k, v in stats.items() if k != "sessions" and v != before.get(k, 0)}
        if skipped:
            log.warning("%s: skipped %d rows (%s)", file, sum(skipped.values()),
                        ", ".join(f"{k}: {v}" for k, v in sorted(skipped.items())))
        if limit is not None and len(records) >= limit:
            return records[:limit]
    return records


def _rows(file: Path) -> Iterator[dict]:
    if file.suffix == ".jsonl":
        with file.open() as f:
            for n, line in enumerate(f, 1):
                if line.strip():
                    try:
                        yield json.loads(line)
                    except json.JSONDecodeError as e:
                        yield {"__error__": f"bad JSON on line {n}: {e}"}
    elif file.suffix == ".json":
        data = json.loads(file.read_text())
        if isinstance(data, dict):  # {"items": [...]} or {key: row}
            data = data.get("items", data.get("data", list(data.values())))
        if not isinstance(data, list):
            raise ValueError(f"{file}: expected a JSON list of rows")
        yield from data
    elif file.suffix == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise ImportError(f"reading {file} needs pyarrow: pip install pyarrow") from None
        for batch in pq.ParquetFile(file).iter_batches(batch_size=64):
            yield from batch.to_pylist()


def _field(row: dict, name: str, columns: dict[str, str]) -> Any:
    if name in columns:
        return row.get(columns[name])
    for key in ALIASES[name]:
        if key in row and row[key] is not None:
            return row[key]
    return None


def _records_from_rows(file: Path, rows: Iterator[dict], columns: dict, max_side: int | None,
                       stats: Counter) -> list[SessionRecord]:
    stem = re.sub(r"[^A-Za-z0-9_-]", "-", file.stem)
    singles: list[SessionRecord] = []
    groups: dict[str, list[tuple[float, dict]]] = {}
    for i, row in enumerate(rows):
        try:
            if "__error__" in row:
                raise SkipRow("bad_json")
            if _field(row, "images", columns) is not None:
                singles.append(_sequence(row, columns, file.parent, f"{stem}-{i}", max_side))
                continue
            session = _field(row, "session", columns)
            if session is None:
                singles.append(_chain([row], columns, file.parent, f"{stem}-{i}", max_side))
            else:
                turn = _field(row, "turn", columns)
                groups.setdefault(str(session), []).append((float(turn) if turn is not None else len(groups.get(str(session), [])), row))
        except SkipRow as e:
            stats[str(e)] += 1
    for session, items in groups.items():
        rows_sorted = [r for _, r in sorted(items, key=lambda x: x[0])]
        try:
            singles.append(_chain(rows_sorted, columns, file.parent, re.sub(r"[^A-Za-z0-9_-]", "-", f"{stem}-{session}"),
                                  max_side))
        except SkipRow as e:
            stats[str(e)] += 1
    return singles


def _instruction(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        value = value[0] if value else None
    if not isinstance(value, str) or not value.strip():
        raise SkipRow("missing_instruction")
    return value.strip()


def _chain(rows: list[dict], columns: dict, base: Path, key: str, max_side: int | None) -> SessionRecord:
    """Pairs (one, or a session's turns in order) -> frames [source of the first, target of each]."""
    source = _field(rows[0], "source", columns)
    if isinstance(source, (list, tuple)):
        if len(source) != 1:
            raise SkipRow("multi_input" if source else "missing_source")
        source = source[0]
    images = [source] + [_field(r, "target", columns) for r in rows]
    if images[0] is None:
        raise SkipRow("missing_source")
    if any(im is None for im in images[1:]):
        raise SkipRow("missing_target")
    turns = [TurnRecord(instruction=_instruction(_field(r, "instruction", columns)),
                        camera=str(_field(r, "camera", columns) or CAMERA_NONE),
                        category=str(_field(r, "category", columns) or "other")) for r in rows]
    return SessionRecord(key, _frames(images, base, max_side), turns)


def _sequence(row: dict, columns: dict, base: Path, key: str, max_side: int | None) -> SessionRecord:
    images = list(_field(row, "images", columns))
    instructions = _field(row, "instructions", columns)
    if not isinstance(instructions, (list, tuple)) or len(instructions) != len(images) - 1 or not instructions:
        raise SkipRow("images_instructions_mismatch")
    turns = [TurnRecord(instruction=_instruction(t)) for t in instructions]
    return SessionRecord(key, _frames(images, base, max_side), turns)


def _frames(values: list, base: Path, max_side: int | None) -> list[np.ndarray]:
    pils = [_open(v, base) for v in values]
    first = pils[0]
    if max_side and max(first.size) > max_side:
        s = max_side / max(first.size)
        first = first.resize((max(1, round(first.size[0] * s)), max(1, round(first.size[1] * s))), Image.BICUBIC)
    # One size per session (the model encodes all frames at the first frame's working size).
    return [np.asarray(first)] + [np.asarray(p if p.size == first.size else p.resize(first.size, Image.BICUBIC))
                                  for p in pils[1:]]


def _open(value: Any, base: Path) -> Image.Image:
    try:
        if isinstance(value, Image.Image):
            img = value
        elif isinstance(value, dict):
            if value.get("bytes"):
                img = Image.open(io.BytesIO(value["bytes"]))
            elif value.get("path"):
                return _open(value["path"], base)
            else:
                raise SkipRow("missing_image")
        elif isinstance(value, (bytes, bytearray)):
            img = Image.open(io.BytesIO(value))
        elif isinstance(value, str):
            path = Path(value).expanduser()
            path = path if path.is_absolute() else base / path
            if not path.is_file():
                raise SkipRow("image_not_found")
            img = Image.open(path)
        else:
            raise SkipRow("bad_image_value")
        return img.convert("RGB")
    except SkipRow:
        raise
    except Exception:  # undecodable bytes or file
        raise SkipRow("unreadable_image") from None


# ----------------------------------------------------------------------------------------------
# Writing (the pairwise / sequence folder format)
# ----------------------------------------------------------------------------------------------

def write_edit_folder(records: list[SessionRecord], out: str | os.PathLike, name: str = "edits") -> Path:
    """Write sessions as ``out/NAME.jsonl`` + ``out/images/*.png``: 1-turn sessions as pair rows
    (``source``, ``instruction``, ``target``), longer ones as sequence rows (``images``, ``instructions``).
    Extra per-turn fields ``camera`` and ``category`` are kept. The JSONL appears when complete."""
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for r in records:
        paths = []
        for k, frame in enumerate(r.frames):
            rel = f"images/{r.key}_{k}.png"
            Image.fromarray(np.asarray(frame, dtype=np.uint8)).save(out / rel, compress_level=6)
            paths.append(rel)
        if len(r.turns) == 1:
            t = r.turns[0]
            rows.append({"source": paths[0], "instruction": t.instruction, "target": paths[1], "camera": t.camera,
                         "category": t.category})
        else:
            rows.append({"images": paths, "instructions": r.instructions})
    path = out / f"{name}.jsonl"
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps(row) + "\n" for row in rows))
    tmp.replace(path)
    return path


# Mixed into the seed so synthetic pairs never share a random stream with the training videos or the benchmark.
PAIRS_SALT = 0x5041_4952


def synth_edits(out: str | os.PathLike, n: int, *, seed: int = 0, turns: int = 1, size: int = 64,
                split: str = "train") -> Path:
    """Render ``n`` synthetic edits (``turns`` = 1: pairs; more: sequences) of the shapes world into an
    edit folder (:func:`write_edit_folder`). Edit ``i`` depends only on ``(seed, i)``; the streams are
    salted, so none of them is a pretraining video or a ShapesBench item.

    Args:
        split: instruction phrasings, ``"train"`` (what the embedded model was trained with), ``"eval"``
            (ShapesBench's held-out phrasings: fine-tuning on them invalidates that benchmark) or ``"all"``.
    """
    from vincie_train.synth.dynamics import WorldConfig, sample_transition_session

    if n < 1 or turns < 1:
        raise ValueError(f"synth_edits: n={n}, turns={turns}; both must be >= 1")
    world = WorldConfig(size=size)
    records = []
    for i in range(n):
        s = sample_transition_session(np.random.default_rng([PAIRS_SALT, seed, i]), turns, world, split=split)
        records.append(SessionRecord(f"e{i:06d}", s.frames, [
            TurnRecord(instruction=t, camera=c, category=cat)
            for t, c, cat in zip(s.instructions, s.cameras, s.categories)]))
    return write_edit_folder(records, out, "pairs" if turns == 1 else "sequences")
