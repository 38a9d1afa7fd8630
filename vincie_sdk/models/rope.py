"""Three-axis rotary position embedding ("mmrope3d") and the positions VINCIE gives its tokens.

The official model rotates the first ``3 * 2 * (rope_dim // 3 // 2)`` dims of every attention head:
one block of ``rope_dim // 3`` dims per axis (time, height, width), angles interleaved in pairs
(GPT-J style), the remaining head dims untouched. Text token ``j`` sits at ``(j, j, j)``; the video
token of frame ``f``, row ``r``, column ``c`` sits at ``(l_text + f, r, c)``.
"""

from __future__ import annotations

import torch
from torch import nn


class _Frequencies(nn.Module):
    """Holds the inverse frequencies as the persistent buffer ``freqs`` (official key ``rope.rope.freqs``)."""

    def __init__(self, axis_dim: int, theta: float = 10000.0) -> None:
        super().__init__()
        inv = 1.0 / (theta ** (torch.arange(0, axis_dim, 2)[: axis_dim // 2].float() / axis_dim))
        self.register_buffer("freqs", inv, persistent=True)


class RotaryEmbedding3d(nn.Module):
    """Rotates q/k by 3-D positions. Key layout: ``<prefix>.rope.freqs`` of shape (rope_dim // 3 // 2,)."""

    def __init__(self, rope_dim: int) -> None:
        super().__init__()
        self.axis_dim = rope_dim // 3
        self.rope = _Frequencies(self.axis_dim)

    @property
    def rotated_dims(self) -> int:
        return 3 * 2 * self.rope.freqs.numel()

    def cos_sin(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """positions (L, 3) float → cos, sin each (L, rotated_dims), float32, pairs interleaved."""
        freqs = self.rope.freqs.float()
        angles = positions.float()[:, :, None] * freqs[None, None, :]  # (L, 3, F)
        angles = angles.repeat_interleave(2, dim=-1).flatten(1)  # (L, 3 * 2F)
        return angles.cos(), angles.sin()

    @staticmethod
    def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """x (L, heads, head_dim) → same shape; dims beyond cos.shape[-1] pass through unrotated."""
        n = cos.shape[-1]
        head, tail = x[..., :n].float(), x[..., n:]
        pairs = head.unflatten(-1, (-1, 2))
        rotated_half = torch.stack((-pairs[..., 1], pairs[..., 0]), dim=-1).flatten(-2)
        out = head * cos[:, None, :] + rotated_half * sin[:, None, :]
        return torch.cat((out.to(x.dtype), tail), dim=-1)


def video_positions(frames: int, height: int, width: int, offset: int | torch.Tensor = 0,
                    device: torch.device | None = None) -> torch.Tensor:
    """Positions (frames*height*width, 3) of a (t, h, w) row-major token grid; time starts at ``offset``."""
    t = torch.arange(frames, device=device) + offset
    r = torch.arange(height, device=device)
    c = torch.arange(width, device=device)
    grid = torch.stack(torch.meshgrid(t, r, c, indexing="ij"), dim=-1)
    return grid.reshape(-1, 3).float()


def text_positions(length: int, offset: int = 0, device: torch.device | None = None) -> torch.Tensor:
    """Positions (length, 3) = (j, j, j) for text token j (shifted by ``offset``)."""
    j = torch.arange(length, device=device).float() + offset
    return j[:, None].expand(length, 3).contiguous()
