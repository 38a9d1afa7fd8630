"""The ShapesBench judge: parse a predicted image from its pixels and score one editing turn.

A turn is judged against the *expected* scenes (ground truth before and after the instruction), never
against the model's own previous output, so an error cannot hide behind a consistent mistake.

Rules (see ``docs/shapes_bench.md``):

* An object is its key ``(colour, shape, size, cell)``; the cell is the 3x3 grid cell of its centre.
* The *target* of a turn is every object whose colour + shape names the edited object before or after
  the edit (colour + shape is unique in a scene, so this is exact), plus any predicted object in a cell
  the edited object occupies before or after the edit (so a wrong colour or shape there is a failed
  instruction, not an extra object). Prompt-following: the predicted
  target objects equal the expected ones as a multiset (add: the new object, with its size, in the named
  cell; remove: none left; move: in the new cell only; recolour: the new colour only; resize: the new
  size), or, for a background edit, the background has the requested colour.
* Consistency: every other object is unchanged (same key), there is no extra object, the background
  is unchanged (unless it was the instruction), and at most ``max_artifact_fraction`` of the pixels are
  neither background nor near a detected object (smears, ghosts, large speckle).
* Success = prompt-following and consistency.

The parser is exact on renders and tolerates model outputs: the background is a fitted plane (the
world's gradients are linear); a pixel belongs to a palette colour when it lies at least half way from
the background towards that colour and within ``color_threshold`` of the line between them (colour
shifts, noise, and soft edges cut where the hard edge was); components below ``min_area_fraction`` of a
small object's box are speckle; shape + size are the renderer template that best fits the object's
coverage map, allowing for blurred edges (so size is read from the mass, not an exact pixel count).

Example:
    >>> from vincie_train.synth import Scene, SceneObject, render, diff_scenes
    >>> a = Scene(objects=(SceneObject("circle", "red", "small", 1 / 6, 1 / 6, id=0),))
    >>> b = a.replace_object(SceneObject("circle", "blue", "small", 1 / 6, 1 / 6, id=0))
    >>> judge_turn(render(b), a, b, diff_scenes(a, b)).success
    True
    >>> judge_turn(render(a), a, b, diff_scenes(a, b)).reasons
    ('target: expected small blue circle at top left; found small red circle at top left',)
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np
from PIL import Image
from vincie_train.synth.instructions import Change, category_of
from vincie_train.synth.parse import connected_components
from vincie_train.synth.world import (
    BACKGROUNDS,
    COLORS,
    SHAPES,
    SIZES,
    Camera,
    Scene,
    SceneObject,
    cell_of,
    region_name,
    shape_mask,
)

ImageLike = Image.Image | np.ndarray
ObjectKey = tuple  # (color, shape, size, (row, col))

_OBJ_NAMES = tuple(COLORS)
_OBJ_RGB = np.array([COLORS[c] for c in _OBJ_NAMES], dtype=np.float64)  # (C, 3)
_BG_NAMES = tuple(BACKGROUNDS)
_BG_RGB = np.array([BACKGROUNDS[b] for b in _BG_NAMES], dtype=np.float64)  # (B, 3)
# Edge softness (Gaussian sigma, px) the shape fit tries; 0 is the renderer's hard edge.
BLUR_SIGMAS = (0.0, 0.6, 1.2, 1.8)


@dataclass(frozen=True)
class JudgeConfig:
    """Tolerances of the pixel parser and the consistency test (defaults: exact on renders, lenient on
    mild colour shifts, speckle and soft edges)."""

    # An object pixel of colour c lies at least half way from the background towards c and closer than
    # this (RGB Euclidean) to the line between them. Palette colours are >= ~130 apart and backgrounds
    # >= ~95 from every object colour.
    color_threshold: float = 60.0
    # Components smaller than this fraction of a small object's bounding box (8x8 px at 64 px) are speckle.
    min_area_fraction: float = 0.25
    # A pixel within this distance of the fitted background plane is background.
    background_tolerance: float = 45.0
    # Pixels that are neither background nor within 1 px of a detected object, as a fraction of the frame,
    # above which the turn fails consistency ("artifacts").
    max_artifact_fraction: float = 0.02


@dataclass(frozen=True)
class ParsedFrame:
    """What the judge read from an image: a scene (identity camera, flat background) and the artifact
    fraction (pixels explained neither by the background nor by a detected object)."""

    scene: Scene
    artifact_fraction: float


@dataclass(frozen=True)
class TurnVerdict:
    """The judge's decision on one turn.

    Attributes:
        category: the edit category (``add``, ``remove``, ``move``, ``recolor``, ``resize``, ``background``).
        prompt_following: the instructed change is present.
        consistency: nothing else changed (objects, background, artifacts).
        consistency_score: graded consistency in [0, 1]: the share of non-target items (objects and
            background) kept correctly, extra objects counting against it.
        reasons: one line per failure, each ``"<kind>: <details>"`` with kind in ``target``, ``background``,
            ``missing``, ``extra``, ``artifacts``, ``no-image``.
        artifact_fraction: see :class:`ParsedFrame`.
    """

    category: str
    prompt_following: bool
    consistency: bool
    consistency_score: float
    reasons: tuple[str, ...] = ()
    artifact_fraction: float = 0.0

    @property
    def success(self) -> bool:
        return self.prompt_following and self.consistency

    @property
    def failure_kinds(self) -> tuple[str, ...]:
        return tuple(r.split(":", 1)[0] for r in self.reasons)


# --- parsing -------------------------------------------------------------------------------------------


def to_rgb_array(image: ImageLike, size: int | None = None) -> np.ndarray:
    """An image as (size, size, 3) uint8 RGB; resized (area average down, bilinear up) when ``size`` is given
    and differs (models may work at a larger resolution than the benchmark's 64 px)."""
    if isinstance(image, np.ndarray):
        arr = image
        if arr.dtype != np.uint8:
            arr = np.clip(np.rint(arr * (255.0 if arr.max(initial=0) <= 1.0 else 1.0)), 0, 255).astype(np.uint8)
        if arr.ndim != 3 or arr.shape[2] not in (3, 4):
            raise ValueError(f"judge: image array of shape {arr.shape}; pass (H, W, 3) RGB")
        pil = Image.fromarray(arr[..., :3])
    elif isinstance(image, Image.Image):
        pil = image.convert("RGB")
    else:
        raise TypeError(f"judge: image must be a PIL image or numpy array, not {type(image).__name__}")
    if size is not None and pil.size != (size, size):
        pil = pil.resize((size, size), Image.BOX if pil.size[0] > size else Image.BILINEAR)
    return np.asarray(pil, dtype=np.uint8)


def _dilate(mask: np.ndarray) -> np.ndarray:
    # 3x3 binary dilation without scipy.
    p = np.pad(mask, 1)
    h, w = mask.shape
    out = np.zeros_like(mask)
    for dr in range(3):
        for dc in range(3):
            out |= p[dr:dr + h, dc:dc + w]
    return out


def _nearest_palette(img: np.ndarray, threshold: float) -> np.ndarray:
    d = np.linalg.norm(img[:, :, None, :] - _OBJ_RGB[None, None], axis=-1)  # (H, W, C)
    label = d.argmin(-1)
    label[d.min(-1) >= threshold] = -1
    return label  # (H, W) palette index or -1


def fit_background(img: np.ndarray, exclude: np.ndarray, tolerance: float) -> np.ndarray:
    """The background as a plane per channel, ``a + b*x + c*y`` (the world's gradients are linear), fitted
    to the pixels outside ``exclude`` with one round of outlier rejection. Returns (H, W, 3) float."""
    h, w = exclude.shape
    yy, xx = np.mgrid[0:h, 0:w]
    basis = np.stack([np.ones((h, w)), (xx + 0.5) / w - 0.5, (yy + 0.5) / h - 0.5], -1)  # (H, W, 3)
    keep = ~exclude
    if keep.sum() < 16:
        return np.broadcast_to(np.median(img.reshape(-1, 3), 0), img.shape).astype(np.float64)
    for _ in range(2):
        coef, *_ = np.linalg.lstsq(basis[keep], img[keep], rcond=None)  # (3 basis, 3 channels)
        plane = basis @ coef
        inliers = keep & (np.linalg.norm(img - plane, axis=-1) < tolerance)
        if inliers.sum() < 16:
            break
        keep = inliers
    return plane


def classify_pixels(img: np.ndarray, background: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Palette index per pixel, or -1 for background: the pixel must lie at least half way from the local
    background to a palette colour (so soft edges split where a renderer's hard edge was) and within
    ``threshold`` of that background-to-colour segment.

    Returns:
        ``(labels, alpha)``: labels (H, W) int; alpha (H, W, C) in [0, 1], each pixel's blend fraction
        towards every palette colour (the coverage a soft edge implies).
    """
    d = _OBJ_RGB[None, None] - background[:, :, None, :]  # (H, W, C, 3) background -> colour
    alpha = np.einsum("hwk,hwck->hwc", img - background, d) / np.maximum((d * d).sum(-1), 1e-6)  # (H, W, C)
    nearest = background[:, :, None, :] + np.clip(alpha, 0.0, 1.0)[..., None] * d
    dist = np.linalg.norm(img[:, :, None, :] - nearest, axis=-1)  # (H, W, C)
    dist[(alpha < 0.5) | (dist >= threshold)] = np.inf
    label = dist.argmin(-1)
    label[~np.isfinite(dist.min(-1))] = -1
    return label, np.clip(alpha, 0.0, 1.0)


def _blur_matrix(n: int, sigma: float) -> np.ndarray:
    if sigma <= 0:
        return np.eye(n)
    i = np.arange(n)
    k = np.exp(-((i[:, None] - i[None, :]) ** 2) / (2 * sigma * sigma))
    return k / k.sum(1, keepdims=True)


def match_component(coverage: np.ndarray, pixels: np.ndarray, side: int) -> tuple[str, str, float, float]:
    """Shape, size and centre of one object from its coverage map.

    The renderer's template of every shape and size, placed at the component's centroid and softened by a
    Gaussian of each width in ``BLUR_SIGMAS`` (sigma 0 = a hard render), is compared with the coverage
    around the component (sum of squared differences); the best fit wins. Blur conserves mass, so the
    fit keeps telling a small circle (50 px) from a medium diamond (72 px) when edges are soft.

    Args:
        coverage: (H, W) in [0, 1], this object's blend fraction per pixel, zero away from it.
        pixels: (N, 2) ``(row, col)`` of its component (pixels at least half covered).
        side: frame side in pixels.

    Returns:
        ``(shape, size, cx, cy)``, the centre in pixel units.
    """
    h, w = coverage.shape
    pad = int(np.ceil(max(SIZES.values()) * side / 2 + 3 * max(BLUR_SIGMAS))) + 1
    r0, c0 = np.maximum(pixels.min(0) - pad, 0)
    r1, c1 = np.minimum(pixels.max(0) + pad + 1, (h, w))
    window = coverage[r0:r1, c0:c1]
    # The centre is the centroid of the half-covered pixels (exact on renders, and unbiased by a symmetric
    # blur), rounded so float noise cannot flip template pixels whose centres sit exactly on an edge
    # (an object at the frame centre puts whole rows of pixel centres on a diamond's edges).
    my, mx = (round(float(v), 3) for v in pixels.mean(0) + 0.5)
    blurs = [(_blur_matrix(r1 - r0, s), _blur_matrix(c1 - c0, s)) for s in BLUR_SIGMAS]
    best, best_err = ("square", "small", mx, my), np.inf
    for shape in SHAPES:
        for size, frac in SIZES.items():
            extent = frac * side
            # A triangle's centroid sits extent/6 below its bounding-box centre.
            cx, cy = mx, my - (extent / 6 if shape == "triangle" else 0.0)
            obj = SceneObject(shape, "red", size, cx / side, cy / side)
            template = shape_mask(obj, Camera(), side)[r0:r1, c0:c1].astype(np.float64)
            for by, bx in blurs:
                err = float(((by @ template @ bx.T - window) ** 2).sum())
                if err < best_err:
                    best, best_err = (shape, size, cx, cy), err
    return best


def parse_prediction(image: ImageLike, size: int = 64, config: JudgeConfig = JudgeConfig()) -> ParsedFrame:
    """Parse a (possibly imperfect) shapes-world image.

    Steps: fit the background plane outside clear object pixels; classify pixels by their blend between
    background and palette colours; keep 4-connected components of one colour above the speckle size;
    take shape and size from the renderer template of best overlap; count what is left unexplained.

    Args:
        image: PIL image or (H, W, 3) array; resized to ``size`` first if needed.
        size: the benchmark frame side.
        config: parser tolerances.

    Returns:
        A :class:`ParsedFrame`; object positions are frame coordinates (0..1), ids in reading order.
    """
    img = to_rgb_array(image, size).astype(np.float64)
    clear = _nearest_palette(img, config.color_threshold) >= 0
    background = fit_background(img, _dilate(_dilate(clear)), config.background_tolerance)
    labels, alpha = classify_pixels(img, background, config.color_threshold)
    min_area = config.min_area_fraction * (SIZES["small"] * size) ** 2
    kept = np.zeros(labels.shape, dtype=bool)
    found = []
    for ci, color in enumerate(_OBJ_NAMES):
        for comp in connected_components(labels == ci):
            if len(comp) < min_area:
                continue
            mask = np.zeros(labels.shape, dtype=bool)
            mask[comp[:, 0], comp[:, 1]] = True
            support = _dilate(_dilate(_dilate(mask)))  # the component and its soft rim
            shape, sz, cx, cy = match_component(np.where(support, alpha[..., ci], 0.0), comp, size)
            kept |= mask
            found.append((cy / size, cx / size, shape, color, sz))
    found.sort(key=lambda f: (int(f[0] * 3), f[1]))
    objects = tuple(SceneObject(s, c, z, x, y, id=i) for i, (y, x, s, c, z) in enumerate(found))
    # The gradients are anchored at the frame centre, where the background shows its palette colour.
    centre = background[size // 2 - 1: size // 2 + 1, size // 2 - 1: size // 2 + 1].reshape(-1, 3).mean(0)
    name = _BG_NAMES[int(np.linalg.norm(_BG_RGB - centre, axis=1).argmin())]
    unexplained = np.linalg.norm(img - background, axis=-1) >= config.background_tolerance
    artifacts = unexplained & ~_dilate(kept)
    return ParsedFrame(Scene(objects=objects, background=name), float(artifacts.mean()))


# --- judging -------------------------------------------------------------------------------------------


def object_key(obj: SceneObject) -> ObjectKey:
    """``(color, shape, size, (row, col))``: what the judge compares (identity camera)."""
    return (obj.color, obj.shape, obj.size, cell_of(obj.x, obj.y))


def describe_key(key: ObjectKey) -> str:
    """``"small red circle at top left"``."""
    color, shape, size, (row, col) = key
    return f"{size} {color} {shape} at {region_name((col + 0.5) / 3, (row + 0.5) / 3)}"


def _describe_all(keys: list[ObjectKey]) -> str:
    return ", ".join(describe_key(k) for k in sorted(keys)) if keys else "nothing"


def target_identities(changes: list[Change]) -> set[tuple[str, str]]:
    """Colour + shape of the edited objects before and after the edit (a recolour names two)."""
    ids = set()
    for c in changes:
        if c.object is not None:
            ids.add((c.object.color, c.object.shape))
            if c.type == "recolor":
                ids.add((c.params["color"], c.object.shape))
    return ids


def judge_turn(prediction: ImageLike | ParsedFrame | None, source: Scene, expected: Scene, changes: list[Change],
               config: JudgeConfig = JudgeConfig(), size: int = 64) -> TurnVerdict:
    """Score one turn: did the prediction apply ``changes`` to ``source`` and nothing else?

    Args:
        prediction: the predicted image (or an already parsed frame); ``None`` = no output (fails).
        source: the expected scene before the turn (identity camera).
        expected: the expected scene after the turn.
        changes: the instructed changes (``diff_scenes(source, expected)``).
        config: tolerances.
        size: the benchmark frame side (predictions are resized to it).

    Returns:
        A :class:`TurnVerdict`.
    """
    category = category_of(changes)
    if prediction is None:
        return TurnVerdict(category, False, False, 0.0, ("no-image: no prediction for this turn",))
    parsed = prediction if isinstance(prediction, ParsedFrame) else parse_prediction(prediction, size, config)
    ids = target_identities(changes)
    # Objects of the edited identity, or anything in a cell the edited object occupies before or after the
    # edit (no other object can be there), belong to prompt-following: a recolour to the wrong colour
    # is a failed instruction, not an extra object.
    cells = {cell_of(o.x, o.y) for o in source.objects + expected.objects if (o.color, o.shape) in ids}

    def is_target(o: SceneObject) -> bool:
        return (o.color, o.shape) in ids or cell_of(o.x, o.y) in cells

    got_t = Counter(object_key(o) for o in parsed.scene.objects if is_target(o))
    want_t = Counter(object_key(o) for o in expected.objects if is_target(o))
    got_o = Counter(object_key(o) for o in parsed.scene.objects if not is_target(o))
    want_o = Counter(object_key(o) for o in expected.objects if not is_target(o))
    bg_instructed = any(c.type == "background" for c in changes)
    bg_ok = parsed.scene.background == expected.background
    reasons = []

    pf = True
    if ids and got_t != want_t:
        pf = False
        reasons.append(f"target: expected {_describe_all(list(want_t.elements()))}; "
                       f"found {_describe_all(list(got_t.elements()))}")
    if bg_instructed and not bg_ok:
        pf = False
        reasons.append(f"target: background {parsed.scene.background}, expected {expected.background}")

    missing, extra = want_o - got_o, got_o - want_o
    if missing:
        reasons.append(f"missing: {_describe_all(list(missing.elements()))}")
    if extra:
        reasons.append(f"extra: {_describe_all(list(extra.elements()))}")
    if not bg_instructed and not bg_ok:
        reasons.append(f"background: {parsed.scene.background}, expected {expected.background}")
    artifacts_ok = parsed.artifact_fraction <= config.max_artifact_fraction
    if not artifacts_ok:
        reasons.append(f"artifacts: {parsed.artifact_fraction:.1%} of the pixels are neither background nor object")
    consistent = not missing and not extra and (bg_instructed or bg_ok) and artifacts_ok

    kept = sum((want_o & got_o).values()) + (0 if bg_instructed else int(bg_ok))
    total = sum(want_o.values()) + sum(extra.values()) + (0 if bg_instructed else 1)
    score = kept / total if total else 1.0
    return TurnVerdict(category, pf, consistent, score, tuple(reasons), parsed.artifact_fraction)


def mask_iou(prediction: ImageLike, truth: np.ndarray) -> float:
    """IoU of a predicted region mask (white = region; resized to ``truth`` and thresholded at half) with
    a (H, W) bool ground truth. Two empty masks agree (1.0)."""
    h, w = truth.shape
    if isinstance(prediction, np.ndarray) and prediction.dtype == bool:
        pil = Image.fromarray(prediction.astype(np.uint8) * 255)
    elif isinstance(prediction, np.ndarray):
        arr = prediction
        if arr.dtype != np.uint8:  # floats in [0, 1]
            arr = np.clip(np.rint(arr * 255), 0, 255).astype(np.uint8)
        pil = Image.fromarray(arr)
    else:
        pil = prediction
    pil = pil.convert("L")
    if pil.size != (w, h):
        pil = pil.resize((w, h), Image.BILINEAR)
    pred = np.asarray(pil) >= 128
    union = np.count_nonzero(pred | truth)
    return float(np.count_nonzero(pred & truth) / union) if union else 1.0
