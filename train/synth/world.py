"""The synthetic shapes world: scene state, palettes and an exact renderer.

A :class:`Scene` is a few flat-coloured shapes on a plain or gently graded background, seen through a
:class:`Camera`. Positions live in *world* coordinates, the unit square ``[0, 1]^2`` that the identity
camera shows exactly; a camera pan or zoom changes what the frame shows without changing the world.

Rendering samples each pixel centre once (no anti-aliasing), so the same scene always gives the same
pixels and a pixel parser (:func:`vincie_train.synth.parse.parse_scene`) can recover shapes, colours,
sizes and positions exactly. Objects of a keyframe sit in distinct cells of a 3x3 grid, so they never
touch.

Example:
    >>> scene = Scene(objects=(SceneObject("circle", "red", "small", 1 / 6, 1 / 6),), background="navy")
    >>> render(scene, 64).shape
    (64, 64, 3)
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond")

# Saturated colours far apart in RGB (min pairwise distance ~130) so that a nearest-colour pixel
# classifier stays exact on renders and robust on lossy decodes or model outputs.
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "yellow": (235, 210, 40),
    "green": (40, 175, 60),
    "cyan": (40, 200, 215),
    "blue": (45, 70, 230),
    "magenta": (215, 50, 205),
}

# Side (square, diamond, triangle) or diameter (circle) as a fraction of the frame side at zoom 1:
# 8, 12 and 16 px at 64 px, which fit a 3x3 grid cell (21.3 px) with a margin.
SIZES: dict[str, float] = {"small": 0.125, "medium": 0.1875, "large": 0.25}

# Background base colours, all at least ~95 RGB units from every object colour (the gradient adds at most
# +-GRADIENT_AMPLITUDE), which keeps the parser's colour threshold unambiguous.
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "black": (32, 32, 36),
    "navy": (24, 30, 78),
    "gray": (120, 120, 124),
    "white": (236, 236, 232),
    "brown": (96, 62, 40),
}
BACKGROUND_STYLES: tuple[str, ...] = ("flat", "vertical", "diagonal")
GRADIENT_AMPLITUDE = 14.0  # RGB units between the centre and an edge of the world

GRID = 3  # the world is split into GRID x GRID cells; keyframe objects sit at cell centres
ROW_NAMES: tuple[str, ...] = ("top", "middle", "bottom")
COL_NAMES: tuple[str, ...] = ("left", "center", "right")

LIGHT_LEVELS: dict[str, float] = {"bright": 1.0, "dim": 0.7}


@dataclass(frozen=True)
class Camera:
    """What part of the world the frame shows: centre ``(x, y)`` and ``zoom`` (1 = the whole unit square)."""

    x: float = 0.5
    y: float = 0.5
    zoom: float = 1.0

    @property
    def is_identity(self) -> bool:
        return abs(self.x - 0.5) < 1e-9 and abs(self.y - 0.5) < 1e-9 and abs(self.zoom - 1.0) < 1e-9


@dataclass(frozen=True)
class SceneObject:
    """One shape. ``x, y`` is its centre in world coordinates (0..1, y down).

    ``rgb`` and ``extent`` override the palette colour and size; they are set only on in-between video
    frames (a colour or size transition), never on keyframes, and the semantic ``color``/``size`` then
    hold the nearest keyframe value.
    """

    shape: str
    color: str
    size: str
    x: float
    y: float
    id: int = 0
    rgb: tuple[int, int, int] | None = None
    extent: float | None = None

    @property
    def world_extent(self) -> float:
        return self.extent if self.extent is not None else SIZES[self.size]

    @property
    def fill_rgb(self) -> tuple[int, int, int]:
        return self.rgb if self.rgb is not None else COLORS[self.color]

    def describe(self) -> str:
        """The reference used in instructions, e.g. ``"red circle"`` (colour + shape is unique in a scene)."""
        return f"{self.color} {self.shape}"

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in d.items() if v is not None}

    @classmethod
    def from_dict(cls, d: dict) -> SceneObject:
        d = dict(d)
        if d.get("rgb") is not None:
            d["rgb"] = tuple(int(c) for c in d["rgb"])
        return cls(**d)


@dataclass(frozen=True)
class Scene:
    """Full scene state: objects (drawn in order, later on top), background, lighting and camera."""

    objects: tuple[SceneObject, ...] = ()
    background: str = "black"
    background_style: str = "flat"
    light: float = 1.0
    camera: Camera = field(default_factory=Camera)
    # Set only on in-between video frames of a background transition.
    background_rgb: tuple[int, int, int] | None = None

    def __post_init__(self) -> None:
        if self.background not in BACKGROUNDS:
            raise ValueError(f"Scene: background={self.background!r}; use one of {sorted(BACKGROUNDS)}")
        if self.background_style not in BACKGROUND_STYLES:
            raise ValueError(f"Scene: background_style={self.background_style!r}; use one of {BACKGROUND_STYLES}")
        for o in self.objects:
            if o.shape not in SHAPES or o.color not in COLORS or o.size not in SIZES:
                raise ValueError(
                    f"Scene: object {o} has an unknown shape/color/size; use shapes {SHAPES}, "
                    f"colors {tuple(COLORS)}, sizes {tuple(SIZES)}"
                )

    def find(self, object_id: int) -> SceneObject | None:
        return next((o for o in self.objects if o.id == object_id), None)

    def replace_object(self, obj: SceneObject) -> Scene:
        return dataclasses.replace(self, objects=tuple(obj if o.id == obj.id else o for o in self.objects))

    def to_dict(self) -> dict:
        d = {
            "objects": [o.to_dict() for o in self.objects],
            "background": self.background,
            "background_style": self.background_style,
            "light": self.light,
            "camera": dataclasses.asdict(self.camera),
        }
        if self.background_rgb is not None:
            d["background_rgb"] = list(self.background_rgb)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Scene:
        return cls(
            objects=tuple(SceneObject.from_dict(o) for o in d.get("objects", ())),
            background=d.get("background", "black"),
            background_style=d.get("background_style", "flat"),
            light=float(d.get("light", 1.0)),
            camera=Camera(**d.get("camera", {})),
            background_rgb=tuple(d["background_rgb"]) if d.get("background_rgb") is not None else None,
        )


def cell_center(row: int, col: int) -> tuple[float, float]:
    """World ``(x, y)`` of the centre of grid cell ``(row, col)``."""
    return ((col + 0.5) / GRID, (row + 0.5) / GRID)


def cell_of(x: float, y: float) -> tuple[int, int]:
    """The ``(row, col)`` grid cell containing the point ``(x, y)`` (clamped to the grid)."""
    return (min(max(int(y * GRID), 0), GRID - 1), min(max(int(x * GRID), 0), GRID - 1))


def region_name(x: float, y: float) -> str:
    """Coarse region of a point in frame coordinates: ``"top left"``, ``"top"``, ``"center"``, ``"right"``..."""
    row, col = cell_of(x, y)
    r, c = ROW_NAMES[row], COL_NAMES[col]
    if r == "middle" and c == "center":
        return "center"
    if r == "middle":
        return c
    if c == "center":
        return r
    return f"{r} {c}"


def world_to_view(camera: Camera, x: float, y: float) -> tuple[float, float]:
    """Frame coordinates (0..1) of the world point ``(x, y)`` under ``camera``."""
    return ((x - camera.x) * camera.zoom + 0.5, (y - camera.y) * camera.zoom + 0.5)


def _pixel_world_grid(camera: Camera, size: int) -> tuple[np.ndarray, np.ndarray]:
    # Pixel centres (i + 0.5) / size in frame coordinates, mapped back into the world.
    centres = (np.arange(size, dtype=np.float64) + 0.5) / size
    wx = camera.x + (centres - 0.5) / camera.zoom
    wy = camera.y + (centres - 0.5) / camera.zoom
    return wx[None, :], wy[:, None]


def shape_mask(obj: SceneObject, camera: Camera, size: int) -> np.ndarray:
    """Pixels covered by ``obj`` alone (ignoring occlusion). Returns (size, size) bool."""
    wx, wy = _pixel_world_grid(camera, size)
    half = obj.world_extent / 2
    u = (wx - obj.x) / half  # (1, S) in [-1, 1] inside the bounding box
    v = (wy - obj.y) / half  # (S, 1)
    if obj.shape == "square":
        return (np.abs(u) < 1) & (np.abs(v) < 1)
    if obj.shape == "circle":
        return u * u + v * v < 1
    if obj.shape == "diamond":
        return np.abs(u) + np.abs(v) < 1
    if obj.shape == "triangle":
        # Apex at the top centre, base along the bottom edge of the bounding box.
        return (v > -1) & (v < 1) & (np.abs(u) < (v + 1) / 2)
    raise ValueError(f"shape_mask: unknown shape {obj.shape!r}; use one of {SHAPES}")


def background_image(scene: Scene, size: int) -> np.ndarray:
    """The background alone. Returns (size, size, 3) float64 in RGB units (before lighting)."""
    base = np.array(scene.background_rgb or BACKGROUNDS[scene.background], dtype=np.float64)
    wx, wy = _pixel_world_grid(scene.camera, size)
    # The gradient is anchored in the world (not the frame) so that camera pans visibly move it.
    if scene.background_style == "vertical":
        ramp = np.broadcast_to((wy - 0.5) * 2, (size, size))
    elif scene.background_style == "diagonal":
        ramp = (wx - 0.5) + (wy - 0.5)
    else:
        ramp = np.zeros((size, size))
    ramp = np.clip(ramp, -1.0, 1.0) * GRADIENT_AMPLITUDE
    return base[None, None, :] + ramp[..., None]


def render_layers(scene: Scene, size: int = 64) -> tuple[np.ndarray, dict[int, np.ndarray]]:
    """Render the frame and the visible mask of every object.

    Args:
        scene: the scene to draw.
        size: frame side in pixels (frames are square).

    Returns:
        ``(image, masks)``: image (size, size, 3) uint8 and ``{object id: (size, size) bool}`` holding the
        pixels where each object is visible (later objects occlude earlier ones).
    """
    if size < 8:
        raise ValueError(f"render: size={size} is too small; use at least 8 pixels (64 is the default)")
    img = background_image(scene, size)
    owner = np.full((size, size), -1, dtype=np.int64)
    for index, obj in enumerate(scene.objects):
        m = shape_mask(obj, scene.camera, size)
        img[m] = np.array(obj.fill_rgb, dtype=np.float64)
        owner[m] = index
    img = np.clip(np.rint(img * scene.light), 0, 255).astype(np.uint8)
    masks = {obj.id: owner == index for index, obj in enumerate(scene.objects)}
    return img, masks


def render(scene: Scene, size: int = 64) -> np.ndarray:
    """Render ``scene`` to a (size, size, 3) uint8 RGB image.

    Example:
        >>> img = render(Scene(background="white"), 32)
        >>> img[0, 0].tolist()
        [236, 236, 232]
    """
    return render_layers(scene, size)[0]


def render_masks(scene: Scene, size: int = 64) -> dict[int, np.ndarray]:
    """Visible (size, size) bool mask per object id (see :func:`render_layers`)."""
    return render_layers(scene, size)[1]


def is_visible(obj: SceneObject, camera: Camera) -> bool:
    """Whether the object's centre lies inside the frame (our definition of "present" in a frame)."""
    vx, vy = world_to_view(camera, obj.x, obj.y)
    return 0.0 <= vx < 1.0 and 0.0 <= vy < 1.0
