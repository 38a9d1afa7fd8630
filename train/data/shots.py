"""Shot splitting and clip filters on the small frames of the analysis pass.

The default detector needs no extra package: a frame-to-frame distance (half colour-histogram, half
pixel difference) marks a cut where it is both large and a spike against its neighbours, so hard cuts
split shots while pans, fades and lighting changes do not. ``detector="scenedetect"`` uses
PySceneDetect's ContentDetector instead (``pip install scenedetect``).

Example:
    >>> import numpy as np
    >>> a, b = np.zeros((10, 8, 8, 3), np.uint8), np.full((10, 8, 8, 3), 200, np.uint8)
    >>> detect_shots(np.concatenate([a, b]))
    [(0, 10), (10, 20)]
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ShotConfig:
    """Shot detection and filter thresholds."""

    detector: str = "histogram"  # "histogram" (built in) or "scenedetect"
    cut_threshold: float = 0.15  # minimum frame distance (0..1) of a cut
    cut_ratio: float = 3.0  # ... and at least this times the mean distance of the neighbouring frames
    window: int = 4  # neighbours on each side for that mean
    min_seconds: float = 1.0  # shorter shots are rejected
    border_luma: float = 10.0  # rows/columns never brighter than this (0..255) are black borders
    max_border_fraction: float = 0.25  # reject when borders take more than this of a side
    dark_luma: float = 12.0  # reject shots whose mean luminance stays below this
    # A pair of frames is "the same" when fewer than this fraction of pixels change by more than 20/255.
    static_fraction: float = 0.002


def _luma(frames: np.ndarray) -> np.ndarray:
    return frames[..., 0] * 0.299 + frames[..., 1] * 0.587 + frames[..., 2] * 0.114


def soft_histograms(small: np.ndarray, bins: int = 16) -> np.ndarray:
    """Per-frame, per-channel histograms with linear binning. (N, h, w, 3) uint8 -> (N, 3, bins).

    Each value is shared between its two nearest bin centres, so a gradual fade moves the histogram
    gradually; hard binning would jump whenever a flat colour crosses a bin edge and look like a cut.
    """
    v = small.astype(np.float32) * (bins / 256.0) - 0.5  # position in bin-centre units
    lo = np.floor(v)
    w_hi = v - lo
    lo_i = np.clip(lo, 0, bins - 1).astype(np.int64)
    hi_i = np.clip(lo + 1, 0, bins - 1).astype(np.int64)
    n, c = small.shape[0], small.shape[-1]
    # Flatten (frame, channel, bin) into one index so a single bincount builds every histogram.
    base = (np.arange(n)[:, None, None, None] * c + np.arange(c)[None, None, None, :]) * bins
    total = n * c * bins
    hist = np.bincount((base + lo_i).ravel(), (1 - w_hi).ravel(), minlength=total)
    hist += np.bincount((base + hi_i).ravel(), w_hi.ravel(), minlength=total)
    hist = hist.reshape(n, c, bins)
    return hist / hist.sum(axis=-1, keepdims=True)


def frame_distances(small: np.ndarray) -> np.ndarray:
    """Distance in [0, 1] between consecutive frames. (N, h, w, 3) uint8 -> (N - 1,) float."""
    x = small.astype(np.float32)
    pixel = np.abs(np.diff(x, axis=0)).mean(axis=(1, 2, 3)) / 255.0
    hists = soft_histograms(small)
    hist = np.abs(np.diff(hists, axis=0)).sum(axis=(1, 2)) / 6.0  # L1 / 2 per channel, mean over 3
    return 0.5 * pixel + 0.5 * hist


def detect_shots(small: np.ndarray, config: ShotConfig = ShotConfig()) -> list[tuple[int, int]]:
    """Shots as ``[(start, end), ...]`` frame ranges (end exclusive) covering all frames."""
    n = len(small)
    if n < 2:
        return [(0, n)]
    d = frame_distances(small)
    cuts = []
    for t, dt in enumerate(d):
        lo, hi = max(0, t - config.window), min(len(d), t + config.window + 1)
        neighbours = np.concatenate([d[lo:t], d[t + 1 : hi]])
        local = neighbours.mean() if neighbours.size else 0.0
        if dt >= config.cut_threshold and dt >= config.cut_ratio * local:
            cuts.append(t + 1)  # the cut is before frame t + 1
    bounds = [0, *cuts, n]
    return [(a, b) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]


def detect_shots_scenedetect(path: str, n_frames: int) -> list[tuple[int, int]]:
    """Shots from PySceneDetect's ContentDetector (PyAV backend), as frame ranges."""
    try:
        from scenedetect import ContentDetector, detect
    except ImportError as exc:
        raise ImportError("detector 'scenedetect' needs PySceneDetect: pip install scenedetect") from exc
    scenes = detect(path, ContentDetector(), backend="pyav")
    if not scenes:
        return [(0, n_frames)]
    return [(s.frame_num, min(e.frame_num, n_frames)) for s, e in scenes if e.frame_num > s.frame_num]


def black_borders(small: np.ndarray, config: ShotConfig = ShotConfig()) -> tuple[float, float, float, float]:
    """Fractions ``(top, bottom, left, right)`` of the frame covered by black bars over the whole shot."""
    peak = _luma(small.astype(np.float32)).max(axis=0)  # (h, w): brightest value each pixel ever takes
    dark_rows = peak.max(axis=1) <= config.border_luma
    dark_cols = peak.max(axis=0) <= config.border_luma

    def run(flags: np.ndarray) -> int:
        k = 0
        while k < len(flags) and flags[k]:
            k += 1
        return k

    h, w = peak.shape
    return run(dark_rows) / h, run(dark_rows[::-1]) / h, run(dark_cols) / w, run(dark_cols[::-1]) / w


def changed_fraction(a: np.ndarray, b: np.ndarray, delta: int = 20) -> float:
    """Fraction of pixels whose largest channel difference exceeds ``delta`` (0..255)."""
    diff = np.abs(a.astype(np.int16) - b.astype(np.int16)).max(axis=-1)
    return float((diff > delta).mean())


def still_frames(small: np.ndarray, delta: int = 6, fraction: float = 0.0005) -> np.ndarray:
    """A bool per frame of ``small`` (N, h, w, 3) uint8: the frame differs from its previous or its next
    frame in fewer than ``fraction`` of its pixels (largest channel difference above ``delta``), i.e. the
    picture is at rest there. A frame half-way through a motion or a fade differs from both neighbours."""
    n = len(small)
    if n < 2:
        return np.ones(n, dtype=bool)
    calm = np.array([changed_fraction(small[k], small[k + 1], delta) < fraction for k in range(n - 1)])
    out = np.zeros(n, dtype=bool)
    out[:-1] |= calm
    out[1:] |= calm
    return out


def is_dark(small: np.ndarray, config: ShotConfig = ShotConfig()) -> bool:
    return float(_luma(small.astype(np.float32)).mean()) < config.dark_luma
