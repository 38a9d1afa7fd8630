"""Procedural videos of the shapes world: continuous dynamics, mp4 files and exact sidecars.

A video is a random start scene followed by timed *events* (one edit each, from
:data:`~vincie_train.synth.instructions.CHANGE_TYPES`), separated by still holds. During an event the
scene moves continuously from its keyframe before to its keyframe after: objects slide in from or out to
the nearest edge, move, fade to a new colour, grow or shrink, the background and lighting cross-fade and
the camera pans or zooms. Event types are drawn from a shuffled bag holding every type, so every kind of
dynamics appears across a few videos.

Each ``video_XXXXX.mp4`` has a ``video_XXXXX.json`` sidecar with the per-frame scene state, boxes and
visible masks (run-length encoded, see :func:`rle_encode`). Video ``i`` depends only on ``(seed, i)``.

Example:
    >>> import numpy as np
    >>> v = sample_video(np.random.default_rng(0), fps=10, seconds=3.0)
    >>> len(v.scenes), v.scenes[0].camera.zoom
    (30, 1.0)
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .dynamics import Edit, WorldConfig, apply_edit, propose_edit, sample_scene
from .undo import sample_undo
from .instructions import CHANGE_TYPES
from .world import BACKGROUNDS, COLORS, SIZES, Camera, Scene, SceneObject, render_layers

log = logging.getLogger(__name__)

SIDECAR_FORMAT = "vincie-synth-video/1"
HOLD_SECONDS = (0.4, 1.0)  # still time before each event
EVENT_SECONDS = (0.6, 1.2)  # duration of one continuous change
OFFSCREEN = 0.35  # entering/leaving objects start/end this far outside the unit square


@dataclass
class VideoEvent:
    """One continuous change: ``edit`` runs from frame ``start`` to frame ``end`` (inclusive)."""

    edit: Edit
    start: int
    end: int
    before: Scene
    after: Scene

    def to_dict(self, fps: float) -> dict:
        return {
            **self.edit.to_dict(),
            "start_frame": self.start,
            "end_frame": self.end,
            "start_time": self.start / fps,
            "end_time": self.end / fps,
        }


@dataclass
class SynthVideo:
    """A rendered-on-demand video: one exact :class:`Scene` per frame, plus the events that made them."""

    scenes: list[Scene]
    events: list[VideoEvent]
    fps: float
    config: WorldConfig = field(default_factory=WorldConfig)

    def frame(self, index: int) -> tuple[np.ndarray, dict[int, np.ndarray]]:
        """Image (S, S, 3) uint8 and visible masks ``{id: (S, S) bool}`` of frame ``index``."""
        return render_layers(self.scenes[index], self.config.size)


# --- continuous interpolation --------------------------------------------------------------------------


def _smooth(s: float) -> float:
    return s * s * (3 - 2 * s)


def _lerp(a: float, b: float, s: float) -> float:
    return a + (b - a) * s


def _lerp_rgb(a: tuple[int, int, int], b: tuple[int, int, int], s: float) -> tuple[int, int, int]:
    return tuple(int(round(_lerp(x, y, s))) for x, y in zip(a, b))


def _offscreen(obj: SceneObject) -> tuple[float, float]:
    # The nearest side of the unit square; the centre cell leaves through the top.
    dists = {"left": obj.x, "right": 1 - obj.x, "top": obj.y, "bottom": 1 - obj.y}
    side = min(dists, key=lambda k: (round(dists[k], 6), ("top", "left", "right", "bottom").index(k)))
    return {
        "left": (-OFFSCREEN, obj.y),
        "right": (1 + OFFSCREEN, obj.y),
        "top": (obj.x, -OFFSCREEN),
        "bottom": (obj.x, 1 + OFFSCREEN),
    }[side]


def interpolate(event: VideoEvent, s: float) -> Scene:
    """The scene at progress ``s`` in [0, 1] of ``event`` (eased); ``s = 1`` gives exactly ``event.after``."""
    if s >= 1.0:
        return event.after
    if s <= 0.0:
        return event.before
    e, a, b, s = event.edit, event.before, event.after, _smooth(s)
    half = s >= 0.5  # semantic attributes switch half-way through a fade
    if e.type == "add":
        obj = e.value
        x0, y0 = _offscreen(obj)
        return b.replace_object(dataclasses.replace(obj, x=_lerp(x0, obj.x, s), y=_lerp(y0, obj.y, s)))
    if e.type == "remove":
        obj = a.find(e.object_id)
        x1, y1 = _offscreen(obj)
        return a.replace_object(dataclasses.replace(obj, x=_lerp(obj.x, x1, s), y=_lerp(obj.y, y1, s)))
    if e.type in ("move", "recolor", "resize"):
        oa, ob = a.find(e.object_id), b.find(e.object_id)
        obj = dataclasses.replace(
            ob if half else oa,
            x=_lerp(oa.x, ob.x, s),
            y=_lerp(oa.y, ob.y, s),
            rgb=_lerp_rgb(COLORS[oa.color], COLORS[ob.color], s) if e.type == "recolor" else None,
            extent=_lerp(SIZES[oa.size], SIZES[ob.size], s) if e.type == "resize" else None,
        )
        return a.replace_object(obj)
    if e.type == "background":
        return dataclasses.replace(
            b if half else a,
            background_rgb=_lerp_rgb(BACKGROUNDS[a.background], BACKGROUNDS[b.background], s),
        )
    if e.type == "lighting":
        return dataclasses.replace(a, light=_lerp(a.light, b.light, s))
    if e.type in ("camera_pan", "camera_zoom"):
        ca, cb = a.camera, b.camera
        cam = Camera(_lerp(ca.x, cb.x, s), _lerp(ca.y, cb.y, s), _lerp(ca.zoom, cb.zoom, s))
        return dataclasses.replace(a, camera=cam)
    raise ValueError(f"interpolate: unknown event type {e.type!r}")


# --- sampling ------------------------------------------------------------------------------------------


def sample_video(
    rng: np.random.Generator,
    fps: float = 10.0,
    seconds: float = 4.0,
    config: WorldConfig = WorldConfig(),
    types: tuple[str, ...] = CHANGE_TYPES,
    first_type: str | None = None,
    revert_prob: float = 0.0,
) -> SynthVideo:
    """A random video of ``round(fps * seconds)`` frames.

    Args:
        rng: the only source of randomness.
        fps: frames per second.
        seconds: duration.
        config: the world.
        types: event types; drawn from a shuffled bag so each appears once before any repeats.
        first_type: the type of the first event (the dataset writer cycles it so that every type
            appears in any ``len(types)`` consecutive videos).
        revert_prob: chance that an event undoes the latest change of one thing instead (an object
            comes back, moves back, takes its old colour or size, the old background returns:
            :func:`vincie_train.synth.undo.undo_edits`), when the video so far allows one. Such turns
            are what a session's history is needed for.

    Returns:
        A :class:`SynthVideo` whose ``scenes[k]`` is the exact state of frame ``k``.
    """
    n_frames = int(round(fps * seconds))
    if n_frames < 2:
        raise ValueError(f"sample_video: fps={fps} x seconds={seconds} gives {n_frames} frames; need >= 2")
    if first_type is not None and first_type not in types:
        raise ValueError(f"sample_video: first_type={first_type!r} is not one of types {types}")
    scene = sample_scene(rng, config)
    # Redraw the start scene until the requested first event is possible (e.g. "remove" needs 2 objects).
    for _ in range(100):
        if first_type is None or propose_edit(scene, first_type, np.random.default_rng(0), config) is not None:
            break
        scene = sample_scene(rng, config)
    events: list[VideoEvent] = []
    bag: list[str] = [first_type] if first_type is not None else []
    t = int(round(rng.uniform(*HOLD_SECONDS) * fps))
    while True:
        length = max(2, int(round(rng.uniform(*EVENT_SECONDS) * fps)))
        if not events:
            # The first event always fits, so that even the shortest video shows a change.
            t = min(t, max(0, n_frames - 4))
            length = max(1, min(max(length, 4), n_frames - 1 - t))
        if t + length >= n_frames:
            break
        if not bag:
            bag = [types[int(k)] for k in rng.permutation(len(types))]
        edit = None
        if revert_prob > 0 and events and rng.random() < revert_prob:
            edit = sample_undo([events[0].before] + [e.after for e in events], rng, config)
            if edit is not None and edit.type not in types:
                edit = None
        # Take the first type in the bag that the current scene allows (others stay for later).
        for k, kind in enumerate(bag if edit is None else ()):
            edit = propose_edit(scene, kind, rng, config)
            if edit is not None:
                bag.pop(k)
                break
        if edit is None:
            bag = []
            t += length
            continue
        after = apply_edit(scene, edit, rng, config)
        events.append(VideoEvent(edit, t, t + length, scene, after))
        scene = after
        t += length + int(round(rng.uniform(*HOLD_SECONDS) * fps))
    return SynthVideo(_frame_scenes(events, n_frames, events[0].before if events else scene), events, fps, config)


def _frame_scenes(events: list[VideoEvent], n_frames: int, first: Scene) -> list[Scene]:
    scenes, current, k = [], first, 0
    for f in range(n_frames):
        while k < len(events) and f > events[k].end:
            current = events[k].after
            k += 1
        if k < len(events) and events[k].start <= f <= events[k].end:
            ev = events[k]
            scenes.append(interpolate(ev, (f - ev.start) / (ev.end - ev.start)))
        else:
            scenes.append(current)
    return scenes


# --- masks as run lengths ------------------------------------------------------------------------------


def rle_encode(mask: np.ndarray) -> dict:
    """Row-major run lengths of a (H, W) bool mask, starting with a run of ``False``.

    Example:
        >>> rle_encode(np.array([[0, 1], [1, 1]], dtype=bool))
        {'size': [2, 2], 'counts': [1, 3]}
    """
    flat = np.asarray(mask, dtype=bool).ravel()
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat.size and flat[0]:
        counts = [0] + counts
    return {"size": list(mask.shape), "counts": counts}


def rle_decode(rle: dict) -> np.ndarray:
    """Inverse of :func:`rle_encode`. Returns (H, W) bool."""
    h, w = rle["size"]
    values = np.arange(len(rle["counts"])) % 2 == 1
    flat = np.repeat(values, rle["counts"])
    if flat.size != h * w:
        raise ValueError(f"rle_decode: counts sum to {flat.size}, expected {h}x{w}={h * w}")
    return flat.reshape(h, w)


# --- files ---------------------------------------------------------------------------------------------


def sidecar_dict(video: SynthVideo, seed: int | None = None, index: int | None = None, codec: str = "") -> dict:
    """The JSON sidecar: world config, events and per-frame scene, boxes and masks."""
    frames = []
    for k, scene in enumerate(video.scenes):
        _, masks = video.frame(k)
        objs = []
        for obj in scene.objects:
            m = masks[obj.id]
            rows, cols = np.nonzero(m)
            bbox = [int(cols.min()), int(rows.min()), int(cols.max()) + 1, int(rows.max()) + 1] if rows.size else None
            objs.append({"id": obj.id, "bbox": bbox, "area": int(rows.size), "mask": rle_encode(m)})
        active = [i for i, ev in enumerate(video.events) if ev.start <= k <= ev.end]
        frames.append({"index": k, "time": k / video.fps, "scene": scene.to_dict(), "objects": objs, "events": active})
    return {
        "format": SIDECAR_FORMAT,
        "seed": seed,
        "index": index,
        "fps": video.fps,
        "size": video.config.size,
        "num_frames": len(video.scenes),
        "codec": codec,
        "config": video.config.to_dict(),
        "events": [ev.to_dict(video.fps) for ev in video.events],
        "frames": frames,
    }


def load_sidecar(path: str | os.PathLike) -> dict:
    """Read and check a sidecar written by :func:`write_synth_video`; ``scene`` entries become :class:`Scene`."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"load_sidecar: cannot read {path}: {exc}") from exc
    if data.get("format") != SIDECAR_FORMAT:
        raise ValueError(f"load_sidecar: {path} has format {data.get('format')!r}, expected {SIDECAR_FORMAT!r}")
    for frame in data["frames"]:
        frame["scene"] = Scene.from_dict(frame["scene"])
    return data


def write_mp4(path: str | os.PathLike, frames: list[np.ndarray], fps: float, lossless: bool = True) -> str:
    """Encode RGB frames (H, W, 3) uint8 to an H.264 mp4 with PyAV; returns the codec name.

    ``lossless=True`` uses libx264rgb at qp 0 (exact RGB, not every player shows it);
    ``False`` uses libx264 yuv420p (plays everywhere, colours shift slightly, sides must be even).
    """
    from fractions import Fraction

    import av  # local: only the writer needs it

    h, w = frames[0].shape[:2]
    codec = "libx264rgb" if lossless else "libx264"
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream(codec, rate=Fraction(fps).limit_denominator(1000))
        stream.width, stream.height = w, h
        stream.pix_fmt = "rgb24" if lossless else "yuv420p"
        # One thread: encoding 64 px frames gains nothing from more, and the machine is shared.
        stream.options = {"qp": "0", "preset": "medium", "threads": "1"} if lossless else {"crf": "18", "threads": "1"}
        for img in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return codec


def write_synth_video(
    out_dir: str | os.PathLike,
    index: int,
    seed: int,
    fps: float = 10.0,
    seconds: tuple[float, float] = (2.0, 8.0),
    config: WorldConfig = WorldConfig(),
    lossless: bool = True,
    types: tuple[str, ...] = CHANGE_TYPES,
    revert_prob: float = 0.0,
) -> Path:
    """Render video ``index`` of the dataset ``seed`` to ``out_dir/video_{index:05d}.mp4`` + ``.json``,
    with events of ``types`` only (default: every change type); ``revert_prob``: see :func:`sample_video`.

    Files are written under temporary names and renamed, so a crash leaves no half video.

    Returns:
        The mp4 path.
    """
    rng = np.random.default_rng([seed, index])
    duration = float(rng.uniform(*seconds))
    video = sample_video(rng, fps, duration, config, types, first_type=types[index % len(types)],
                         revert_prob=revert_prob)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    mp4, side = out / f"video_{index:05d}.mp4", out / f"video_{index:05d}.json"
    tmp_mp4, tmp_side = out / f".video_{index:05d}.tmp.mp4", out / f".video_{index:05d}.json.tmp"
    codec = write_mp4(tmp_mp4, [video.frame(k)[0] for k in range(len(video.scenes))], fps, lossless)
    tmp_side.write_text(json.dumps(sidecar_dict(video, seed, index, codec), separators=(",", ":")))
    os.replace(tmp_side, side)
    os.replace(tmp_mp4, mp4)
    log.debug("wrote %s (%d frames, %d events)", mp4, len(video.scenes), len(video.events))
    return mp4


def synth_dataset(
    out_dir: str | os.PathLike,
    n_videos: int,
    seed: int = 0,
    fps: float = 10.0,
    seconds: tuple[float, float] = (2.0, 8.0),
    config: WorldConfig = WorldConfig(),
    lossless: bool = True,
    progress: bool = True,
    types: tuple[str, ...] = CHANGE_TYPES,
    revert_prob: float = 0.0,
) -> list[Path]:
    """Write ``n_videos`` synthetic videos (+ sidecars) to ``out_dir``; deterministic given ``seed``.
    ``types``: the change types events are drawn from (``CHANGE_TYPES``, the default, or a subset).
    ``revert_prob``: the chance that an event undoes an earlier change (:func:`sample_video`).

    Example:
        >>> paths = synth_dataset("/tmp/synth", 2, seed=0, progress=False)  # doctest: +SKIP
    """
    from tqdm.auto import tqdm

    if n_videos < 1:
        raise ValueError(f"synth_dataset: n_videos={n_videos} must be >= 1")
    if not 0 < seconds[0] <= seconds[1]:
        raise ValueError(f"synth_dataset: seconds={seconds} must satisfy 0 < min <= max")
    if not 0.0 <= revert_prob <= 1.0:
        raise ValueError(f"synth_dataset: revert_prob={revert_prob} must be within [0, 1]")
    unknown = [t for t in types if t not in CHANGE_TYPES]
    if unknown or not types:
        raise ValueError(f"synth_dataset: unknown change types {unknown or 'none given'}; "
                         f"known: {', '.join(CHANGE_TYPES)}")
    paths = []
    for i in tqdm(range(n_videos), desc="synth videos", disable=not progress):
        paths.append(write_synth_video(out_dir, i, seed, fps, seconds, config, lossless, tuple(types), revert_prob))
    return paths
