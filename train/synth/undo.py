"""Changes that undo an earlier change of a session: the edits only the history can explain.

"Put the red circle back", "move the square back", "change the triangle back to its old colour": such
an instruction names what to restore but not the value to restore, which lies in an earlier frame of
the session. They are what makes the context of a multi-turn session carry information that the last
image lacks (a single-image editor can only guess), so the video generator can make objects come back
(:func:`undo_edits`, ``revert_prob`` of :func:`vincie_train.synth.video.sample_video`), the synthetic
annotator can phrase such a turn by reference (:func:`undo_span`), and ShapesBench's recall variant asks
for them.

"Back" means the state before the latest change of that one thing: an object's cell before its latest
move, its colour before its latest recolour, its size before its latest resize, the background before
its latest change, and a removed object as it was last seen.

Example:
    >>> import numpy as np
    >>> from vincie_train.synth.dynamics import Edit, apply_edit, sample_scene
    >>> a = sample_scene(np.random.default_rng(0))
    >>> b = apply_edit(a, Edit("resize", a.objects[0].id, "large" if a.objects[0].size != "large" else "small"))
    >>> [e.type for e in undo_edits([a, b])]
    ['resize']
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from .dynamics import Edit, WorldConfig, apply_edit, free_cells
from .parse import scene_signature
from .world import Scene, SceneObject, cell_of, is_visible


def _previous(values: list) -> object | None:
    """The value before the latest change in a run of values (oldest first), or None if it never changed."""
    current = values[-1]
    for value in reversed(values[:-1]):
        if value != current:
            return value
    return None


def _run(history: Sequence[Scene], object_id: int) -> list[SceneObject]:
    """The object's states in the frames where it is present without a gap up to the last frame (an id
    can be reused by a later object after a removal, so the run stops at the first frame without it)."""
    run: list[SceneObject] = []
    for scene in reversed(history):
        obj = scene.find(object_id)
        if obj is None:
            break
        run.append(obj)
    return run[::-1]


def _removed(history: Sequence[Scene]) -> list[SceneObject]:
    """Objects that left the scene in the history, each as last seen, the latest removal of an identity
    (colour + shape) first; identities present now are left out (they are not gone)."""
    current = {(o.color, o.shape) for o in history[-1].objects}
    seen: dict[tuple[str, str], SceneObject] = {}
    for before, after in zip(reversed(history[:-1]), reversed(history[1:])):
        ids_after = {o.id for o in after.objects}
        for obj in before.objects:
            key = (obj.color, obj.shape)
            if obj.id not in ids_after and key not in current and key not in seen:
                seen[key] = obj
    return list(seen.values())


def undo_edits(history: Sequence[Scene], config: WorldConfig = WorldConfig()) -> list[Edit]:
    """Valid edits of ``history[-1]`` that restore the state before the latest change of one thing.

    Args:
        history: the session's scenes, oldest first; the last is the current scene.
        config: the world (object count limits).

    Returns:
        Edits in a fixed order (put back, move back, recolour back, resize back, background back); empty
        when nothing earlier can be restored (e.g. a one-frame history).
    """
    if len(history) < 2:
        return []
    scene = history[-1]
    out: list[Edit] = []
    free = set(free_cells(scene))
    used = {(o.color, o.shape) for o in scene.objects}
    if len(scene.objects) < config.max_objects:
        next_id = max((o.id for o in scene.objects), default=-1) + 1
        for obj in _removed(history):
            if cell_of(obj.x, obj.y) in free:
                out.append(Edit("add", value=dataclasses.replace(obj, id=next_id)))
    for obj in scene.objects:
        if not is_visible(obj, scene.camera):
            continue
        run = _run(history, obj.id)
        cell = _previous([cell_of(o.x, o.y) for o in run])
        if cell is not None and cell in free:
            out.append(Edit("move", obj.id, cell))
        color = _previous([o.color for o in run])
        if color is not None and (color, obj.shape) not in used:
            out.append(Edit("recolor", obj.id, color))
        size = _previous([o.size for o in run])
        if size is not None:
            out.append(Edit("resize", obj.id, size))
    background = _previous([(s.background, s.background_style) for s in history])
    if background is not None:
        out.append(Edit("background", value=background))
    return out


def sample_undo(history: Sequence[Scene], rng: np.random.Generator, config: WorldConfig = WorldConfig()) -> Edit | None:
    """A random edit from :func:`undo_edits` (uniform over them), or ``None`` when there is none."""
    edits = undo_edits(history, config)
    return edits[int(rng.integers(len(edits)))] if edits else None


def _state(scene: Scene) -> tuple:
    # What a judge of the frame sees, plus what an undo must also leave as it was (the gradient style
    # of a restored background, the light, the camera).
    return scene_signature(scene), scene.background_style, round(scene.light, 3), scene.camera


# What an object edit sets, read from an object.
_OBJECT_VALUE = {"move": lambda o: cell_of(o.x, o.y), "recolor": lambda o: o.color, "resize": lambda o: o.size}


def _last_shown(history: Sequence[Scene], edit: Edit) -> int:
    """The latest frame of ``history`` (before the last) that shows the state ``edit`` restores."""
    for j in range(len(history) - 2, -1, -1):
        scene = history[j]
        if edit.type == "add":
            o = edit.value
            key = (o.color, o.shape, o.size, cell_of(o.x, o.y))
            if any((p.color, p.shape, p.size, cell_of(p.x, p.y)) == key for p in scene.objects):
                return j
        elif edit.type == "background":
            if (scene.background, scene.background_style) == tuple(edit.value):
                return j
        else:
            obj = scene.find(edit.object_id)
            if obj is not None and _OBJECT_VALUE[edit.type](obj) == edit.value:
                return j
    raise ValueError(f"_last_shown: no frame of the history shows what {edit} restores")


def undo_span(history: Sequence[Scene], after: Scene, config: WorldConfig = WorldConfig()) -> int | None:
    """If going from ``history[-1]`` to ``after`` restores the state before the latest change of one
    thing, how many frames back the latest frame showing that state lies (1 = the frame before the
    current one); otherwise ``None``. An instruction that refers to the history ("move it back") can
    be understood from a session only if it holds that many frames before the current one.

    Example:
        >>> import numpy as np
        >>> from vincie_train.synth.dynamics import sample_scene
        >>> a = sample_scene(np.random.default_rng(0))
        >>> undo_span([a], a) is None
        True
    """
    target = _state(after)
    for edit in undo_edits(history, config):
        if _state(apply_edit(history[-1], edit)) == target:
            return len(history) - 1 - _last_shown(history, edit)
    return None
