"""The paper's hybrid frame sampling: equal-interval and fixed-count.

* equal-interval: one frame every ``interval`` seconds (e.g. 3 s), centred in the shot; long shots are
  split into sessions of at most ``max_session_frames`` frames.
* fixed-count: ``n`` frames, ``min_frames <= n <= max_frames`` drawn uniformly, spread evenly over the
  shot whatever its duration (the centres of n equal segments).

``strategy="hybrid"`` emits both (the paper's mix: subtle object-level and large scene-level changes),
dropping a fixed-count draw identical to an equal-interval one.

Example:
    >>> import numpy as np
    >>> times = [k / 10 for k in range(100)]  # 10 s at 10 fps
    >>> cfg = SamplingConfig(strategy="interval", interval=3.0)
    >>> [s.indices for s in sample_frames(times, 0, 100, np.random.default_rng(0), cfg)]
    [[5, 35, 65, 95]]
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SamplingConfig:
    strategy: str = "hybrid"  # "interval", "fixed" or "hybrid"
    interval: float = 3.0  # seconds between equal-interval frames
    min_frames: int = 2  # fixed-count range, inclusive
    max_frames: int = 6
    max_session_frames: int = 20  # the paper's sessions hold 2..20 images

    def __post_init__(self) -> None:
        if self.strategy not in ("interval", "fixed", "hybrid"):
            raise ValueError(f"SamplingConfig: strategy={self.strategy!r}; use 'interval', 'fixed' or 'hybrid'")
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


def sample_frames(
    times: list[float] | np.ndarray,
    start: int,
    end: int,
    rng: np.random.Generator,
    config: SamplingConfig = SamplingConfig(),
) -> list[FrameSelection]:
    """Frame selections for the shot ``[start, end)`` of a video whose frame ``k`` is at ``times[k]``.

    Returns:
        Zero or more :class:`FrameSelection`, each with at least 2 distinct frames.
    """
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
            step = config.max_session_frames
            for a in range(0, len(idx), step):
                chunk = idx[a : a + step]
                if len(chunk) >= 2:
                    out.append(FrameSelection("interval", chunk))
    if config.strategy in ("fixed", "hybrid"):
        n = int(rng.integers(config.min_frames, config.max_frames + 1))
        n = min(n, end - start)
        span = t1 - t0
        idx = _dedupe([_nearest(times, start, end, t0 + (k + 0.5) * span / n) for k in range(n)])
        if len(idx) >= 2 and all(idx != s.indices for s in out):
            out.append(FrameSelection("fixed", idx))
    return out
