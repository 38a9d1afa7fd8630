"""Random scenes, edits and multi-turn editing sessions of the shapes world.

This is the trainer's direct entry point: :func:`sample_transition_session` returns exact frames, region
of editing (RoE) masks, instructions and camera tags without going through video files. The video
generator (:mod:`vincie_train.synth.video`) uses the same scene and edit samplers and only adds motion
between keyframes.

Example:
    >>> import numpy as np
    >>> s = sample_transition_session(np.random.default_rng(0), n_turns=3)
    >>> len(s.frames), s.frames[0].shape, len(s.instructions), s.roe_src[0].shape
    (4, (64, 64, 3), 3, (64, 64))
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .instructions import EDIT_TYPES, Change, Split, category_of, describe_changes, diff_scenes
from .world import (
    BACKGROUND_STYLES,
    BACKGROUNDS,
    COLORS,
    GRID,
    LIGHT_LEVELS,
    SHAPES,
    SIZES,
    Camera,
    Scene,
    SceneObject,
    cell_center,
    cell_of,
    is_visible,
    render_layers,
    world_to_view,
)

GLOBAL_CHANGES = ("background", "lighting", "camera_pan", "camera_zoom")


@dataclass(frozen=True)
class WorldConfig:
    """What the world may contain. Defaults are the shapes benchmark's world."""

    size: int = 64  # frame side in pixels
    min_objects: int = 1  # in a fresh scene, and the floor for removals
    max_objects: int = 4  # at most GRID * GRID
    shapes: tuple[str, ...] = SHAPES
    colors: tuple[str, ...] = tuple(COLORS)
    sizes: tuple[str, ...] = tuple(SIZES)
    backgrounds: tuple[str, ...] = tuple(BACKGROUNDS)
    background_styles: tuple[str, ...] = BACKGROUND_STYLES
    # Keyframe objects sit at their cell centre, offset by up to `jitter` x the free margin of the cell
    # (0 = exact centres, which is easiest to learn; 1 = anywhere that keeps a 1-px gap to the cell edge).
    jitter: float = 0.0
    max_pan: float = 0.2  # camera centre stays within 0.5 +- max_pan (world units)
    max_zoom: float = 1.5

    def __post_init__(self) -> None:
        if not 0 <= self.min_objects <= self.max_objects <= GRID * GRID:
            raise ValueError(
                f"WorldConfig: need 0 <= min_objects ({self.min_objects}) <= max_objects ({self.max_objects}) "
                f"<= {GRID * GRID} grid cells"
            )
        for name, values, allowed in (
            ("shapes", self.shapes, SHAPES),
            ("colors", self.colors, tuple(COLORS)),
            ("sizes", self.sizes, tuple(SIZES)),
            ("backgrounds", self.backgrounds, tuple(BACKGROUNDS)),
            ("background_styles", self.background_styles, BACKGROUND_STYLES),
        ):
            bad = [v for v in values if v not in allowed]
            if bad or not values:
                raise ValueError(f"WorldConfig: {name}={values!r} must be a non-empty subset of {allowed}")
        if len(self.shapes) * len(self.colors) < self.max_objects + 1:
            raise ValueError("WorldConfig: too few shape x colour combinations for unique object references")
        if not 0.0 <= self.jitter <= 1.0:
            raise ValueError(f"WorldConfig: jitter={self.jitter} must be within [0, 1]")

    def to_dict(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(self).items()}


@dataclass(frozen=True)
class Edit:
    """An edit to apply to a scene. ``value`` depends on ``type``:

    add: the new :class:`SceneObject`; move: target ``(row, col)`` cell; recolor: colour name;
    resize: size name; background: ``(name, style)``; lighting: light level; camera_pan/camera_zoom:
    the new :class:`Camera`; remove: ``None``.
    """

    type: str
    object_id: int | None = None
    value: Any = None

    def to_dict(self) -> dict:
        v = self.value
        if isinstance(v, (SceneObject, Camera)):
            v = v.to_dict() if isinstance(v, SceneObject) else dataclasses.asdict(v)
        elif isinstance(v, tuple):
            v = list(v)
        return {"type": self.type, "object_id": self.object_id, "value": v}


@dataclass
class SynthSession:
    """A multi-turn session of the shapes world (n turns, n + 1 frames).

    Attributes:
        frames: n + 1 images, each (S, S, 3) uint8.
        roe_src: n masks (S, S) bool, the changing region in frame i (the paper's M_i0).
        roe_tgt: n masks (S, S) bool, the changing region in frame i + 1 (M_i1).
        instructions: n instructions, frame i -> frame i + 1.
        cameras: n camera tags (``"None"`` for a static camera).
        scenes: n + 1 exact scene states (ground truth for judges and re-rendering).
        changes: n lists of semantic changes.
    """

    frames: list[np.ndarray]
    roe_src: list[np.ndarray]
    roe_tgt: list[np.ndarray]
    instructions: list[str]
    cameras: list[str]
    scenes: list[Scene]
    changes: list[list[Change]] = field(default_factory=list)

    @property
    def categories(self) -> list[str]:
        return [category_of(c) for c in self.changes]


# --- scenes --------------------------------------------------------------------------------------------


def _cell_position(row: int, col: int, extent: float, rng: np.random.Generator, jitter: float) -> tuple[float, float]:
    x, y = cell_center(row, col)
    if jitter > 0:
        slack = max(0.0, (1.0 / GRID - extent) / 2 - 1.0 / 64) * jitter
        x += float(rng.uniform(-slack, slack))
        y += float(rng.uniform(-slack, slack))
    return x, y


def occupied_cells(scene: Scene) -> set[tuple[int, int]]:
    return {cell_of(o.x, o.y) for o in scene.objects}


def free_cells(scene: Scene) -> list[tuple[int, int]]:
    """Empty grid cells whose centre the camera shows (edits happen where the user can see them)."""
    used = occupied_cells(scene)
    cells = [(r, c) for r in range(GRID) for c in range(GRID) if (r, c) not in used]
    return [cell for cell in cells if _shown(scene, *cell_center(*cell))]


def _shown(scene: Scene, x: float, y: float) -> bool:
    # Keep a margin so an object placed there is visible as a whole at zoom 1 and mostly when zoomed.
    vx, vy = world_to_view(scene.camera, x, y)
    return 0.05 <= vx < 0.95 and 0.05 <= vy < 0.95


def _free_identities(scene: Scene, config: WorldConfig) -> list[tuple[str, str]]:
    used = {(o.color, o.shape) for o in scene.objects}
    return [(c, s) for c in config.colors for s in config.shapes if (c, s) not in used]


def new_object(scene: Scene, rng: np.random.Generator, config: WorldConfig, cell: tuple[int, int]) -> SceneObject:
    """A random object for ``cell`` whose colour + shape is not yet in ``scene`` (so references stay unique)."""
    options = _free_identities(scene, config)
    color, shape = options[int(rng.integers(len(options)))]
    size = config.sizes[int(rng.integers(len(config.sizes)))]
    x, y = _cell_position(*cell, SIZES[size], rng, config.jitter)
    next_id = max((o.id for o in scene.objects), default=-1) + 1
    return SceneObject(shape, color, size, x, y, id=next_id)


def sample_scene(rng: np.random.Generator, config: WorldConfig = WorldConfig()) -> Scene:
    """A random keyframe scene: ``min_objects..max_objects`` objects in distinct cells, identity camera."""
    bg = config.backgrounds[int(rng.integers(len(config.backgrounds)))]
    style = config.background_styles[int(rng.integers(len(config.background_styles)))]
    scene = Scene(background=bg, background_style=style)
    n = int(rng.integers(config.min_objects, config.max_objects + 1))
    cells = [(r, c) for r in range(GRID) for c in range(GRID)]
    for k in rng.permutation(len(cells))[:n]:
        obj = new_object(scene, rng, config, cells[int(k)])
        scene = dataclasses.replace(scene, objects=scene.objects + (obj,))
    return scene


# --- edits ---------------------------------------------------------------------------------------------


def _pick(rng: np.random.Generator, items: list) -> Any:
    return items[int(rng.integers(len(items)))]


def propose_edit(scene: Scene, edit_type: str, rng: np.random.Generator, config: WorldConfig) -> Edit | None:
    """A random edit of ``edit_type`` that is valid for ``scene``, or ``None`` if there is none."""
    # Only objects in view can be referred to (and changes out of view would not show).
    objs = [o for o in scene.objects if is_visible(o, scene.camera)]
    if edit_type == "add":
        cells = free_cells(scene)
        if len(scene.objects) >= config.max_objects or not cells or not _free_identities(scene, config):
            return None
        return Edit("add", value=new_object(scene, rng, config, _pick(rng, cells)))
    if edit_type == "remove":
        return Edit("remove", _pick(rng, objs).id) if len(objs) > config.min_objects else None
    if edit_type == "move":
        cells = free_cells(scene)
        return Edit("move", _pick(rng, objs).id, _pick(rng, cells)) if objs and cells else None
    if edit_type == "recolor":
        used = {(p.color, p.shape) for p in scene.objects}
        options = [(o, c) for o in objs for c in config.colors if c != o.color and (c, o.shape) not in used]
        if not options:
            return None
        obj, color = _pick(rng, options)
        return Edit("recolor", obj.id, color)
    if edit_type == "resize":
        options = [(o, s) for o in objs for s in config.sizes if s != o.size]
        if not options:
            return None
        obj, size = _pick(rng, options)
        return Edit("resize", obj.id, size)
    if edit_type == "background":
        options = [b for b in config.backgrounds if b != scene.background]
        if not options:
            return None
        return Edit("background", value=(_pick(rng, options), _pick(rng, list(config.background_styles))))
    if edit_type == "lighting":
        current = min(LIGHT_LEVELS, key=lambda k: abs(LIGHT_LEVELS[k] - scene.light))
        return Edit("lighting", value=LIGHT_LEVELS["dim" if current == "bright" else "bright"])
    if edit_type == "camera_pan":
        cam = scene.camera
        moves = []
        for axis, sign in (("x", -1), ("x", 1), ("y", -1), ("y", 1)):
            room = config.max_pan - sign * (getattr(cam, axis) - 0.5)
            if room >= 0.1:
                moves.append((axis, sign, room))
        if not moves:
            return None
        axis, sign, room = _pick(rng, moves)
        step = sign * float(rng.uniform(0.1, min(room, 0.2)))
        return Edit("camera_pan", value=dataclasses.replace(cam, **{axis: getattr(cam, axis) + step}))
    if edit_type == "camera_zoom":
        cam = scene.camera
        if cam.zoom + 0.2 <= config.max_zoom and (cam.zoom < 1.1 or rng.random() < 0.5):
            zoom = cam.zoom + float(rng.uniform(0.2, config.max_zoom - cam.zoom))
        elif cam.zoom > 1.1:
            zoom = 1.0 if cam.zoom - 1.0 < 0.3 else cam.zoom - float(rng.uniform(0.2, cam.zoom - 1.0))
        else:
            return None
        return Edit("camera_zoom", value=dataclasses.replace(cam, zoom=zoom))
    raise ValueError(f"propose_edit: unknown edit type {edit_type!r}")


def sample_edit(
    scene: Scene,
    rng: np.random.Generator,
    config: WorldConfig = WorldConfig(),
    types: tuple[str, ...] = EDIT_TYPES,
    weights: tuple[float, ...] | None = None,
) -> Edit:
    """A random valid edit; its type is drawn from ``types`` (with ``weights``), skipping impossible ones."""
    p = np.asarray(weights if weights is not None else [1.0] * len(types), dtype=np.float64)
    if len(p) != len(types) or (p < 0).any() or p.sum() <= 0:
        raise ValueError(f"sample_edit: weights={weights} must be non-negative, one per type in {types}")
    order = rng.choice(len(types), size=len(types), replace=False, p=p / p.sum())
    for k in order:
        edit = propose_edit(scene, types[int(k)], rng, config)
        if edit is not None:
            return edit
    # Zero-weight types are the last resort, so a run never stops on a scene that blocks the others.
    for t in types:
        edit = propose_edit(scene, t, rng, config)
        if edit is not None:
            return edit
    raise ValueError(f"sample_edit: no edit of types {types} is possible in scene {scene}")


def apply_edit(
    scene: Scene, edit: Edit, rng: np.random.Generator | None = None, config: WorldConfig = WorldConfig()
) -> Scene:
    """The scene after ``edit`` (a keyframe: no transition overrides). ``rng`` only jitters move targets."""
    if edit.type == "add":
        return dataclasses.replace(scene, objects=scene.objects + (edit.value,))
    if edit.type == "remove":
        return dataclasses.replace(scene, objects=tuple(o for o in scene.objects if o.id != edit.object_id))
    obj = scene.find(edit.object_id) if edit.object_id is not None else None
    if edit.type in ("move", "recolor", "resize") and obj is None:
        raise ValueError(f"apply_edit: object id {edit.object_id} is not in the scene")
    if edit.type == "move":
        jitter = config.jitter if rng is not None else 0.0
        x, y = _cell_position(*edit.value, obj.world_extent, rng or np.random.default_rng(0), jitter)
        return scene.replace_object(dataclasses.replace(obj, x=x, y=y))
    if edit.type == "recolor":
        return scene.replace_object(dataclasses.replace(obj, color=edit.value))
    if edit.type == "resize":
        # A jittered object may sit too close to its cell edge for a bigger size: pull it back inside.
        cx, cy = cell_center(*cell_of(obj.x, obj.y))
        slack = max(0.0, (1.0 / GRID - SIZES[edit.value]) / 2 - 1.0 / 64)
        x = cx + float(np.clip(obj.x - cx, -slack, slack))
        y = cy + float(np.clip(obj.y - cy, -slack, slack))
        return scene.replace_object(dataclasses.replace(obj, size=edit.value, x=x, y=y))
    if edit.type == "background":
        return dataclasses.replace(scene, background=edit.value[0], background_style=edit.value[1])
    if edit.type == "lighting":
        return dataclasses.replace(scene, light=float(edit.value))
    if edit.type in ("camera_pan", "camera_zoom"):
        return dataclasses.replace(scene, camera=edit.value)
    raise ValueError(f"apply_edit: unknown edit type {edit.type!r}")


# --- region of editing ---------------------------------------------------------------------------------


def fuse_roe(
    src_masks: dict[Any, np.ndarray], tgt_masks: dict[Any, np.ndarray], shape: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """Fuse per-object masks of the changing objects into the source and target RoE maps.

    Each changing object contributes its mask in the source frame to the source RoE and its mask in the
    target frame to the target RoE. An object seen in only one frame (added or removed) lends that mask
    to the other frame too: where a new object will appear is the region to edit in the source.

    Args:
        src_masks: ``{object key: (H, W) bool}`` in the source frame (missing or empty = not visible).
        tgt_masks: the same in the target frame.
        shape: ``(H, W)`` of the maps.

    Returns:
        ``(roe_src, roe_tgt)``, each (H, W) bool.
    """
    roe_src = np.zeros(shape, dtype=bool)
    roe_tgt = np.zeros(shape, dtype=bool)
    for key in list(dict.fromkeys(list(src_masks) + list(tgt_masks))):
        s, t = src_masks.get(key), tgt_masks.get(key)
        s = s if s is not None and s.any() else None
        t = t if t is not None and t.any() else None
        if s is None and t is None:
            continue
        roe_src |= s if s is not None else t
        roe_tgt |= t if t is not None else s
    return roe_src, roe_tgt


def changed_object_ids(changes: list[Change]) -> list[int]:
    return list(dict.fromkeys(c.object.id for c in changes if c.object is not None))


def roe_from_masks(
    changes: list[Change], src_masks: dict[int, np.ndarray], tgt_masks: dict[int, np.ndarray], shape: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """RoE maps for ``changes`` given per-object masks of both frames; global changes cover the frame."""
    if any(c.type in GLOBAL_CHANGES for c in changes):
        full = np.ones(shape, dtype=bool)
        return full, full.copy()
    ids = changed_object_ids(changes)
    return fuse_roe({i: src_masks.get(i) for i in ids}, {i: tgt_masks.get(i) for i in ids}, shape)


# --- sessions ------------------------------------------------------------------------------------------


def sample_transition_session(
    rng: np.random.Generator,
    n_turns: int,
    config: WorldConfig = WorldConfig(),
    split: Split = "train",
    types: tuple[str, ...] = EDIT_TYPES,
    weights: tuple[float, ...] | None = None,
    start: Scene | None = None,
) -> SynthSession:
    """A random ``n_turns``-turn editing session with exact frames, RoE masks and instructions.

    Args:
        rng: the only source of randomness (same generator state -> same session).
        n_turns: number of edits (>= 1); the session has ``n_turns + 1`` frames.
        config: the world (frame size, palettes, object counts).
        split: ``"train"`` or ``"eval"`` instruction phrasings (``"all"`` mixes them).
        types: edit types to draw from, e.g. ``EDIT_TYPES`` or ``CHANGE_TYPES`` for camera and lighting.
        weights: relative probability per type (e.g. oversample add/move/resize).
        start: the first scene; a random :func:`sample_scene` when ``None``.

    Returns:
        A :class:`SynthSession`.

    Example:
        >>> s = sample_transition_session(np.random.default_rng(1), 2, split="eval")
        >>> len(s.instructions), s.cameras
        (2, ['None', 'None'])
    """
    if n_turns < 1:
        raise ValueError(f"sample_transition_session: n_turns={n_turns} must be >= 1")
    scene = start if start is not None else sample_scene(rng, config)
    image, masks = render_layers(scene, config.size)
    session = SynthSession([image], [], [], [], [], [scene], [])
    for _ in range(n_turns):
        edit = sample_edit(scene, rng, config, types, weights)
        nxt = apply_edit(scene, edit, rng, config)
        nxt_image, nxt_masks = render_layers(nxt, config.size)
        changes = diff_scenes(scene, nxt)
        instruction, camera = describe_changes(changes, rng, split)
        roe_src, roe_tgt = roe_from_masks(changes, masks, nxt_masks, (config.size, config.size))
        session.frames.append(nxt_image)
        session.roe_src.append(roe_src)
        session.roe_tgt.append(roe_tgt)
        session.instructions.append(instruction)
        session.cameras.append(camera)
        session.scenes.append(nxt)
        session.changes.append(changes)
        scene, masks = nxt, nxt_masks
    return session
