"""Which autoencoder a config asks for: the official causal 3-D VAE or the pixel patcher."""

from __future__ import annotations

from torch import nn

from ..config import VAEConfig


def build_autoencoder(config: VAEConfig) -> nn.Module:
    """``kind="causal3d"`` → CausalVAE (official layout); ``kind="pixel"`` → PixelPatcher (no weights)."""
    if config.kind == "pixel":
        from .patcher import PixelPatcher

        return PixelPatcher(config)
    if config.kind == "causal3d":
        from .vae import CausalVAE

        return CausalVAE(config)
    raise ValueError(f"VAEConfig.kind={config.kind!r}; use 'causal3d' or 'pixel'")
