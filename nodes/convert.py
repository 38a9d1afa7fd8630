"""ComfyUI values ↔ SDK values, and mask geometry. Pure Python (torch, numpy, PIL): no ComfyUI import.

ComfyUI passes images as IMAGE tensors (B, H, W, C) float32 in [0, 1] and masks as MASK tensors
(B, H, W) in [0, 1]; the SDK takes and returns PIL images at a session's working size.

Example:
    >>> import torch
    >>> image = torch.zeros(1, 32, 48, 3)
    >>> [p.size for p in image_to_pils(image)]
    [(48, 32)]
    >>> fit_mask(torch.ones(1, 8, 8), (16, 16)).shape
    (16, 16)
"""

from __future__ import annotations

import logging
import math

import numpy as np
import torch
from PIL import Image

log = logging.getLogger(__name__)

FLIPS = ("none", "horizontal", "vertical", "both")


# ---------------------------------------------------------------------------------------------- images
def image_to_pils(image: torch.Tensor, what: str = "image") -> list[Image.Image]:
    """IMAGE (B, H, W, C) in [0, 1] → B RGB PIL images (an alpha channel is dropped)."""
    if not isinstance(image, torch.Tensor) or image.ndim != 4 or image.shape[-1] not in (1, 3, 4):
        shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise ValueError(f"{what} must be a ComfyUI IMAGE of shape (batch, height, width, 3), got {shape}")
    if image.shape[0] == 0 or image.shape[1] == 0 or image.shape[2] == 0:
        raise ValueError(f"{what} is empty: shape {tuple(image.shape)}")
    pixels = (image[..., :3].detach().float().cpu().clamp(0, 1) * 255 + 0.5).to(torch.uint8)
    if pixels.shape[-1] == 1:
        pixels = pixels.expand(-1, -1, -1, 3)
    return [Image.fromarray(p.numpy()) for p in pixels]


def check_working_size(image: Image.Image, resolution: int, what: str, multiple: int = 16) -> None:
    """Fail early, with the SDK's clear message, for an image that leaves no ``multiple``-pixel block at
    ``resolution`` (an extreme aspect ratio); the session would otherwise fail deep inside the VAE."""
    from vincie_sdk.image import working_size

    try:
        working_size(image.size, resolution, multiple)
    except ValueError as e:
        raise ValueError(f"{what}: {e}") from None


def pils_to_image(pils: list[Image.Image] | Image.Image, size: tuple[int, int] | None = None) -> torch.Tensor:
    """PIL images → IMAGE (B, H, W, 3); with ``size`` (W, H) every image is resized (bicubic) to it.

    Images of different sizes need ``size``: a ComfyUI batch has one size.
    """
    pils = [pils] if isinstance(pils, Image.Image) else list(pils)
    if not pils:
        raise ValueError("no images to return")
    size = size or pils[0].size
    arrays = []
    for p in pils:
        p = p.convert("RGB")
        if p.size != size:
            p = p.resize(size, Image.BICUBIC)
        arrays.append(np.asarray(p, dtype=np.float32) / 255.0)
    return torch.from_numpy(np.stack(arrays))


def session_images(session) -> torch.Tensor:
    """All image frames of a session as one IMAGE batch at its working size.

    Inputs are kept at their original size in a session; they are shown as the model sees them
    (the SDK's resize and centre crop), generated frames as they are.
    """
    from vincie_sdk.image import preprocess, to_pil

    first = session.frames[0].image.size
    frames = []
    for img in session.images:
        if img.size != session.size:
            img = to_pil(preprocess([img if img.size == first else img.resize(first, Image.BICUBIC)],
                                    session.resolution, session.model.config.session.size_multiple)[0])
        frames.append(img)
    return pils_to_image(frames, session.size)


# ---------------------------------------------------------------------------------------------- masks
def mask_to_array(mask: torch.Tensor, what: str = "mask") -> np.ndarray:
    """MASK (B, H, W) or (H, W) → (H, W) float32 in [0, 1] (the first mask of a batch, with a note)."""
    if not isinstance(mask, torch.Tensor) or mask.ndim not in (2, 3) or 0 in mask.shape:
        shape = tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise ValueError(f"{what} must be a ComfyUI MASK of shape (batch, height, width), got {shape}")
    if mask.ndim == 3:
        if mask.shape[0] > 1:
            log.warning("%s is a batch of %d masks; using the first", what, mask.shape[0])
        mask = mask[0]
    return mask.detach().float().cpu().clamp(0, 1).numpy()


def fit_mask(mask: torch.Tensor | None, size: tuple[int, int], what: str = "mask") -> np.ndarray | None:
    """A MASK for a session of working ``size`` (W, H) → (H, W) float32; None stays None.

    A mask of another size is resized (nearest) with a logged note rather than rejected: ComfyUI's
    LoadImage, for example, gives a 64x64 mask for an image without alpha.
    """
    if mask is None:
        return None
    m = mask_to_array(mask, what)
    w, h = size
    if m.shape != (h, w):
        log.warning("%s is %dx%d, the session works at %dx%d: resized (nearest)", what, m.shape[1], m.shape[0], w, h)
        m = np.asarray(Image.fromarray(m).resize((w, h), Image.NEAREST), dtype=np.float32)
    return m


def pils_to_mask(pils: list[Image.Image] | Image.Image, size: tuple[int, int] | None = None) -> torch.Tensor:
    """Grey PIL masks → MASK (B, H, W) in [0, 1]; with ``size`` (W, H) each is resized (nearest)."""
    pils = [pils] if isinstance(pils, Image.Image) else list(pils)
    size = size or pils[0].size
    arrays = [np.asarray(p.convert("L").resize(size, Image.NEAREST) if p.size != size else p.convert("L"),
                         dtype=np.float32) / 255.0 for p in pils]
    return torch.from_numpy(np.stack(arrays))


def transform_mask(mask: torch.Tensor, *, translate_x: float = 0.0, translate_y: float = 0.0, scale: float = 1.0,
                   rotate: float = 0.0, flip: str = "none") -> torch.Tensor:
    """Move a region mask, as when dragging an object: flip, scale and rotate about the region's centre,
    then translate.

    Args:
        mask: MASK (B, H, W) or (H, W) in [0, 1].
        translate_x, translate_y: shift as a fraction of the width / height (+x right, +y down).
        scale: size factor about the region's centre (> 0).
        rotate: degrees, counter-clockwise as seen on screen, about the region's centre.
        flip: "none", "horizontal", "vertical" or "both", mirrored in place about the region's centre.

    Returns:
        the moved masks (same shape); parts moved outside the frame are cut off. The region's centre
        is the centre of the bounding box of pixels above 0.5 (the image centre for an empty mask).
    """
    if flip not in FLIPS:
        raise ValueError(f"flip={flip!r}; use one of {FLIPS}")
    if not scale > 0:
        raise ValueError(f"scale must be > 0, got {scale}")
    squeeze = mask.ndim == 2
    batch = mask[None] if squeeze else mask
    if batch.ndim != 3:
        raise ValueError(f"mask must be a ComfyUI MASK of shape (batch, height, width), got {tuple(mask.shape)}")
    out = []
    for m in batch.detach().float().cpu().clamp(0, 1).numpy():
        h, w = m.shape
        cx, cy = _region_centre(m)
        forward = (_translation(cx + translate_x * w, cy + translate_y * h) @ _rotation(rotate)
                   @ _scaling(scale, flip) @ _translation(-cx, -cy))
        inv = np.linalg.inv(forward)  # PIL maps each output pixel back to the input
        moved = Image.fromarray(m).transform((w, h), Image.AFFINE, tuple(inv[:2].reshape(-1)), Image.NEAREST)
        out.append(np.asarray(moved, dtype=np.float32))
    result = torch.from_numpy(np.stack(out))
    return result[0] if squeeze else result


def _region_centre(m: np.ndarray) -> tuple[float, float]:
    ys, xs = np.nonzero(m > 0.5)
    if len(xs) == 0:
        return m.shape[1] / 2, m.shape[0] / 2
    # Pixel i covers [i, i + 1): the box centre in continuous coordinates.
    return (xs.min() + xs.max() + 1) / 2, (ys.min() + ys.max() + 1) / 2


def _translation(tx: float, ty: float) -> np.ndarray:
    return np.array([[1, 0, tx], [0, 1, ty], [0, 0, 1]], dtype=np.float64)


def _rotation(degrees: float) -> np.ndarray:
    # y points down on screen, so a counter-clockwise turn on screen is a negative angle in these axes.
    a = math.radians(-degrees)
    c, s = math.cos(a), math.sin(a)
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]], dtype=np.float64)


def _scaling(scale: float, flip: str) -> np.ndarray:
    sx = -scale if flip in ("horizontal", "both") else scale
    sy = -scale if flip in ("vertical", "both") else scale
    return np.diag([sx, sy, 1.0])


# ---------------------------------------------------------------------------------------------- text
def instruction_lines(text: str) -> list[str]:
    """One instruction per non-empty line; lines starting with '#' are comments."""
    lines = [line.strip() for line in (text or "").splitlines()]
    lines = [line for line in lines if line and not line.startswith("#")]
    if not lines:
        raise ValueError("instructions are empty: write one instruction per line")
    return lines
