"""The paper's hybrid frame sampling: equal-interval and fixed-count.

* equal-interval: one frame every ``interval`` seconds (e.g. 3 s), centred in the shot; long shots are
  split into sessions of at most ``max_session_frames`` frames.
* fixed-count: ``n`` frames, ``min_frames <= n <= max_frames`` drawn uniformly, spread evenly over the
  shot whatever its duration (the centres of n equal segments).

``strategy="hybrid"`` emits both (the paper's mix: subtle object-level and large scene-level changes),
dropping a fixed-count draw identical to an equal-interval one.

* rests (not in the paper): one frame in the middle of every stretch of frames at rest (``still``), so each
  turn is exactly one change between two pauses, however many changes the shot holds; long shots are split
  like equal-interval ones. For footage that pauses between changes (our synthetic videos, stop-motion,
  screen recordings); it gives the long sessions that time-based sampling cuts short.

Example:
    >>> import numpy as np
    >>> times = [k / 10 for k in range(100)]  # 10 s at 10 fps
    >>> cfg = SamplingConfig(strategy="interval", interval=3.0)
    >>> [s.indices for s in sample_frames(times, 0, 100, np.random.default_rng(0), cfg)]
    [[5, 35, 65, 95]]
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np


STRATEGIES = ("hybrid", "interval", "fixed", "rests")


@dataclass(frozen=True)
class SamplingConfig:
    strategy: str = "hybrid"  # "interval", "fixed", "hybrid" or "rests" (needs the still-frame mask)
    interval: float = 3.0  # seconds between equal-interval frames
    min_frames: int = 2  # fixed-count range, inclusive
    max_frames: int = 6
    max_session_frames: int = 20  # the paper's sessions hold 2..20 images
    # Move each sampled frame to the nearest *still* frame of its shot (one that hardly differs from a
    # neighbour), so no frame is caught half-way through a motion, a fade or a growth. Off by default
    # (the paper samples by time alone); see docs/data.md, "Still frames".
    still_frames: bool = False

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ValueError(f"SamplingConfig: strategy={self.strategy!r}; use one of {', '.join(STRATEGIES)}")
        if self.interval <= 0:
            raise ValueError(f"SamplingConfig: interval={self.interval} must be > 0 seconds")
        if not 2 <= self.min_frames <= self.max_frames:
            raise ValueError(
                f"SamplingConfig: need 2 <= min_frames ({self.min_frames}) <= max_frames ({self.max_frames})"
            )
        if self.max_session_frames < 2:
            raise ValueError(f"SamplingConfig: max_session_frames={self.max_session_frames} must be >= 2")


@dataclass(frozen=True)
class FrameSelection:
    """Frame indices (into the decoded video) of one session and the strategy that chose them."""

    strategy: str
    indices: list[int]


def _nearest(times: np.ndarray, start: int, end: int, t: float) -> int:
    return start + int(np.abs(times[start:end] - t).argmin())


def _dedupe(indices: list[int]) -> list[int]:
    return list(dict.fromkeys(indices))


def snap_to_still(indices: list[int], still: np.ndarray, start: int, end: int) -> list[int]:
    """Each index moved to the nearest still frame in ``[start, end)`` (``still`` is a bool per video
    frame; ties go to the earlier frame), duplicates dropped; unchanged when the shot has no still frame.

    Example:
        >>> still = np.array([1, 1, 0, 0, 0, 1, 1, 0, 1], dtype=bool)
        >>> snap_to_still([2, 3, 4, 8], still, 0, 9)
        [1, 5, 8]
    """
    candidates = np.flatnonzero(still[start:end]) + start
    if candidates.size == 0:
        return list(indices)
    return _dedupe([int(candidates[np.abs(candidates - k).argmin()]) for k in indices])


def rest_frames(still: np.ndarray, start: int, end: int) -> list[int]:
    """The middle frame of every maximal run of still frames in ``[start, end)`` (``still``: a bool per
    video frame).

    Example:
        >>> rest_frames(np.array([1, 1, 1, 0, 0, 1, 0, 1, 1], dtype=bool), 0, 9)
        [1, 5, 7]
    """
    calm = np.concatenate(([False], np.asarray(still[start:end], dtype=bool), [False]))
    edges = np.flatnonzero(np.diff(calm.astype(np.int8)))
    return [start + int((a + b - 1) // 2) for a, b in zip(edges[::2], edges[1::2])]


def _chunks(strategy: str, indices: list[int], size: int) -> list[FrameSelection]:
    """``indices`` cut into sessions of at most ``size`` frames; a last chunk of one frame is dropped."""
    return [FrameSelection(strategy, indices[a: a + size]) for a in range(0, len(indices), size)
            if len(indices[a: a + size]) >= 2]


def sample_frames(
    times: list[float] | np.ndarray,
    start: int,
    end: int,
    rng: np.random.Generator,
    config: SamplingConfig = SamplingConfig(),
    still: np.ndarray | None = None,
) -> list[FrameSelection]:
    """Frame selections for the shot ``[start, end)`` of a video whose frame ``k`` is at ``times[k]``.

    ``still`` (a bool per video frame) is required with ``config.still_frames``: every pick is then moved to
    the nearest still frame (:func:`snap_to_still`).

    Returns:
        Zero or more :class:`FrameSelection`, each with at least 2 distinct frames.
    """
    if config.strategy == "rests":
        if still is None:
            raise ValueError("sample_frames: strategy 'rests' needs the still-frame mask (`still`)")
        return _chunks("rests", rest_frames(still, start, end), config.max_session_frames)
    if config.still_frames:
        if still is None:
            raise ValueError("sample_frames: still_frames=True needs the still-frame mask (`still`)")
        selections = sample_frames(times, start, end, rng, dataclasses.replace(config, still_frames=False))
        snapped = [FrameSelection(s.strategy, snap_to_still(s.indices, still, start, end)) for s in selections]
        return [s for s in snapped if len(s.indices) >= 2]
    times = np.asarray(times, dtype=np.float64)
    if end - start < 2:
        return []
    t0, t1 = times[start], times[end - 1]
    out: list[FrameSelection] = []
    if config.strategy in ("interval", "hybrid"):
        count = int(np.floor((t1 - t0) / config.interval + 1e-9)) + 1
        if count >= 2:
            offset = ((t1 - t0) - (count - 1) * config.interval) / 2
            # Anchor on a real frame so later picks are exactly `interval` after it where frames allow.
            first = _nearest(times, start, end, t0 + offset)
            idx = _dedupe([_nearest(times, start, end, times[first] + k * config.interval) for k in range(count)])
            out.extend(_chunks("interval", idx, config.max_session_frames))
    if config.strategy in ("fixed", "hybrid"):
        n = int(rng.integers(config.min_frames, config.max_frames + 1))
        n = min(n, end - start)
        span = t1 - t0
        idx = _dedupe([_nearest(times, start, end, t0 + (k + 0.5) * span / n) for k in range(n)])
        if len(idx) >= 2 and all(idx != s.indices for s in out):
            out.append(FrameSelection("fixed", idx))
    return out
