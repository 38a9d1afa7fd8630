"""Images in and out: loading with clear errors, the official resize/crop rules, tensor conversion.

Official preprocessing (spec 3.3): every image of a session is first resized (PIL bicubic) to the
pixel size of the session's first image; then area-resized so that H*W ~ resolution**2 (bicubic with
antialias, small images are upsampled), centre-cropped to multiples of 16, and mapped to [-1, 1].
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Union

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

ImageInput = Union[str, os.PathLike, Image.Image, np.ndarray, torch.Tensor]

DIVISOR = 16  # VAE factor 8 x patch 2


def load_image(image: ImageInput, *, max_side: int = 4096, what: str = "image") -> Image.Image:
    """Open ``image`` (a path, PIL image, HWC uint8/float array or CHW/HWC tensor in [0, 1]) as RGB.

    Raises FileNotFoundError / ValueError naming the file and the problem for missing, corrupt or
    truncated files and for images with a side above ``max_side``. 16-bit and float images are
    scaled to 8 bits, palette and alpha images are converted (alpha is dropped, as the official code
    does with ``convert("RGB")``).

    Example:
        >>> load_image(Image.new("RGBA", (8, 8))).mode
        'RGB'
    """
    if isinstance(image, (str, os.PathLike)):
        path = Path(image)
        if not path.is_file():
            raise FileNotFoundError(f"{what} file not found: {path}")
        try:
            with Image.open(path) as opened:
                opened.load()
                pil = opened.copy()
        except (UnidentifiedImageError, OSError, SyntaxError) as e:
            raise ValueError(f"cannot read {what} {path}: {e} (corrupt, truncated or not an image)") from None
    elif isinstance(image, Image.Image):
        pil = image
    elif isinstance(image, (np.ndarray, torch.Tensor)):
        pil = _array_to_pil(image, what)
    else:
        raise TypeError(f"{what} must be a path, PIL.Image, numpy array or tensor, not {type(image).__name__}")
    pil = _to_rgb(pil)
    w, h = pil.size
    if w < 1 or h < 1:
        raise ValueError(f"{what} has an empty size {w}x{h}")
    if max(w, h) > max_side:
        raise ValueError(f"{what} {w}x{h} exceeds the {max_side}-pixel side limit; pass max_side= or resize it first")
    return pil


def _array_to_pil(arr: np.ndarray | torch.Tensor, what: str) -> Image.Image:
    a = arr.detach().cpu().float().numpy() if isinstance(arr, torch.Tensor) else np.asarray(arr)
    if a.ndim == 3 and a.shape[0] in (1, 3, 4) and a.shape[-1] not in (1, 3, 4):
        a = a.transpose(1, 2, 0)  # CHW -> HWC
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[-1] not in (3, 4)):
        raise ValueError(f"{what} array has shape {tuple(a.shape)}; expected HxW, HxWx3 or HxWx4")
    if a.dtype == np.uint8:
        return Image.fromarray(a)
    if np.issubdtype(a.dtype, np.floating):
        return Image.fromarray((np.clip(a, 0, 1) * 255 + 0.5).astype(np.uint8))
    if a.dtype == np.uint16:
        return Image.fromarray((a / 257).round().astype(np.uint8))
    raise ValueError(f"{what} array has unsupported dtype {a.dtype}")


def _to_rgb(pil: Image.Image) -> Image.Image:
    if pil.mode in ("I;16", "I;16B", "I;16L", "I"):
        a = np.asarray(pil, dtype=np.float64)
        top = 65535.0 if a.max() > 255 else 255.0
        pil = Image.fromarray((np.clip(a / top, 0, 1) * 255).round().astype(np.uint8))
    elif pil.mode == "F":
        a = np.asarray(pil, dtype=np.float64)
        pil = Image.fromarray((np.clip(a, 0, 1) * 255).round().astype(np.uint8))
    return pil if pil.mode == "RGB" else pil.convert("RGB")


def area_size(height: int, width: int, resolution: int) -> tuple[int, int]:
    """(h, w) with h*w ~ resolution**2 and the aspect ratio kept (Python round, half to even)."""
    s = math.sqrt(resolution * resolution / (height * width))
    return round(height * s), round(width * s)


def working_size(size: tuple[int, int], resolution: int, multiple: int = DIVISOR) -> tuple[int, int]:
    """Pixel (W, H) that a session at ``resolution`` works at, for a first image of PIL ``size``; both sides
    are cropped to a multiple of ``multiple`` (the model's pixels per token side)."""
    h, w = area_size(size[1], size[0], resolution)
    h, w = h - h % multiple, w - w % multiple
    if h < multiple or w < multiple:
        raise ValueError(f"image {size[0]}x{size[1]} at resolution {resolution} leaves no {multiple}x{multiple} "
                         "block; use a larger resolution or a less extreme aspect ratio")
    return w, h


def preprocess(images: list[Image.Image], resolution: int, multiple: int = DIVISOR) -> torch.Tensor:
    """Official transform chain → (T, 3, h, w) float32 in [-1, 1]; all images at the first's size, both
    sides center-cropped to a multiple of ``multiple`` (16 for the official models)."""
    ori = images[0].size
    tensors = []
    for img in images:
        if img.size != ori:
            img = img.resize(ori, Image.BICUBIC)
        x = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1).float() / 255.0
        h, w = area_size(x.shape[1], x.shape[2], resolution)
        # torchvision's tensor resize(BICUBIC, antialias=True) is exactly this call.
        x = F.interpolate(x[None], size=(h, w), mode="bicubic", align_corners=False, antialias=True)[0]
        x = center_crop(x, h - h % multiple, w - w % multiple)
        tensors.append(x * 2 - 1)
    return torch.stack(tensors)


def center_crop(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """torchvision ``center_crop`` offsets: int(round((H - h) / 2))."""
    top = int(round((x.shape[-2] - h) / 2.0))
    left = int(round((x.shape[-1] - w) / 2.0))
    return x[..., top: top + h, left: left + w]


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """(3, H, W) in [-1, 1] → HWC uint8 with the official arithmetic (clip, *0.5, +0.5, *255, truncate).

    The arithmetic runs in the tensor's own dtype: a bfloat16 tensor gives the official bf16 rounding.
    """
    y = x.clamp(-1, 1).mul(0.5).add(0.5).mul(255)
    return y.to(torch.uint8).permute(1, 2, 0).cpu().numpy()


def to_pil(x: torch.Tensor) -> Image.Image:
    return Image.fromarray(to_uint8(x))


def mask_to_tensor(mask: ImageInput, size: tuple[int, int], *, what: str = "mask") -> torch.Tensor:
    """A user mask (path, PIL, array or tensor; white = region) → (3, H, W) in [-1, 1] at PIL ``size``.

    Masks are images like any other to the model: replicated to RGB and VAE-encoded. A mask of a
    different size is resized (nearest) to the session's working size.
    """
    if isinstance(mask, torch.Tensor) and mask.ndim == 2:
        m = mask.detach().float().cpu().numpy()
    elif isinstance(mask, np.ndarray) and mask.ndim == 2:
        m = mask.astype(np.float32) / (255.0 if mask.dtype == np.uint8 else 1.0)
    else:
        m = np.asarray(load_image(mask, what=what).convert("L"), dtype=np.float32) / 255.0
    pil = Image.fromarray((np.clip(m, 0, 1) * 255).round().astype(np.uint8))
    if pil.size != size:
        pil = pil.resize(size, Image.NEAREST)
    t = torch.from_numpy(np.asarray(pil, dtype=np.float32) / 255.0)
    return (t * 2 - 1)[None].expand(3, -1, -1).contiguous()


def tensor_to_mask(x: torch.Tensor) -> np.ndarray:
    """A decoded mask frame (3, H, W) in [-1, 1] → (H, W) float32 in [0, 1] (channel mean)."""
    return ((x.float().mean(0).clamp(-1, 1) + 1) / 2).cpu().numpy()
