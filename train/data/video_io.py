"""Video decoding with PyAV: a cheap analysis pass and exact frame grabs.

Example:
    >>> info, frames = analyse_video("clip.mp4")  # doctest: +SKIP
    >>> grabbed = read_frames("clip.mp4", [0, 30])  # doctest: +SKIP
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

VIDEO_EXTENSIONS = (".mp4", ".mkv", ".mov", ".webm", ".avi", ".m4v")
ANALYSIS_WIDTH = 64  # frames are shrunk to this width for shot detection and filters


class VideoReadError(RuntimeError):
    """A video could not be opened or decoded (corrupt, truncated, no video stream...)."""


@dataclass(frozen=True)
class VideoInfo:
    """What the analysis pass found: frame count, timestamps (s), fps and full size."""

    path: str
    num_frames: int
    fps: float
    width: int
    height: int
    times: tuple[float, ...]

    @property
    def duration(self) -> float:
        return self.num_frames / self.fps if self.fps > 0 else 0.0


def list_videos(root: str | os.PathLike) -> list[Path]:
    """Video files under ``root`` (recursive), sorted by relative path for a stable shard assignment."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"list_videos: {root} is not a directory; pass --videos DIR holding video files")
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS)


def _open(path: Path):
    import av

    try:
        container = av.open(str(path))
    except (av.FFmpegError, OSError, ValueError) as exc:
        raise VideoReadError(f"cannot open video {path}: {exc}") from exc
    if not container.streams.video:
        container.close()
        raise VideoReadError(f"{path} has no video stream")
    return container


def analyse_video(path: str | os.PathLike, width: int = ANALYSIS_WIDTH) -> tuple[VideoInfo, np.ndarray]:
    """Decode every frame once, shrunk to ``width`` pixels wide.

    Returns:
        ``(info, small)`` with ``small`` (N, h, width, 3) uint8.

    Raises:
        VideoReadError: the file cannot be opened or decoded, or holds no frame.
    """
    import av

    path = Path(path)
    container = _open(path)
    small, times = [], []
    try:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        w0, h0 = stream.codec_context.width, stream.codec_context.height
        if not w0 or not h0:
            raise VideoReadError(f"{path}: video stream has no frame size")
        height = max(2, int(round(h0 * width / w0)))
        rate = stream.average_rate or stream.guessed_rate
        fps = float(rate) if rate else 0.0
        for frame in container.decode(stream):
            small.append(frame.to_ndarray(format="rgb24", width=width, height=height))
            times.append(float(frame.time) if frame.time is not None else len(times) / max(fps, 1.0))
    except av.FFmpegError as exc:
        # A truncated file may still yield its first frames; keep them only if we have enough to work with.
        if len(small) < 2:
            raise VideoReadError(f"cannot decode video {path}: {exc}") from exc
    finally:
        container.close()
    if not small:
        raise VideoReadError(f"video {path} decoded to no frames")
    if fps <= 0 and len(times) > 1:
        fps = (len(times) - 1) / max(times[-1] - times[0], 1e-6)
    info = VideoInfo(str(path), len(small), fps, w0, h0, tuple(times))
    return info, np.stack(small)


def read_frames(path: str | os.PathLike, indices: list[int]) -> dict[int, np.ndarray]:
    """Full-resolution RGB frames (H, W, 3) uint8 at the given decode indices.

    Decodes sequentially (exact frame indices, no seeking) and stops after the last wanted frame.
    """
    import av

    path = Path(path)
    wanted = set(indices)
    out: dict[int, np.ndarray] = {}
    if not wanted:
        return out
    last = max(wanted)
    container = _open(path)
    try:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for k, frame in enumerate(container.decode(stream)):
            if k in wanted:
                out[k] = frame.to_ndarray(format="rgb24")
            if k >= last:
                break
    except av.FFmpegError as exc:
        raise VideoReadError(f"cannot decode video {path}: {exc}") from exc
    finally:
        container.close()
    missing = sorted(wanted - set(out))
    if missing:
        raise VideoReadError(f"{path}: frames {missing[:5]} could not be decoded")
    return out
