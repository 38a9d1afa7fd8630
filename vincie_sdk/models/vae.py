"""The causal 3-D KL autoencoder of VINCIE (official ``VideoAutoencoderKLWrapper``, s8_c16_t4).

A diffusers-``AutoencoderKL``-shaped VAE whose 2-D convolutions are inflated to *causal* 3-D ones:
spatial x8, temporal x4 with ``T_lat = 1 + (T - 1) // 4``. Module and parameter names mirror the
official state dict exactly, so ``load_state_dict(strict=True)`` accepts the released ``vae.pth``.

Single images (1-frame clips) are the inference hot path. For one frame every causal conv only ever
sees copies of that frame, so it equals a 2-D conv with the temporally summed kernel; the layers below
take that shortcut automatically (``CausalVAE.set_single_frame_fast_path`` turns it off for tests).
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vincie_sdk.config import VAEConfig

__all__ = ["CausalVAE", "convert_official_state_dict", "vae_config_from_official"]

_EPS = 1e-6  # every GroupNorm of the official VAE
_LOGVAR_RANGE = (-30.0, 20.0)  # diffusers DiagonalGaussianDistribution clamp


def _frame_group_norm(norm: nn.GroupNorm, x: Tensor) -> Tensor:
    """GroupNorm with statistics per frame, as the official ``causal_norm_wrapper`` does."""
    b, c, t, h, w = x.shape
    if t == 1:
        return norm(x.squeeze(2)).unsqueeze(2)
    y = norm(x.transpose(1, 2).reshape(b * t, c, h, w))  # (B*T, C, H, W)
    return y.reshape(b, t, c, h, w).transpose(1, 2)


class CausalConv3d(nn.Conv3d):
    """A Conv3d whose temporal zero padding is replaced by ``2 * pad_t`` copies of the first frame.

    Spatial padding stays ordinary zero padding. Input/output (B, C, T, H, W).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | tuple[int, int, int],
                 stride: int | tuple[int, int, int] = 1, padding: int | tuple[int, int, int] = 0) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=padding)
        self.head_frames = 2 * self.padding[0]
        self.padding = (0, *self.padding[1:])
        self.fast_single_frame = True

    def forward(self, x: Tensor) -> Tensor:  # (B, C, T, H, W)
        # With one frame the padded clip is 1 + head_frames copies of it; if the kernel spans exactly
        # that, there is a single output frame and it sees every temporal tap applied to the same frame.
        if self.fast_single_frame and x.shape[2] == 1 and self.kernel_size[0] == self.head_frames + 1:
            y = F.conv2d(x.squeeze(2), self.weight.sum(2), self.bias, self.stride[1:], self.padding[1:])
            return y.unsqueeze(2)
        if self.head_frames:
            head = x[:, :, :1].expand(-1, -1, self.head_frames, -1, -1)
            x = torch.cat((head, x), dim=2)
        return super().forward(x)


class ResnetBlock(nn.Module):
    """GroupNorm-SiLU-conv twice plus a (1x1x1 conv) shortcut; diffusers ``ResnetBlock2D`` inflated."""

    def __init__(self, in_channels: int, out_channels: int, groups: int) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_channels, eps=_EPS)
        self.conv1 = CausalConv3d(in_channels, out_channels, 3, padding=1)
        self.norm2 = nn.GroupNorm(groups, out_channels, eps=_EPS)
        self.conv2 = CausalConv3d(out_channels, out_channels, 3, padding=1)
        self.conv_shortcut = CausalConv3d(in_channels, out_channels, 1) if in_channels != out_channels else None

    def forward(self, x: Tensor) -> Tensor:  # (B, C, T, H, W)
        h = self.conv1(F.silu(_frame_group_norm(self.norm1, x)))
        h = self.conv2(F.silu(_frame_group_norm(self.norm2, h)))
        if self.conv_shortcut is not None:
            x = self.conv_shortcut(x)
        return x + h


class SpatialAttention(nn.Module):
    """Single-head self-attention over the pixels of each frame, with a pre-GroupNorm and a residual."""

    def __init__(self, channels: int, groups: int) -> None:
        super().__init__()
        self.group_norm = nn.GroupNorm(groups, channels, eps=_EPS)
        self.to_q = nn.Linear(channels, channels)
        self.to_k = nn.Linear(channels, channels)
        self.to_v = nn.Linear(channels, channels)
        self.to_out = nn.ModuleList([nn.Linear(channels, channels)])  # ".0" in the official key names

    def forward(self, x: Tensor) -> Tensor:  # (B, C, T, H, W)
        b, c, t, h, w = x.shape
        frames = x.transpose(1, 2).reshape(b * t, c, h * w)  # (B*T, C, HW)
        tokens = self.group_norm(frames).transpose(1, 2)  # (B*T, HW, C)
        q, k, v = (proj(tokens).unsqueeze(1) for proj in (self.to_q, self.to_k, self.to_v))
        out = F.scaled_dot_product_attention(q, k, v).squeeze(1)  # scale 1/sqrt(C): one head of width C
        out = self.to_out[0](out).transpose(1, 2)  # (B*T, C, HW)
        return x + out.reshape(b, t, c, h, w).transpose(1, 2)


class MidBlock(nn.Module):
    """resnet -> (attention) -> resnet at the lowest resolution."""

    def __init__(self, channels: int, groups: int, attention: bool) -> None:
        super().__init__()
        self.resnets = nn.ModuleList([ResnetBlock(channels, channels, groups) for _ in range(2)])
        # Without attention the official model holds ModuleList([None]): no keys at all.
        self.attentions = nn.ModuleList([SpatialAttention(channels, groups)] if attention else [])

    def forward(self, x: Tensor) -> Tensor:
        x = self.resnets[0](x)
        for attn in self.attentions:
            x = attn(x)
        return self.resnets[1](x)


class Downsample(nn.Module):
    """Stride-2 conv after a right/bottom zero pad; causal stride 2 in time too when ``temporal``."""

    def __init__(self, channels: int, temporal: bool) -> None:
        super().__init__()
        kt = 3 if temporal else 1
        self.conv = CausalConv3d(channels, channels, (kt, 3, 3), stride=(2 if temporal else 1, 2, 2),
                                 padding=(1 if temporal else 0, 0, 0))

    def forward(self, x: Tensor) -> Tensor:  # (B, C, T, H, W) -> (B, C, T', H/2, W/2)
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    """MAGVIT-v2 learned pixel shuffle: 1x1x1 conv to C*r channels, shuffle, then a causal 3x3x3 conv.

    Channel index of the shuffle is ``((x * 2 + y) * z_ratio + z) * C + c`` (rows x, cols y, frames z).
    With temporal upsampling the duplicated head frame is dropped, so T -> 2T - 1.
    """

    def __init__(self, channels: int, temporal: bool) -> None:
        super().__init__()
        self.z_ratio = 2 if temporal else 1
        self.upscale_conv = nn.Conv3d(channels, channels * 4 * self.z_ratio, kernel_size=1)
        self.conv = CausalConv3d(channels, channels, 3, padding=1)
        self.fast_single_frame = True
        # Identity init (each sub-pixel copies its source: nearest upsampling), as the official code,
        # so that a model trained from scratch starts from a sane upsampler.
        with torch.no_grad():
            eye = torch.eye(channels, device=self.upscale_conv.weight.device)
            self.upscale_conv.weight.copy_(eye.repeat(4 * self.z_ratio, 1).view_as(self.upscale_conv.weight))
            self.upscale_conv.bias.zero_()

    def forward(self, x: Tensor) -> Tensor:  # (B, C, T, H, W) -> (B, C, T', 2H, 2W)
        b, c, t, h, w = x.shape
        z = self.z_ratio
        if self.fast_single_frame and t == 1:
            # Only the z = 0 sub-frame survives the head removal: compute just those channels.
            weight = self.upscale_conv.weight.view(4, z, c, c)[:, 0].reshape(4 * c, c, 1, 1)
            bias = self.upscale_conv.bias.view(4, z, c)[:, 0].reshape(4 * c)
            y = F.conv2d(x.squeeze(2), weight, bias)  # (B, 4C, H, W)
            y = y.view(b, 2, 2, c, h, w).permute(0, 3, 4, 1, 5, 2).reshape(b, c, 1, 2 * h, 2 * w)
        else:
            y = self.upscale_conv(x).view(b, 2, 2, z, c, t, h, w)
            y = y.permute(0, 4, 5, 3, 6, 1, 7, 2).reshape(b, c, t * z, 2 * h, 2 * w)
            if z == 2:
                y = torch.cat((y[:, :, :1], y[:, :, 2:]), dim=2)
        return self.conv(y)


class Stage(nn.Module):
    """Resnets then an optional resampler, kept under ``downsamplers`` / ``upsamplers`` as officially."""

    def __init__(self, in_ch: int, out_ch: int, layers: int, groups: int, resampler: nn.Module | None,
                 attr: str) -> None:
        super().__init__()
        self.resnets = nn.ModuleList(
            [ResnetBlock(in_ch if i == 0 else out_ch, out_ch, groups) for i in range(layers)])
        self._resampler_attr = attr
        setattr(self, attr, nn.ModuleList([resampler]) if resampler is not None else None)

    def forward(self, x: Tensor) -> Tensor:  # (B, C, T, H, W)
        for resnet in self.resnets:
            x = resnet(x)
        for resample in getattr(self, self._resampler_attr) or ():
            x = resample(x)
        return x


class Encoder(nn.Module):
    """(B, 3, T, H, W) -> (B, 2 * C_lat, T_lat, H/8, W/8): mean and logvar stacked on channels."""

    def __init__(self, cfg: VAEConfig) -> None:
        super().__init__()
        ch, groups, n = cfg.block_out_channels, cfg.norm_num_groups, len(cfg.block_out_channels)
        self.conv_in = CausalConv3d(cfg.in_channels, ch[0], 3, padding=1)
        # Temporal downsampling happens in the last `temporal_scale_num` downsampling blocks.
        self.down_blocks = nn.ModuleList([
            Stage(ch[max(i - 1, 0)], ch[i], cfg.layers_per_block, groups,
                  Downsample(ch[i], temporal=i >= n - 1 - cfg.temporal_scale_num) if i < n - 1 else None,
                  "downsamplers")
            for i in range(n)])
        self.mid_block = MidBlock(ch[-1], groups, cfg.mid_attention)
        self.conv_norm_out = nn.GroupNorm(groups, ch[-1], eps=_EPS)
        self.conv_out = CausalConv3d(ch[-1], 2 * cfg.latent_channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv_in(x)
        for block in self.down_blocks:
            x = block(x)
        x = self.mid_block(x)
        return self.conv_out(F.silu(_frame_group_norm(self.conv_norm_out, x)))


class Decoder(nn.Module):
    """(B, C_lat, T_lat, h, w) -> (B, 3, 1 + 4 (T_lat - 1), 8h, 8w)."""

    def __init__(self, cfg: VAEConfig) -> None:
        super().__init__()
        ch, groups, n = cfg.block_out_channels[::-1], cfg.norm_num_groups, len(cfg.block_out_channels)
        self.conv_in = CausalConv3d(cfg.latent_channels, ch[0], 3, padding=1)
        self.mid_block = MidBlock(ch[0], groups, cfg.mid_attention)
        # Temporal upsampling happens in the first `temporal_scale_num` blocks (mirror of the encoder).
        self.up_blocks = nn.ModuleList([
            Stage(ch[max(i - 1, 0)], ch[i], cfg.layers_per_block + 1, groups,
                  Upsample(ch[i], temporal=i < cfg.temporal_scale_num) if i < n - 1 else None, "upsamplers")
            for i in range(n)])
        self.conv_norm_out = nn.GroupNorm(groups, ch[-1], eps=_EPS)
        self.conv_out = CausalConv3d(ch[-1], cfg.out_channels, 3, padding=1)

    def forward(self, z: Tensor) -> Tensor:
        x = self.mid_block(self.conv_in(z))
        for block in self.up_blocks:
            x = block(x)
        return self.conv_out(F.silu(_frame_group_norm(self.conv_norm_out, x)))


def _check_config(cfg: VAEConfig) -> None:
    n = len(cfg.block_out_channels)
    problems = []
    if n < 1:
        problems.append("block_out_channels is empty")
    if cfg.spatial_downsample_factor != 2 ** (n - 1):
        problems.append(f"spatial_downsample_factor={cfg.spatial_downsample_factor} but {n} blocks give "
                        f"{2 ** (n - 1)}")
    if not 0 <= cfg.temporal_scale_num <= n - 1:
        problems.append(f"temporal_scale_num={cfg.temporal_scale_num} must be within [0, {n - 1}]")
    if cfg.temporal_downsample_factor != 2 ** cfg.temporal_scale_num:
        problems.append(f"temporal_downsample_factor={cfg.temporal_downsample_factor} but temporal_scale_num="
                        f"{cfg.temporal_scale_num} gives {2 ** cfg.temporal_scale_num}")
    bad = [c for c in cfg.block_out_channels if c % cfg.norm_num_groups]
    if bad:
        problems.append(f"channels {bad} are not divisible by norm_num_groups={cfg.norm_num_groups}")
    if problems:
        raise ValueError("VAEConfig: " + "; ".join(problems))


class CausalVAE(nn.Module):
    """VINCIE's causal 3-D KL-VAE with the official parameter layout.

    Pixels are channels-first in [-1, 1]. "DiT space" latents are channels-last and normalised:
    ``(z - shifting_factor) * scaling_factor``.

    Args:
        config: the architecture and latent normalisation (``VAEConfig()`` is the VINCIE-3B VAE).

    Shapes (spatial factor 8, temporal factor 4 for the official config):
        ``encode_posterior``: (B, 3, T, H, W) -> mean, logvar (B, C_lat, 1 + (T-1)//4, H/8, W/8)
        ``decode``:           (B, C_lat, T_lat, h, w) -> (B, 3, 1 + 4 (T_lat-1), 8h, 8w)
        ``encode_images``:    (N, 3, H, W) -> (N, H/8, W/8, C_lat)
        ``decode_images``:    (N, h, w, C_lat) -> (N, 3, 8h, 8w)
    """

    def __init__(self, config: VAEConfig) -> None:
        super().__init__()
        _check_config(config)
        self.config = config
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)

    @property
    def dtype(self) -> torch.dtype:
        return self.encoder.conv_in.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.encoder.conv_in.weight.device

    def set_single_frame_fast_path(self, enabled: bool) -> None:
        """Enable (default) or disable the exact 2-D shortcut for 1-frame inputs."""
        for module in self.modules():
            if isinstance(module, (CausalConv3d, Upsample)):
                module.fast_single_frame = enabled

    def _check_pixels(self, x: Tensor, ndim: int, what: str) -> None:
        f = self.config.spatial_downsample_factor
        if x.ndim != ndim or x.shape[1] != self.config.in_channels:
            raise ValueError(f"{what} expects a {ndim}-D tensor with {self.config.in_channels} channels on dim 1, "
                             f"got shape {tuple(x.shape)}")
        h, w = x.shape[-2:]
        if h % f or w % f:
            raise ValueError(f"{what}: height and width must be multiples of {f}, got shape {tuple(x.shape)} "
                             f"(H={h}, W={w})")

    def encode_posterior(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Encode a clip into the diagonal Gaussian posterior.

        Args:
            x: (B, 3, T, H, W) pixels in [-1, 1]; H and W multiples of 8.
        Returns:
            ``(mean, logvar)``, each (B, C_lat, 1 + (T-1)//4, H/8, W/8); logvar clamped to [-30, 20].
        """
        self._check_pixels(x, 5, "encode_posterior")
        mean, logvar = self.encoder(x).chunk(2, dim=1)
        return mean, logvar.clamp(*_LOGVAR_RANGE)

    def decode(self, z: Tensor) -> Tensor:
        """Decode raw (unscaled) latents.

        Args:
            z: (B, C_lat, T_lat, h, w).
        Returns:
            (B, 3, 1 + 4 (T_lat - 1), 8h, 8w) pixels, unclamped.
        """
        if z.ndim != 5 or z.shape[1] != self.config.latent_channels:
            raise ValueError(f"decode expects (B, {self.config.latent_channels}, T, h, w), got {tuple(z.shape)}")
        return self.decoder(z)

    def forward(self, x: Tensor, generator: torch.Generator | None = None,
                sample: bool = True) -> tuple[Tensor, Tensor, Tensor]:
        """Reconstruct a clip (for training).

        Args:
            x: (B, 3, T, H, W) pixels in [-1, 1].
            generator: RNG for the posterior sample.
            sample: decode a posterior sample (True) or the mean.
        Returns:
            ``(reconstruction, mean, logvar)``: (B, 3, T', H, W) with T' = 1 + 4 ((T-1)//4), posterior
            tensors as in :meth:`encode_posterior`.
        """
        mean, logvar = self.encode_posterior(x)
        z = self._sample(mean, logvar, generator) if sample else mean
        return self.decode(z), mean, logvar

    @staticmethod
    def _sample(mean: Tensor, logvar: Tensor, generator: torch.Generator | None) -> Tensor:
        # Draw on the generator's device (a CPU generator cannot fill a CUDA tensor), then move.
        noise_device = generator.device if generator is not None else mean.device
        noise = torch.randn(mean.shape, generator=generator, device=noise_device, dtype=mean.dtype)
        return mean + torch.exp(0.5 * logvar) * noise.to(mean.device)

    def encode_images(self, images: Tensor, generator: torch.Generator | None = None,
                      sample: bool | None = None) -> Tensor:
        """Encode single images, each as its own 1-frame clip, into DiT-space latents.

        Args:
            images: (N, 3, H, W) in [-1, 1]; H and W multiples of 8. Cast to the model's dtype/device.
            generator: RNG for the posterior noise (default: the global RNG).
            sample: posterior sample (True) or mean (False); ``None`` uses ``config.use_sample``.
        Returns:
            (N, H/8, W/8, C_lat) ``(z - shifting_factor) * scaling_factor`` in the model's dtype.
        """
        self._check_pixels(images, 4, "encode_images")
        x = images.to(device=self.device, dtype=self.dtype).unsqueeze(2)  # (N, 3, 1, H, W)
        mean, logvar = self.encode_posterior(x)
        use_sample = self.config.use_sample if sample is None else sample
        z = self._sample(mean, logvar, generator) if use_sample else mean
        z = (z - self.config.shifting_factor) * self.config.scaling_factor
        return z.squeeze(2).permute(0, 2, 3, 1).contiguous()

    def decode_images(self, latents: Tensor) -> Tensor:
        """Decode DiT-space latents, each as its own 1-frame clip.

        Args:
            latents: (N, h, w, C_lat) channels-last, scaled as :meth:`encode_images` returns them.
        Returns:
            (N, 3, 8h, 8w) pixels (nominally [-1, 1], not clamped) in the model's dtype.
        """
        if latents.ndim != 4 or latents.shape[-1] != self.config.latent_channels:
            raise ValueError(f"decode_images expects (N, h, w, {self.config.latent_channels}) channels-last "
                             f"latents, got {tuple(latents.shape)}")
        z = latents.to(device=self.device, dtype=self.dtype)
        z = z / self.config.scaling_factor + self.config.shifting_factor  # (N, h, w, C_lat)
        return self.decode(z.permute(0, 3, 1, 2).unsqueeze(2)).squeeze(2)


# Constructor arguments of the official VideoAutoencoderKL(Wrapper) that have no effect on a
# 3-D checkpoint's layout or on the math used here: slicing/memory only matter for long clips,
# inflation only for loading 2-D weights, diffusers' scaling_factor (0.18215) is not the one
# VINCIE uses (0.9152, from generate.yaml's `vae` section, not from the model config).
_IGNORED_OFFICIAL_KEYS = {"__object__", "slicing_sample_min_size", "inflation_mode", "scaling_factor",
                          "sample_size", "force_upcast", "gradient_checkpoint"}
# Official constructor defaults, used when a meta.json omits a key.
_OFFICIAL_DEFAULTS: dict[str, Any] = {
    "in_channels": 3, "out_channels": 3, "block_out_channels": (64,), "layers_per_block": 1, "act_fn": "silu",
    "latent_channels": 4, "norm_num_groups": 32, "attention": True, "temporal_scale_num": 2,
    "use_quant_conv": True, "use_post_quant_conv": True,
}


def vae_config_from_official(meta_config: dict[str, Any], **overrides: Any) -> VAEConfig:
    """Map an official VAE constructor config (YAML / fixture ``meta.json["config"]``) to a VAEConfig.

    Args:
        meta_config: the official keyword arguments of ``VideoAutoencoderKLWrapper``.
        **overrides: VAEConfig fields not part of the model config, e.g. ``scaling_factor``,
            ``shifting_factor``, ``use_sample`` (they default to VINCIE's generate.yaml values).
    Returns:
        The equivalent :class:`VAEConfig`.
    Raises:
        ValueError: for keys or values this re-implementation does not support.
    """
    known = set(_OFFICIAL_DEFAULTS) | _IGNORED_OFFICIAL_KEYS | {
        "down_block_types", "up_block_types", "spatial_downsample_factor", "temporal_downsample_factor"}
    unknown = sorted(set(meta_config) - known)
    if unknown:
        raise ValueError(f"official VAE config: unsupported keys {unknown}")
    cfg = {**_OFFICIAL_DEFAULTS, **meta_config}
    missing = [k for k in ("spatial_downsample_factor", "temporal_downsample_factor") if k not in cfg]
    if missing:
        raise ValueError(f"official VAE config: missing required keys {missing}")
    n = len(cfg["block_out_channels"])
    if cfg["act_fn"] not in ("silu", "swish"):
        raise ValueError(f"official VAE config: act_fn={cfg['act_fn']!r} is not supported (only silu)")
    if cfg["use_quant_conv"] or cfg["use_post_quant_conv"]:
        raise ValueError("official VAE config: quant_conv / post_quant_conv are not supported (VINCIE has none)")
    for key, kind in (("down_block_types", "DownEncoderBlock3D"), ("up_block_types", "UpDecoderBlock3D")):
        types = list(cfg.get(key, [kind] * n))
        if types != [kind] * n:
            raise ValueError(f"official VAE config: {key} must be {n} x {kind!r}, got {types}")
    base = VAEConfig(
        block_out_channels=tuple(int(c) for c in cfg["block_out_channels"]),
        layers_per_block=int(cfg["layers_per_block"]),
        latent_channels=int(cfg["latent_channels"]),
        norm_num_groups=int(cfg["norm_num_groups"]),
        in_channels=int(cfg["in_channels"]),
        out_channels=int(cfg["out_channels"]),
        temporal_scale_num=int(cfg["temporal_scale_num"]),
        spatial_downsample_factor=int(cfg["spatial_downsample_factor"]),
        temporal_downsample_factor=int(cfg["temporal_downsample_factor"]),
        mid_attention=bool(cfg["attention"]),
    )
    return dataclasses.replace(base, **overrides)


_DEPRECATED_ATTN = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}
_DEPRECATED_ATTN_KEY = re.compile(r"^(.*\.attentions\.\d+\.)(query|key|value|proj_attn)\.(weight|bias)$")


def convert_official_state_dict(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """Rename pre-0.15 diffusers attention keys (``query/key/value/proj_attn``) to the current names.

    The official loader does this before ``load_state_dict`` (diffusers'
    ``_convert_deprecated_attention_blocks``); checkpoints already in the new layout pass unchanged.

    Args:
        state_dict: an official VAE state dict.
    Returns:
        A new dict (same tensors) whose keys match :class:`CausalVAE`.
    """
    out = {}
    for key, value in state_dict.items():
        m = _DEPRECATED_ATTN_KEY.match(key)
        out[f"{m[1]}{_DEPRECATED_ATTN[m[2]]}.{m[3]}" if m else key] = value
    return out
