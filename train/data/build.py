"""Videos -> session shards: decode, split shots, filter, sample frames, annotate, mask, write.

Work is split by *shard*: the sorted video list is cut into groups of ``videos_per_shard`` and group
``j`` becomes ``shard-{j:05d}.tar``. A worker given ``shard=(I, N)`` builds the groups with
``j % N == I``, so any launcher (SLURM array, Ray, torchrun ranks) can fan out with no coordination.
Finished shards are skipped, a shard appears only once complete (written as ``.tar.tmp``, renamed), and
every random choice is seeded by the video's path, so re-runs give the same bytes.

Example:
    >>> from vincie_train.data.annotate import SyntheticAnnotator
    >>> from vincie_train.data.masks import SyntheticMasker
    >>> summary = build_shards("synth/", "shards/", SyntheticAnnotator(), SyntheticMasker())  # doctest: +SKIP
    >>> summary["sessions"], summary["rejects"]  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import time
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from .annotate import AnnotationError, Annotator, Clip, load_clip_sidecar
from .format import SessionRecord, ShardWriter, TurnRecord
from .masks import Masker, MaskError
from .sampling import SamplingConfig, sample_frames
from .shots import (ShotConfig, black_borders, changed_fraction, detect_shots, detect_shots_scenedetect, is_dark,
                    still_frames)
from .video_io import VideoReadError, analyse_video, list_videos, read_frames

log = logging.getLogger(__name__)

SHARD_PATTERN = "shard-{:05d}.tar"
COVERAGE_BINS = (0.0, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0)


@dataclass(frozen=True)
class BuildConfig:
    """Everything but the backends that decides the output (recorded in every shard summary)."""

    videos_per_shard: int = 8
    max_side: int = 256  # frames are shrunk so their longer side is at most this (never enlarged)
    seed: int = 0
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    shots: ShotConfig = field(default_factory=ShotConfig)

    def __post_init__(self) -> None:
        if self.videos_per_shard < 1:
            raise ValueError(f"BuildConfig: videos_per_shard={self.videos_per_shard} must be >= 1")
        if self.max_side < 16:
            raise ValueError(f"BuildConfig: max_side={self.max_side} must be >= 16 pixels")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def parse_shard_spec(spec: str) -> tuple[int, int]:
    """``"I/N"`` -> ``(I, N)`` with ``0 <= I < N``.

    Example:
        >>> parse_shard_spec("3/8")
        (3, 8)
    """
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", spec or "")
    if not m or not 0 <= int(m.group(1)) < int(m.group(2)):
        raise ValueError(f"--shard {spec!r}: use I/N with 0 <= I < N, e.g. 0/1 or $SLURM_ARRAY_TASK_ID/8")
    return int(m.group(1)), int(m.group(2))


class ShardStats:
    """Counters of one shard, turned into its ``summary.json``."""

    def __init__(self) -> None:
        self.videos = 0
        self.sessions = 0
        self.turns = 0
        self.frames = 0
        self.categories: Counter = Counter()
        self.cameras: Counter = Counter()
        self.strategies: Counter = Counter()
        self.rejects: Counter = Counter()
        self.coverage: list[float] = []

    def add(self, session: SessionRecord) -> None:
        self.sessions += 1
        self.turns += len(session.turns)
        self.frames += len(session.frames)
        self.strategies[session.provenance.get("sampling", "?")] += 1
        for t in session.turns:
            self.categories[t.category] += 1
            self.cameras[t.camera] += 1
            if t.roe_src is not None:
                self.coverage += [float(t.roe_src.mean()), float(t.roe_tgt.mean())]

    def to_dict(self) -> dict:
        cov = np.asarray(self.coverage)
        hist = np.histogram(cov, bins=COVERAGE_BINS)[0].tolist() if cov.size else [0] * (len(COVERAGE_BINS) - 1)
        return {
            "videos": self.videos,
            "sessions": self.sessions,
            "turns": self.turns,
            "frames": self.frames,
            "categories": dict(sorted(self.categories.items())),
            "cameras": dict(sorted(self.cameras.items())),
            "sampling": dict(sorted(self.strategies.items())),
            "mask_coverage": {
                "masks": int(cov.size),
                "mean": round(float(cov.mean()), 4) if cov.size else None,
                "min": round(float(cov.min()), 4) if cov.size else None,
                "max": round(float(cov.max()), 4) if cov.size else None,
                "bins": list(COVERAGE_BINS),
                "histogram": hist,
            },
            "rejects": dict(sorted(self.rejects.items())),
        }


def video_id(path: Path, root: Path) -> str:
    """Stable, key-safe id of a video: sanitised stem + CRC32 of its path relative to ``root``."""
    rel = path.relative_to(root).as_posix()
    stem = re.sub(r"[^A-Za-z0-9_-]+", "_", path.stem)[:40] or "video"
    return f"{stem}-{zlib.crc32(rel.encode()):08x}"


def _fit(image: np.ndarray, max_side: int) -> np.ndarray:
    h, w = image.shape[:2]
    scale = max_side / max(h, w)
    if scale >= 1:
        return image
    size = (max(1, int(round(w * scale))), max(1, int(round(h * scale))))
    return np.asarray(Image.fromarray(image).resize(size, Image.Resampling.LANCZOS))


def _shot_crop(small: np.ndarray, full_size: tuple[int, int], config: ShotConfig) -> tuple[int, int, int, int] | None:
    """Pixels to crop ``(top, bottom, left, right)`` at full size, or ``None`` if the bars are too large."""
    fractions = black_borders(small, config)
    if max(fractions) > config.max_border_fraction:
        return None
    w, h = full_size
    # Round outward (plus one analysis pixel when a bar exists) so no dark line survives the crop.
    pad_h, pad_w = h / small.shape[1], w / small.shape[2]
    top, bottom = (int(np.ceil(f * h + (pad_h if f > 0 else 0))) for f in fractions[:2])
    left, right = (int(np.ceil(f * w + (pad_w if f > 0 else 0))) for f in fractions[2:])
    return top, bottom, left, right


def _annotate_turns(
    clip: Clip, annotator: Annotator, masker: Masker, stats: ShardStats
) -> list[TurnRecord | None]:
    turns: list[TurnRecord | None] = []
    for i in range(len(clip.frames) - 1):
        try:
            tr = annotator.annotate(clip, i)
            roe_src, roe_tgt = masker.masks(clip, i, tr)
        except AnnotationError as exc:
            stats.rejects[exc.reason] += 1
            log.info("%s turn %d rejected: %s", clip.key, i, exc)
            turns.append(None)
            continue
        except MaskError as exc:
            stats.rejects["turn_mask_failed"] += 1
            log.info("%s turn %d rejected: %s", clip.key, i, exc)
            turns.append(None)
            continue
        turns.append(
            TurnRecord(
                instruction=tr.instruction,
                camera=tr.camera,
                category=tr.category,
                objects_src=tr.objects_src,
                objects_tgt=tr.objects_tgt,
                roe_src=roe_src,
                roe_tgt=roe_tgt,
                changes=tr.changes,
                extra=tr.extra,
            )
        )
    return turns


def _split_runs(turns: list[TurnRecord | None]) -> list[tuple[int, int]]:
    """Maximal runs ``[a, b)`` of consecutive annotated turns (a failed turn splits the session)."""
    runs, start = [], None
    for i, t in enumerate(turns + [None]):
        if t is not None and start is None:
            start = i
        elif t is None and start is not None:
            runs.append((start, i))
            start = None
    return runs


def process_video(
    path: Path, root: Path, annotator: Annotator, masker: Masker, config: BuildConfig, stats: ShardStats
) -> list[SessionRecord]:
    """All sessions of one video; rejects are counted in ``stats`` (an unreadable video yields none)."""
    vid = video_id(path, root)
    try:
        info, small = analyse_video(path)
    except VideoReadError as exc:
        stats.rejects["video_unreadable"] += 1
        log.warning("skipping unreadable video %s: %s", path, exc)
        return []
    try:
        sidecar = load_clip_sidecar(path, info.num_frames)
    except (AnnotationError, ValueError) as exc:
        stats.rejects["video_bad_sidecar"] += 1
        log.warning("skipping %s: %s", path, exc)
        return []
    sc = config.shots
    if sc.detector == "scenedetect":
        shots = detect_shots_scenedetect(str(path), info.num_frames)
    else:
        shots = detect_shots(small, sc)
    rng = np.random.default_rng([config.seed, zlib.crc32(vid.encode())])
    needs_still = config.sampling.still_frames or config.sampling.strategy == "rests"
    still = still_frames(small) if needs_still else None
    plans = []  # (shot index, (a, b), crop, selection)
    for si, (a, b) in enumerate(shots):
        seconds = (info.times[b - 1] - info.times[a]) + 1.0 / max(info.fps, 1e-6)
        if seconds < sc.min_seconds:
            stats.rejects["shot_too_short"] += 1
            continue
        crop = _shot_crop(small[a:b], (info.width, info.height), sc)
        if crop is None:
            stats.rejects["shot_black_borders"] += 1
            continue
        if is_dark(small[a:b], sc):
            stats.rejects["shot_dark"] += 1
            continue
        if max(changed_fraction(small[a], small[k]) for k in range(a, b)) < sc.static_fraction:
            stats.rejects["shot_static"] += 1
            continue
        for sel in sample_frames(info.times, a, b, rng, config.sampling, still=still):
            plans.append((si, (a, b), crop, sel))
    if not plans:
        return []
    try:
        full = read_frames(path, sorted({k for *_, sel in plans for k in sel.indices}))
    except VideoReadError as exc:
        stats.rejects["video_unreadable"] += 1
        log.warning("skipping video %s: %s", path, exc)
        return []

    sessions = []
    for j, (si, (a, b), crop, sel) in enumerate(plans):
        top, bottom, left, right = crop
        frames, kept = [], []
        for k in sel.indices:
            img = full[k][top : info.height - bottom, left : info.width - right]
            img = _fit(np.ascontiguousarray(img), config.max_side)
            # Consecutive frames that hardly differ make an empty turn: keep the first of them only.
            if frames and changed_fraction(frames[-1], img) < sc.static_fraction:
                stats.rejects["turn_no_change"] += 1
                continue
            frames.append(img)
            kept.append(k)
        if len(frames) < 2:
            continue
        key = f"{vid}-s{si:03d}-{sel.strategy[0]}{j:02d}"
        clip = Clip(path, key, frames, kept, [info.times[k] for k in kept], crop, (info.width, info.height), sidecar)
        turns = _annotate_turns(clip, annotator, masker, stats)
        for part, (ta, tb) in enumerate(_split_runs(turns)):
            provenance = {
                "video": path.relative_to(root).as_posix(),
                "shot": si,
                "shot_frames": [a, b],
                "frame_indices": kept[ta : tb + 1],
                "timestamps": [round(info.times[k], 4) for k in kept[ta : tb + 1]],
                "fps": round(info.fps, 4),
                "source_size": [info.width, info.height],
                "crop": list(crop),
                "sampling": sel.strategy,
                "annotator": annotator.name,
                "masker": masker.name,
            }
            if sidecar is not None:
                provenance["synthetic"] = {"seed": sidecar.get("seed"), "index": sidecar.get("index")}
            sessions.append(SessionRecord(f"{key}-p{part}", frames[ta : tb + 1], turns[ta:tb], provenance))
    return sessions


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
    os.replace(tmp, path)


def aggregate_summaries(out_dir: str | os.PathLike) -> dict:
    """Sum the ``shard-*.summary.json`` of finished shards in ``out_dir`` into one summary."""
    out = Path(out_dir)
    total: dict = {"shards": 0, "videos": 0, "sessions": 0, "turns": 0, "frames": 0}
    counters = {k: Counter() for k in ("categories", "cameras", "sampling", "rejects")}
    hist = np.zeros(len(COVERAGE_BINS) - 1, dtype=np.int64)
    cov_sum, cov_n = 0.0, 0
    for path in sorted(out.glob("shard-*.summary.json")):
        if not path.with_name(path.name.replace(".summary.json", ".tar")).exists():
            continue  # a crash between summary and tar rename: that shard is not finished
        s = json.loads(path.read_text())
        total["shards"] += 1
        for k in ("videos", "sessions", "turns", "frames"):
            total[k] += s[k]
        for k, c in counters.items():
            c.update(s.get(k, {}))
        mc = s["mask_coverage"]
        hist += np.asarray(mc["histogram"])
        if mc["masks"]:
            cov_sum += mc["mean"] * mc["masks"]
            cov_n += mc["masks"]
    total.update({k: dict(sorted(c.items())) for k, c in counters.items()})
    total["mask_coverage"] = {
        "masks": cov_n,
        "mean": round(cov_sum / cov_n, 4) if cov_n else None,
        "bins": list(COVERAGE_BINS),
        "histogram": hist.tolist(),
    }
    return total


def build_shards(
    videos_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    annotator: Annotator,
    masker: Masker,
    config: BuildConfig = BuildConfig(),
    shard: tuple[int, int] = (0, 1),
    progress: bool = True,
) -> dict:
    """Build this worker's shards of the videos under ``videos_dir`` into ``out_dir``.

    Args:
        videos_dir: folder searched recursively for video files.
        out_dir: where ``shard-XXXXX.tar`` + ``shard-XXXXX.summary.json`` and ``summary.json`` go.
        annotator / masker: the backends (see :mod:`~vincie_train.data.annotate`, :mod:`~vincie_train.data.masks`).
        config: sampling, filters, output size, shard size.
        shard: ``(I, N)``: build the shard groups ``j`` with ``j % N == I``.
        progress: show a progress bar.

    Returns:
        The aggregate summary of every finished shard in ``out_dir`` (also written to ``summary.json``),
        plus ``built``/``skipped`` counts of this call.
    """
    from tqdm.auto import tqdm

    root, out = Path(videos_dir), Path(out_dir)
    videos = list_videos(root)
    if not videos:
        raise FileNotFoundError(f"build: no video files ({', '.join(('.mp4', '.mkv', '...'))}) under {root}")
    index, count = shard
    groups = [videos[k : k + config.videos_per_shard] for k in range(0, len(videos), config.videos_per_shard)]
    mine = [j for j in range(len(groups)) if j % count == index]
    out.mkdir(parents=True, exist_ok=True)
    todo = [j for j in mine if not (out / SHARD_PATTERN.format(j)).exists()]
    for j in sorted(set(mine) - set(todo)):
        log.info("shard %d already finished, skipping", j)
    total = sum(len(groups[j]) for j in todo)
    bar = tqdm(total=total, desc=f"build {index}/{count}", unit="video", disable=not progress)
    for j in todo:
        path = out / SHARD_PATTERN.format(j)
        stats, started = ShardStats(), time.time()
        with ShardWriter(path) as writer:
            for video in groups[j]:
                stats.videos += 1
                try:
                    sessions = process_video(video, root, annotator, masker, config, stats)
                except Exception:  # noqa: BLE001 - one bad video must not stop a shard of thousands
                    log.exception("video %s failed; skipped", video)
                    stats.rejects["video_error"] += 1
                    sessions = []
                for s in sessions:
                    writer.write(s)
                    stats.add(s)
                bar.update(1)
            summary = {
                "shard": j,
                "file": path.name,
                "videos_list": [v.relative_to(root).as_posix() for v in groups[j]],
                "annotator": annotator.name,
                "masker": masker.name,
                "config": config.to_dict(),
                **stats.to_dict(),
            }
            # The summary lands first; the shard itself only when the writer renames it on exit.
            _write_json(out / path.name.replace(".tar", ".summary.json"), summary)
        log.info(
            "shard %s: %d sessions, %d turns in %.1fs", path.name, stats.sessions, stats.turns, time.time() - started
        )
    bar.close()
    total = aggregate_summaries(out)
    _write_json(out / "summary.json", total)
    return {**total, "built": len(todo), "skipped": len(mine) - len(todo)}
