"""Degraded history frames: stand-ins for the model's own earlier outputs during training.

At inference every turn after the first edits the model's previous output, which is slightly blurred and
speckled; in training the history is the video's exact frames. A model trained only on exact frames met
its own turn-1 outputs as something new and failed most second turns (``vincie-shapes``: turn-1 success
0.38, turn 2 0.04, and the same without the history: docs/training.md). Here a history image may be
replaced, as context only, by a copy blurred and noised at random strength; the targets stay exact, so
the model learns to edit such inputs and return clean frames. (Diffusion models of video do the same with
noise on their conditioning frames.)

Example:
    >>> import torch
    >>> x = torch.zeros(2, 3, 8, 8); x[:, :, 3:5, 3:5] = 1
    >>> y = degrade_pixels(x, torch.tensor([0.0, 1.0]), torch.tensor([0.0, 0.0]), torch.Generator())
    >>> bool(torch.equal(y[0], x[0])), bool(y[1].max() < 1)
    (True, True)
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def gaussian_blur(images: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) blurred with a per-image Gaussian of ``sigma`` (N,) pixels (0 = unchanged), edges
    replicated. Separable, radius 3 sigma (at most 4 px)."""
    n, c, h, w = images.shape
    radius = max(1, min(4, math.ceil(3 * float(sigma.max()))))
    x = torch.arange(-radius, radius + 1, dtype=images.dtype, device=images.device)
    s = sigma.to(images).clamp_min(1e-6)[:, None]
    kernel = torch.exp(-0.5 * (x[None] / s) ** 2)
    kernel = torch.where(sigma.to(images)[:, None] > 0, kernel, (x[None] == 0).to(images))
    kernel = kernel / kernel.sum(-1, keepdim=True)  # (N, K)
    out = images
    for dim in (3, 2):  # width, then height; one grouped convolution per image
        padded = F.pad(out, (radius, radius, 0, 0) if dim == 3 else (0, 0, radius, radius), mode="replicate")
        weight = kernel.repeat_interleave(c, 0)[:, None]  # (N*C, 1, K)
        weight = weight[:, :, None, :] if dim == 3 else weight[:, :, :, None]
        out = F.conv2d(padded.reshape(1, n * c, *padded.shape[2:]), weight, groups=n * c).reshape(n, c, h, w)
    return out


def degrade_pixels(images: torch.Tensor, blur: torch.Tensor, noise: torch.Tensor,
                   generator: torch.Generator) -> torch.Tensor:
    """(N, 3, H, W) images in [-1, 1] → blurred by ``blur`` (N,) px, plus Gaussian noise of std ``noise`` (N,)."""
    out = gaussian_blur(images, blur)
    eps = torch.randn(images.shape, generator=generator).to(images)
    return (out + noise.to(images)[:, None, None, None] * eps).clamp(-1, 1)
