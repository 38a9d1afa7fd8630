"""Changes between two scenes, and their instruction phrasings.

:func:`diff_scenes` compares two scene states semantically (colour names, size classes, grid regions,
presence in the frame) and returns a list of :class:`Change`; :func:`describe_changes` turns them into one
instruction with a paraphrase template chosen per change. Every change type has *train* phrasings and
disjoint *eval* phrasings, so a benchmark can test generalisation to unseen wordings.

Example:
    >>> from vincie_train.synth.world import Scene, SceneObject
    >>> a = Scene(objects=(SceneObject("circle", "red", "small", 1 / 6, 1 / 6, id=1),))
    >>> b = a.replace_object(SceneObject("circle", "blue", "small", 1 / 6, 1 / 6, id=1))
    >>> [c.type for c in diff_scenes(a, b)]
    ['recolor']
    >>> describe_changes(diff_scenes(a, b), np.random.default_rng(0), split="eval")[0]
    'recolor the red circle blue'
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from .world import LIGHT_LEVELS, Scene, SceneObject, is_visible, region_name, world_to_view

Split = Literal["train", "eval", "all"]

CHANGE_TYPES: tuple[str, ...] = (
    "add",
    "remove",
    "move",
    "recolor",
    "resize",
    "background",
    "lighting",
    "camera_pan",
    "camera_zoom",
)
# The edits a user can ask for in the shapes benchmark (camera and lighting exist to make videos realistic).
EDIT_TYPES: tuple[str, ...] = ("add", "remove", "move", "recolor", "resize", "background")

CAMERA_NONE = "None"

# Paraphrase templates. Keys are change types, refined where the wording depends on a parameter.
# Fields: {obj} "red circle", {size} {color} {shape} of the object, {where} "at the top left",
# {to} "to the top left", {new_color}, {new_size}, {bg}, {dir} "to the left" / "up".
TEMPLATES: dict[str, dict[str, tuple[str, ...]]] = {
    "add": {
        "train": (
            "add a {size} {color} {shape} {where}",
            "put a {size} {color} {shape} {where}",
            "place a {size} {color} {shape} {where}",
        ),
        "eval": ("insert a {size} {color} {shape} {where}", "draw a {size} {color} {shape} {where}"),
    },
    "remove": {
        "train": ("remove the {obj}", "delete the {obj}", "take away the {obj}"),
        "eval": ("get rid of the {obj}", "erase the {obj}"),
    },
    "move": {
        "train": ("move the {obj} {to}", "shift the {obj} {to}", "slide the {obj} {to}"),
        "eval": ("relocate the {obj} {to}", "drag the {obj} {to}"),
    },
    "move_dir": {
        "train": ("move the {obj} {dir}", "shift the {obj} {dir}"),
        "eval": ("nudge the {obj} {dir}",),
    },
    "recolor": {
        "train": ("make the {obj} {new_color}", "change the {obj} to {new_color}", "turn the {obj} {new_color}"),
        "eval": ("paint the {obj} {new_color}", "recolor the {obj} {new_color}"),
    },
    "resize": {
        "train": (
            "make the {obj} {new_size}",
            "resize the {obj} to {new_size}",
            "change the size of the {obj} to {new_size}",
        ),
        "eval": ("scale the {obj} to {new_size}", "set the {obj} to {new_size} size"),
    },
    "background": {
        "train": (
            "change the background to {bg}",
            "make the background {bg}",
            "set the background to {bg}",
        ),
        "eval": ("paint the background {bg}", "switch the background to {bg}"),
    },
    # Undoing an earlier change, by reference (train/synth/undo.py): the value to restore is only in
    # the session's history. Used only where a turn restores the state before the latest change.
    "add_back": {
        "train": ("put the {color} {shape} back", "bring back the {color} {shape}"),
        "eval": ("restore the {color} {shape}", "return the {color} {shape} to the picture"),
    },
    "move_back": {
        "train": ("move the {obj} back", "slide the {obj} back to where it was"),
        "eval": ("drag the {obj} back", "return the {obj} to its old place"),
    },
    "recolor_back": {
        "train": ("change the {obj} back to its old colour", "make the {obj} its old colour again"),
        "eval": ("restore the colour of the {obj}", "paint the {obj} its earlier colour"),
    },
    "resize_back": {
        "train": ("change the {obj} back to its old size", "make the {obj} its old size again"),
        "eval": ("restore the size of the {obj}", "scale the {obj} back to its earlier size"),
    },
    "background_back": {
        "train": ("change the background back", "make the background as it was again"),
        "eval": ("restore the background", "switch the background back"),
    },
    "lighting_dim": {
        "train": ("make the scene darker", "dim the lights", "darken the image"),
        "eval": ("lower the lighting", "turn the lights down"),
    },
    "lighting_bright": {
        "train": ("make the scene brighter", "brighten the lights", "brighten the image"),
        "eval": ("raise the lighting", "turn the lights up"),
    },
    "camera_pan": {
        "train": ("pan the camera {dir}", "move the view {dir}", "pan {dir}"),
        "eval": ("turn the camera {dir}", "swing the view {dir}"),
    },
    "camera_zoom_in": {
        "train": ("zoom in", "zoom the camera in", "move the camera closer"),
        "eval": ("get closer to the scene", "magnify the view"),
    },
    "camera_zoom_out": {
        "train": ("zoom out", "zoom the camera out", "move the camera back"),
        "eval": ("step back from the scene", "widen the view"),
    },
}

_TO = {"center": "to the center"}
_WHERE = {"center": "in the center", "left": "on the left", "right": "on the right"}
_DIR = {"left": "to the left", "right": "to the right", "up": "up", "down": "down"}

# Thresholds deciding that a continuous quantity changed between two video frames.
MOVE_EPS = 0.04  # world units (~2.5 px at 64 px)
PAN_EPS = 0.02
ZOOM_EPS = 0.05
LIGHT_EPS = 0.1


@dataclass(frozen=True)
class Change:
    """One semantic change from a source to a target scene.

    ``object`` is the object as it is in the source (in the target for ``add``); ``params`` holds the
    new value: ``{"to": region}`` or ``{"dir": "left"}`` (move), ``{"color": ...}``, ``{"size": ...}``,
    ``{"background": ...}``, ``{"light": "dim"|"bright"}``, ``{"camera": "pan-left"|"zoom-in"...}``,
    ``{"where": region}`` (add).
    """

    type: str
    object: SceneObject | None = None
    params: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        d: dict = {"type": self.type, **self.params}
        if self.object is not None:
            o = self.object
            d["object"] = {"id": o.id, "shape": o.shape, "color": o.color, "size": o.size}
        return d


def _view_region(scene: Scene, obj: SceneObject) -> str:
    return region_name(*world_to_view(scene.camera, obj.x, obj.y))


def _light_name(light: float) -> str:
    return min(LIGHT_LEVELS, key=lambda k: abs(LIGHT_LEVELS[k] - light))


def camera_changes(a: Scene, b: Scene) -> list[Change]:
    """Camera motion from ``a`` to ``b`` as ``camera_pan``/``camera_zoom`` changes (dominant pan axis only)."""
    out = []
    dx, dy = b.camera.x - a.camera.x, b.camera.y - a.camera.y
    if max(abs(dx), abs(dy)) > PAN_EPS:
        d = ("right" if dx > 0 else "left") if abs(dx) >= abs(dy) else ("down" if dy > 0 else "up")
        out.append(Change("camera_pan", params={"camera": f"pan-{d}", "dir": d}))
    dz = b.camera.zoom - a.camera.zoom
    if abs(dz) > ZOOM_EPS:
        out.append(Change("camera_zoom", params={"camera": "zoom-in" if dz > 0 else "zoom-out"}))
    return out


def camera_tag(changes: list[Change]) -> str:
    """The paper's camera tag value: ``"None"``, ``"pan-left"``, ``"zoom-in"``, ``"pan-left, zoom-in"``..."""
    tags = [c.params["camera"] for c in changes if c.type in ("camera_pan", "camera_zoom")]
    return ", ".join(tags) if tags else CAMERA_NONE


def diff_scenes(a: Scene, b: Scene) -> list[Change]:
    """Semantic changes from scene ``a`` to scene ``b``, objects matched by ``id``.

    Object changes come first (ordered by object id), then background, lighting and camera. An object
    counts as present when its centre is inside the frame; a move is a world-space displacement, so camera
    motion alone moves, adds or removes nothing.
    """
    out: list[Change] = []
    for oid in sorted({o.id for o in a.objects} | {o.id for o in b.objects}):
        oa, ob = a.find(oid), b.find(oid)
        va = oa is not None and is_visible(oa, a.camera)
        vb = ob is not None and is_visible(ob, b.camera)
        moved = oa is not None and ob is not None and np.hypot(ob.x - oa.x, ob.y - oa.y) > MOVE_EPS
        if va and not vb:
            # Leaving the frame by itself is a removal; leaving it because the camera moved is not.
            if ob is None or moved:
                out.append(Change("remove", oa))
            continue
        if vb and not va:
            if oa is None or moved:
                out.append(Change("add", ob, {"where": _view_region(b, ob)}))
            continue
        if not (va and vb):
            continue
        if moved:
            ra, rb = _view_region(a, oa), _view_region(b, ob)
            if ra != rb:
                out.append(Change("move", oa, {"to": rb}))
            else:
                dx, dy = ob.x - oa.x, ob.y - oa.y
                d = ("right" if dx > 0 else "left") if abs(dx) >= abs(dy) else ("down" if dy > 0 else "up")
                out.append(Change("move", oa, {"dir": d}))
        if ob.color != oa.color:
            out.append(Change("recolor", oa, {"color": ob.color}))
        if ob.size != oa.size:
            out.append(Change("resize", oa, {"size": ob.size}))
    if (a.background, a.background_style) != (b.background, b.background_style):
        out.append(Change("background", params={"background": b.background, "style": b.background_style}))
    if abs(a.light - b.light) > LIGHT_EPS and _light_name(a.light) != _light_name(b.light):
        out.append(Change("lighting", params={"light": _light_name(b.light)}))
    return out + camera_changes(a, b)


def _template_key(change: Change) -> str:
    if change.type == "move" and "dir" in change.params:
        return "move_dir"
    if change.type == "lighting":
        return f"lighting_{change.params['light']}"
    if change.type == "camera_zoom":
        return "camera_zoom_in" if change.params["camera"] == "zoom-in" else "camera_zoom_out"
    return change.type


def templates_for(key: str, split: Split) -> tuple[str, ...]:
    """Templates of a template key for ``split`` (``"all"`` = train + eval)."""
    if key not in TEMPLATES:
        raise ValueError(f"templates_for: unknown template key {key!r}; use one of {sorted(TEMPLATES)}")
    if split == "all":
        return TEMPLATES[key]["train"] + TEMPLATES[key]["eval"]
    if split not in ("train", "eval"):
        raise ValueError(f"templates_for: split={split!r}; use 'train', 'eval' or 'all'")
    return TEMPLATES[key][split]


BACK_KEYS = tuple(k[: -len("_back")] for k in TEMPLATES if k.endswith("_back"))


def describe_change(change: Change, rng: np.random.Generator, split: Split = "train", back: bool = False) -> str:
    """One phrase for one change, template drawn with ``rng`` from the ``split`` phrasings; ``back``: the
    change undoes an earlier one, phrased by reference ("move the red circle back") where a back
    phrasing exists for its kind."""
    key = _template_key(change)
    options = templates_for(f"{key}_back" if back and key in BACK_KEYS else key, split)
    template = options[int(rng.integers(len(options)))]
    o = change.object
    fields = {
        "obj": o.describe() if o else "",
        "size": o.size if o else "",
        "color": o.color if o else "",
        "shape": o.shape if o else "",
        "where": _WHERE.get(change.params.get("where", ""), f"at the {change.params.get('where', '')}"),
        "to": _TO.get(change.params.get("to", ""), f"to the {change.params.get('to', '')}"),
        "dir": _DIR.get(change.params.get("dir", ""), ""),
        "new_color": change.params.get("color", ""),
        "new_size": change.params.get("size", ""),
        "bg": change.params.get("background", ""),
    }
    return template.format(**fields)


def describe_changes(
    changes: list[Change], rng: np.random.Generator, split: Split = "train", back: bool = False
) -> tuple[str, str]:
    """Instruction and camera tag for a transition.

    Object, background and lighting changes form the instruction, joined with "and"; camera motion goes
    to the camera tag (the paper's disentanglement) and becomes the instruction only when nothing else
    changed.

    Returns:
        ``(instruction, camera_tag)``; the instruction is ``""`` when ``changes`` is empty.
    """
    content = [c for c in changes if not c.type.startswith("camera")]
    shown = content if content else changes
    back = back and len(shown) == 1  # "... back" names one change; two at once are spelled out
    return " and ".join(describe_change(c, rng, split, back) for c in shown), camera_tag(changes)


def category_of(changes: list[Change]) -> str:
    """A single category label for summaries: the change type, ``"multi"``, or ``"none"``."""
    types = sorted({c.type for c in changes if not c.type.startswith("camera")}) or sorted({c.type for c in changes})
    if not types:
        return "none"
    return types[0] if len(types) == 1 else "multi"
