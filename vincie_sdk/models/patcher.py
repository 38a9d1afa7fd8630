"""A parameter-free pixel-space "autoencoder": space-to-depth patches, exactly invertible.

The embedded model works on 64x64 pictures of flat-coloured shapes; folding each 4x4 pixel block
into 48 channels gives the DiT a 16x16 latent grid with nothing lost and nothing to train. It offers
the same image interface as :class:`~vincie_sdk.models.vae.CausalVAE`, so sessions, training and the
nodes do not care which one a model uses.

Example:
    >>> import torch
    >>> from vincie_sdk.config import VAEConfig
    >>> p = PixelPatcher(VAEConfig(kind="pixel", spatial_downsample_factor=4, latent_channels=48))
    >>> x = torch.rand(2, 3, 64, 64) * 2 - 1
    >>> torch.allclose(p.decode_images(p.encode_images(x)), x, atol=1e-6)
    True
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import VAEConfig


class PixelPatcher(nn.Module):
    """(N, 3, H, W) in [-1, 1] ↔ (N, H/f, W/f, 3 f²) "latents", scaled by the config's factors."""

    def __init__(self, config: VAEConfig) -> None:
        super().__init__()
        f = config.spatial_downsample_factor
        if config.latent_channels != config.in_channels * f * f:
            raise ValueError(f"VAEConfig(kind='pixel'): latent_channels must be in_channels x factor^2 = "
                             f"{config.in_channels * f * f}, got {config.latent_channels}")
        self.config = config
        self.factor = f

    @property
    def dtype(self) -> torch.dtype:
        # No weights and no buffers (so it can be built on the meta device and moved anywhere): the
        # rearrangement is exact in any dtype, and float32 keeps callers' inputs as they are.
        return torch.float32

    def _check(self, images: Tensor) -> None:
        if images.ndim != 4 or images.shape[-1] % self.factor or images.shape[-2] % self.factor:
            raise ValueError(f"PixelPatcher: images of shape {tuple(images.shape)} must be (N, C, H, W) with H and W "
                             f"multiples of {self.factor}")

    def encode_images(self, images: Tensor, generator: torch.Generator | None = None, sample: bool | None = None) -> Tensor:
        self._check(images)
        z = F.pixel_unshuffle(images, self.factor).permute(0, 2, 3, 1)  # (N, h, w, 3 f^2)
        return (z - self.config.shifting_factor) * self.config.scaling_factor

    def decode_images(self, latents: Tensor) -> Tensor:
        z = latents / self.config.scaling_factor + self.config.shifting_factor
        return F.pixel_shuffle(z.permute(0, 3, 1, 2), self.factor)
