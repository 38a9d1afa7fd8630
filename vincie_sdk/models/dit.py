"""The VINCIE diffusion transformer (official "NaDiT": MM-DiT with native-resolution packing).

Attribute names follow the official ``dit.pth`` keys, so a released checkpoint loads with
``load_state_dict(strict=True)`` and no renaming table. A forward call takes a *packed* batch: the
latents of every sample flattened and concatenated (``vid`` with per-sample ``vid_shape``), the text
tokens likewise (``txt``/``txt_shape``). Each sample attends over ``[its video tokens ; its text
tokens]`` only; samples never see each other and there is no padding anywhere.

Example:
    >>> import torch
    >>> from vincie_sdk.config import TINY
    >>> dit = VincieTransformer(TINY.dit)
    >>> vid = torch.randn(2 * 8 * 8, 33)                       # one sample: 2 frames of 8x8 latents
    >>> txt = torch.randn(5, TINY.dit.txt_in_dim)
    >>> v = dit(vid, torch.tensor([[2, 8, 8]]), txt, torch.tensor([[5]]), torch.tensor([500.0]))
    >>> v.shape
    torch.Size([128, 16])
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..config import DiTConfig
from .rope import RotaryEmbedding3d, text_positions, video_positions


# ----------------------------------------------------------------------------------------------
# Small building blocks
# ----------------------------------------------------------------------------------------------

class RMSNorm(nn.Module):
    """RMSNorm computed in float32 (as apex's fused kernel does); ``affine`` adds a weight only."""

    def __init__(self, dim: int, eps: float, affine: bool) -> None:
        super().__init__()
        self.eps = eps
        self.dim = dim
        self.weight = nn.Parameter(torch.ones(dim)) if affine else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = None if self.weight is None else self.weight.float()
        return F.rms_norm(x.float(), (self.dim,), weight, self.eps).to(x.dtype)


class MM(nn.Module):
    """Dual-weight container: ``vid``/``txt`` submodules in "mm" blocks, one ``all`` in shared blocks."""

    def __init__(self, factory: Callable[[], nn.Module], shared: bool, vid_only: bool = False) -> None:
        super().__init__()
        self.shared = shared
        if shared:
            self.all = factory()
        else:
            self.vid = factory()
            if not vid_only:
                self.txt = factory()

    def stream(self, name: str) -> nn.Module:
        return self.all if self.shared else getattr(self, name)


class SwiGLU(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.proj_in_gate = nn.Linear(dim, hidden, bias=False)
        self.proj_in = nn.Linear(dim, hidden, bias=False)
        self.proj_out = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj_out(F.silu(self.proj_in_gate(x)) * self.proj_in(x))


class AdaSingle(nn.Module):
    """Learned per-layer biases added to a shared timestep embedding ("ada: single").

    The "1" of the scale lives in ``<layer>_scale`` (initialised around 1), so modulation is
    ``norm(x) * (e_scale + scale) + (e_shift + shift)`` and gating ``y * (e_gate + gate)``.
    """

    def __init__(self, dim: int, layers: Sequence[str], gates: bool = True) -> None:
        super().__init__()
        for name in layers:
            self.register_parameter(f"{name}_shift", nn.Parameter(torch.randn(dim) / dim**0.5))
            self.register_parameter(f"{name}_scale", nn.Parameter(torch.randn(dim) / dim**0.5 + 1))
            if gates:
                self.register_parameter(f"{name}_gate", nn.Parameter(torch.randn(dim) / dim**0.5))

    def modulate(self, h: torch.Tensor, emb: Sequence[torch.Tensor], layer: str) -> torch.Tensor:
        """h (L, D) normalised tokens; emb the per-token (shift, scale, gate), each (L, D): see :func:`split_ada`."""
        return h * (emb[1] + getattr(self, f"{layer}_scale")) + (emb[0] + getattr(self, f"{layer}_shift"))

    def gate(self, y: torch.Tensor, emb: Sequence[torch.Tensor], layer: str) -> torch.Tensor:
        return y * (emb[2] + getattr(self, f"{layer}_gate"))


def split_ada(emb: torch.Tensor) -> list[tuple[torch.Tensor, ...]]:
    """(L, D, 2, 3) per-token modulation -> [attn, mlp] x (shift, scale, gate) tensors of (L, D).

    One ``unbind`` per level instead of indexing ``emb[..., k]`` at each use: the backward of an index
    allocates and zero-fills a gradient of the whole (L, D, 2, 3) tensor per use, which cost about a tenth
    of a training step on a CPU.
    """
    return [part.unbind(-1) for part in emb.unbind(2)]


class TimeEmbedding(nn.Module):
    """Sinusoid of the raw timestep (0..1000) → MLP → 6 * dim modulation vector per sample."""

    def __init__(self, sinusoidal_dim: int, hidden_dim: int, output_dim: int) -> None:
        super().__init__()
        self.sinusoidal_dim = sinusoidal_dim
        self.proj_in = nn.Linear(sinusoidal_dim, hidden_dim)
        self.proj_hid = nn.Linear(hidden_dim, hidden_dim)
        self.proj_out = nn.Linear(hidden_dim, output_dim)

    def forward(self, timestep: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        from diffusers.models.embeddings import get_timestep_embedding

        emb = get_timestep_embedding(timestep.float(), self.sinusoidal_dim, flip_sin_to_cos=False,
                                     downscale_freq_shift=0).to(dtype)
        emb = F.silu(self.proj_in(emb))
        emb = F.silu(self.proj_hid(emb))
        return self.proj_out(emb)


class PatchIn(nn.Module):
    """(T, H, W, C) latents → (T/pt * H/ph * W/pw, dim) tokens, features ordered (pt, ph, pw, C)."""

    def __init__(self, channels: int, patch: tuple[int, int, int], dim: int) -> None:
        super().__init__()
        self.patch = patch
        self.proj = nn.Linear(channels * patch[0] * patch[1] * patch[2], dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x (T, H, W, C)
        pt, ph, pw = self.patch
        t, h, w, c = x.shape
        x = x.reshape(t // pt, pt, h // ph, ph, w // pw, pw, c).permute(0, 2, 4, 1, 3, 5, 6)
        return self.proj(x.reshape((t // pt) * (h // ph) * (w // pw), pt * ph * pw * c))


class FramePosition(nn.Module):
    """Absolute position of a token inside its frame (``DiTConfig.frame_position``), added to its embedding.

    Row and column are mapped to [-1, 1] (cell centres), so the features do not depend on the resolution,
    then to ``sin/cos(pi k u / 2)`` for k = 1..F, and projected to the model width. The projection starts at
    zero: a fresh model sees exactly what it would without this module.
    """

    def __init__(self, frequencies: int, dim: int) -> None:
        super().__init__()
        self.frequencies = frequencies
        self.proj = nn.Linear(4 * frequencies, dim)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def _axis(self, n: int, device: torch.device) -> torch.Tensor:
        u = (torch.arange(n, device=device, dtype=torch.float32) + 0.5) / n * 2 - 1
        angles = u[:, None] * (torch.arange(1, self.frequencies + 1, device=device, dtype=torch.float32) * math.pi / 2)
        return torch.cat((angles.sin(), angles.cos()), -1)  # (n, 2F)

    def forward(self, grid: tuple[int, int, int], device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """(t * h * w, dim) for a post-patch (t, h, w) token grid in row-major order."""
        t, h, w = grid
        rows, cols = self._axis(h, device), self._axis(w, device)
        feats = torch.cat((rows[:, None].expand(h, w, -1), cols[None].expand(h, w, -1)), -1).reshape(h * w, -1)
        return self.proj(feats.to(dtype)).repeat(t, 1)


class PatchOut(nn.Module):
    def __init__(self, dim: int, channels: int, patch: tuple[int, int, int]) -> None:
        super().__init__()
        self.patch = patch
        self.channels = channels
        self.proj = nn.Linear(dim, channels * patch[0] * patch[1] * patch[2])

    def forward(self, x: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:  # x (L, dim)
        pt, ph, pw = self.patch
        t, h, w = grid
        x = self.proj(x).reshape(t, h, w, pt, ph, pw, self.channels).permute(0, 3, 1, 4, 2, 5, 6)
        return x.reshape(t * pt, h * ph, w * pw, self.channels)


class PixelHead(nn.Module):
    """Per-pixel output refinement (``DiTConfig.pixel_head``), added to the linear patch output.

    Each token's features are expanded to ``hidden`` channels per pixel of its patch; with the pixel's
    own source value (the DiT input's second latent, unfolded by ``pixel_fold``), two 3x3 convolutions
    give per-pixel outputs, folded back to latent channels group by group (one group for a residual, two
    for a gated residual). The last convolution starts at zero. The head does not see x_t: it has no
    timestep, and a first version that read x_t put its noise on unchanged objects at high noise levels
    (reading x_t is the gate's job, which the transformer controls per timestep).
    """

    def __init__(self, cfg: DiTConfig) -> None:
        super().__init__()
        f, hidden = cfg.pixel_fold, cfg.pixel_head
        self.fold, self.hidden, self.patch = f, hidden, cfg.patch_size
        self.latent = (cfg.vid_in_channels - 1) // 2
        self.px_in = self.latent // (f * f)
        self.groups = cfg.vid_out_channels // self.latent if cfg.vid_out_channels % self.latent == 0 else None
        if self.groups is None:
            raise ValueError(f"DiTConfig: pixel_head needs vid_out_channels ({cfg.vid_out_channels}) to be a multiple "
                             f"of the latent channels ({self.latent})")
        pt, ph, pw = cfg.patch_size
        self.expand = nn.Linear(cfg.vid_dim, pt * ph * pw * f * f * hidden)
        self.conv1 = nn.Conv2d(hidden + self.px_in, hidden, 3, padding=1)
        self.conv2 = nn.Conv2d(hidden, self.groups * self.px_in, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)

    def forward(self, x: torch.Tensor, grid: tuple[int, int, int], raw: torch.Tensor) -> torch.Tensor:
        """x (L, dim) tokens of one sample, raw (T, H, W, vid_in_channels) its input → (T, H, W, out)."""
        pt, ph, pw = self.patch
        t, h, w = grid
        f, c = self.fold, self.hidden
        T, H, W = t * pt, h * ph, w * pw
        if T == 0:  # a text-only block; (un)shuffling an empty batch returns its input unchanged
            return x.new_zeros(0, H, W, self.groups * self.latent)
        feats = self.expand(x).reshape(t, h, w, pt, ph, pw, f * f * c).permute(0, 3, 1, 4, 2, 5, 6)
        feats = feats.reshape(T, H, W, f, f, c).permute(0, 5, 1, 3, 2, 4).reshape(T, c, H * f, W * f)
        source = F.pixel_shuffle(raw[..., self.latent:2 * self.latent].permute(0, 3, 1, 2).to(feats.dtype), f)
        out = self.conv2(F.silu(self.conv1(torch.cat((feats, source), 1))))  # source: (T, px_in, H f, W f)
        groups = [F.pixel_unshuffle(g, f) for g in out.split(self.px_in, 1)]  # each (T, latent, H, W)
        return torch.cat(groups, 1).permute(0, 2, 3, 1)


class PromptEmbedding(nn.Module):
    """Turn ("prompt id") embeddings in text-encoder space, prepended to each prompt's tokens."""

    def __init__(self, max_num_prompts: int, embedding_dim: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(max_num_prompts, embedding_dim)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.embedding(ids)


# ----------------------------------------------------------------------------------------------
# Packed-batch bookkeeping
# ----------------------------------------------------------------------------------------------

class KVCache:
    """Keys/values of already-processed clean tokens, per transformer block, for one sample.

    Used by the block-causal variant: the clean history (frames and prompts) is run once and every
    later token attends to it without recomputing it. Entries are lists of chunks (one per appended
    block of tokens), so extending a cache shares the tensors of the one it came from and undoing
    a turn is dropping chunks.
    """

    def __init__(self, num_layers: int, chunks: list[list[tuple[torch.Tensor, torch.Tensor]]] | None = None) -> None:
        self.layers = chunks if chunks is not None else [[] for _ in range(num_layers)]

    @property
    def num_chunks(self) -> int:
        return len(self.layers[0]) if self.layers else 0

    @property
    def length(self) -> int:
        return sum(k.shape[0] for k, _ in self.layers[0]) if self.layers else 0

    def extended(self, new: "KVCache") -> "KVCache":
        """A cache with ``new``'s chunks appended (this one is unchanged)."""
        return KVCache(len(self.layers), [a + b for a, b in zip(self.layers, new.layers)])

    def truncated(self, num_chunks: int) -> "KVCache":
        return KVCache(len(self.layers), [chunks[:num_chunks] for chunks in self.layers])

    def selected(self, indices: Sequence[int]) -> "KVCache":
        """A cache of the chunks at ``indices`` only (sharing their tensors)."""
        return KVCache(len(self.layers), [[chunks[i] for i in indices] for chunks in self.layers])

    def keys_values(self, layer: int) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        chunks = self.layers[layer]
        if not chunks:
            return None, None
        return torch.cat([k for k, _ in chunks]), torch.cat([v for _, v in chunks])


@dataclass
class PackedLayout:
    """Per-forward token bookkeeping, derived from shapes once and shared by every block.

    Attributes:
        vid_grids: post-patch (T, H, W) per sample.
        vid_lens, txt_lens: token counts per sample.
        cos_sin: per sample (cos, sin) of the joint sequence [video ; text], (L_b, rotated_dims).
        attn_masks: per sample None (full attention) or a bool (L_b, L_prefix_b + L_b) "may attend" matrix.
        kv_prefix: per sample None or a KVCache the sample's tokens also attend to (placed before them).
        kv_out: if set, one KVCache per sample receiving this forward's keys/values (for caching).
    """

    vid_grids: list[tuple[int, int, int]]
    vid_lens: list[int]
    txt_lens: list[int]
    cos_sin: list[tuple[torch.Tensor, torch.Tensor]]
    attn_masks: list[torch.Tensor | None]
    kv_prefix: list[KVCache | None] | None = None
    kv_out: list[KVCache] | None = None


# ----------------------------------------------------------------------------------------------
# Attention and transformer block
# ----------------------------------------------------------------------------------------------

class JointAttention(nn.Module):
    """qkv → qk RMSNorm → 3-D RoPE → per-sample attention over [video ; text] → out projections."""

    def __init__(self, cfg: DiTConfig, shared: bool, index: int = 0) -> None:
        super().__init__()
        self.index = index  # position in the block stack: selects this block's KV-cache entry
        self.heads, self.head_dim = cfg.heads, cfg.head_dim
        dim = cfg.vid_dim
        self.proj_qkv = MM(lambda: nn.Linear(dim, 3 * dim, bias=False), shared)
        self.proj_out = MM(lambda: nn.Linear(dim, dim, bias=True), shared)
        self.norm_q = MM(lambda: RMSNorm(cfg.head_dim, cfg.norm_eps, affine=True), shared)
        self.norm_k = MM(lambda: RMSNorm(cfg.head_dim, cfg.norm_eps, affine=True), shared)
        self.rope = RotaryEmbedding3d(cfg.rope_dim)
        # Official inference casts q/k/v to bfloat16 for FlashAttention; None keeps the stream dtype.
        self.attention_dtype: torch.dtype | None = None

    def _qkv(self, x: torch.Tensor, stream: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        qkv = self.proj_qkv.stream(stream)(x).unflatten(-1, (3, self.heads, self.head_dim))  # (L, 3, H, d)
        q, k, v = qkv.unbind(1)
        return self.norm_q.stream(stream)(q), self.norm_k.stream(stream)(k), v

    def forward(self, vid: torch.Tensor, txt: torch.Tensor, layout: PackedLayout) -> tuple[torch.Tensor, torch.Tensor]:
        vq, vk, vv = self._qkv(vid, "vid")
        tq, tk, tv = self._qkv(txt, "txt")
        outs_vid, outs_txt = [], []
        splits = zip(vq.split(layout.vid_lens), vk.split(layout.vid_lens), vv.split(layout.vid_lens),
                     tq.split(layout.txt_lens), tk.split(layout.txt_lens), tv.split(layout.txt_lens))
        for b, (q1, k1, v1, q2, k2, v2) in enumerate(splits):
            cos, sin = layout.cos_sin[b]
            q = self.rope.rotate(torch.cat((q1, q2)), cos, sin)
            k = self.rope.rotate(torch.cat((k1, k2)), cos, sin)
            v = torch.cat((v1, v2))
            if layout.kv_out is not None:
                layout.kv_out[b].layers[self.index].append((k, v))
            prefix = layout.kv_prefix[b] if layout.kv_prefix is not None else None
            if prefix is not None:
                pk, pv = prefix.keys_values(self.index)
                if pk is not None:
                    k, v = torch.cat((pk, k)), torch.cat((pv, v))
            out = self._attend(q, k, v, layout.attn_masks[b])  # (L, H, d)
            outs_vid.append(out[: q1.shape[0]])
            outs_txt.append(out[q1.shape[0]:])
        vid_out = torch.cat(outs_vid).flatten(1)
        txt_out = torch.cat(outs_txt).flatten(1)
        return self.proj_out.stream("vid")(vid_out), self.proj_out.stream("txt")(txt_out)

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        dtype = q.dtype
        if self.attention_dtype is not None:
            q, k, v = (t.to(self.attention_dtype) for t in (q, k, v))
        q, k, v = (t.transpose(0, 1) for t in (q, k, v))  # (H, L, d)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=self.head_dim**-0.5)
        return out.transpose(0, 1).to(dtype)


class TransformerBlock(nn.Module):
    """One MM-DiT block; the last block skips the text MLP (its text output is discarded)."""

    def __init__(self, cfg: DiTConfig, shared: bool, is_last: bool, index: int = 0) -> None:
        super().__init__()
        self.is_last = is_last
        dim = cfg.vid_dim
        self.attn_norm = MM(lambda: RMSNorm(dim, cfg.norm_eps, affine=False), shared)
        self.attn = JointAttention(cfg, shared, index)
        self.mlp_norm = MM(lambda: RMSNorm(dim, cfg.norm_eps, affine=False), shared, vid_only=is_last)
        self.mlp = MM(lambda: SwiGLU(dim, cfg.mlp_hidden), shared, vid_only=is_last)
        self.ada = MM(lambda: AdaSingle(dim, ["attn", "mlp"]), shared)

    def forward(self, vid: torch.Tensor, txt: torch.Tensor, vid_emb: torch.Tensor, txt_emb: torch.Tensor,
                layout: PackedLayout) -> tuple[torch.Tensor, torch.Tensor]:
        # vid_emb/txt_emb: (L, D, 2, 3) per-token modulation, [attn|mlp] x [shift|scale|gate].
        ada_v, ada_t = self.ada.stream("vid"), self.ada.stream("txt")
        (v_attn, v_mlp), (t_attn, t_mlp) = split_ada(vid_emb), split_ada(txt_emb)
        hv = ada_v.modulate(self.attn_norm.stream("vid")(vid), v_attn, "attn")
        ht = ada_t.modulate(self.attn_norm.stream("txt")(txt), t_attn, "attn")
        av, at = self.attn(hv, ht, layout)
        vid = vid + ada_v.gate(av, v_attn, "attn")
        txt = txt + ada_t.gate(at, t_attn, "attn")

        hv = ada_v.modulate(self.mlp_norm.stream("vid")(vid), v_mlp, "mlp")
        vid = vid + ada_v.gate(self.mlp.stream("vid")(hv), v_mlp, "mlp")
        if not self.is_last:
            ht = ada_t.modulate(self.mlp_norm.stream("txt")(txt), t_mlp, "mlp")
            txt = txt + ada_t.gate(self.mlp.stream("txt")(ht), t_mlp, "mlp")
        return vid, txt


# ----------------------------------------------------------------------------------------------
# The model
# ----------------------------------------------------------------------------------------------

class VincieTransformer(nn.Module):
    """MM-DiT predicting the flow velocity ``v = noise - x0`` of packed video latents.

    Args:
        config: the architecture (``DiTConfig``); the official 3B model is ``DiTConfig()``.
    """

    def __init__(self, config: DiTConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        self.vid_in = PatchIn(c.vid_in_channels, c.patch_size, c.vid_dim)
        self.vid_pos = FramePosition(c.frame_position, c.vid_dim) if c.frame_position else None
        self.txt_in = nn.Linear(c.txt_in_dim, c.vid_dim)
        self.emb_in = TimeEmbedding(c.time_embed_dim, c.vid_dim, c.emb_dim)
        self.blocks = nn.ModuleList(
            TransformerBlock(c, shared=i >= c.mm_layers, is_last=i == c.num_layers - 1, index=i)
            for i in range(c.num_layers)
        )
        self.vid_out_norm = RMSNorm(c.vid_dim, c.norm_eps, affine=True)
        self.vid_out_ada = AdaSingle(c.vid_dim, ["out"], gates=False)
        self.vid_out = PatchOut(c.vid_dim, c.vid_out_channels, c.patch_size)
        self.pixel_head = PixelHead(c) if c.pixel_head else None
        self.prompt_id_embedding = PromptEmbedding(c.max_num_prompts, c.txt_in_dim)
        self.gradient_checkpointing = False

    # -- helpers ---------------------------------------------------------------------------------
    def set_attention_dtype(self, dtype: torch.dtype | None) -> None:
        """Compute attention in ``dtype`` (the official code uses bfloat16); None = model dtype."""
        for block in self.blocks:
            block.attn.attention_dtype = dtype

    def layout(self, vid_shape: torch.Tensor, txt_shape: torch.Tensor,
               attn_masks: Sequence[torch.Tensor | None] | None = None,
               positions: Sequence[tuple[torch.Tensor, torch.Tensor]] | None = None,
               device: torch.device | None = None, kv_prefix: Sequence[KVCache | None] | None = None,
               store_kv: bool = False) -> PackedLayout:
        """Token bookkeeping for a packed batch (shapes are per sample, pre-patch for video).

        ``positions`` optionally overrides the official RoPE positions per sample with
        (video positions (Lv, 3), text positions (Lt, 3)); used by the block-causal variant.
        """
        pt, ph, pw = self.config.patch_size
        rope = self.blocks[0].attn.rope
        grids, vid_lens, txt_lens, cos_sin = [], [], [], []
        for b, ((t, h, w), (lt,)) in enumerate(zip(vid_shape.tolist(), txt_shape.tolist())):
            if t % pt or h % ph or w % pw:
                raise ValueError(f"latent grid {(t, h, w)} of sample {b} is not divisible by the patch {self.config.patch_size}")
            grid = (t // pt, h // ph, w // pw)
            grids.append(grid)
            vid_lens.append(grid[0] * grid[1] * grid[2])
            txt_lens.append(lt)
            if positions is not None:
                vpos, tpos = positions[b]
            else:
                vpos, tpos = video_positions(*grid, offset=lt, device=device), text_positions(lt, device=device)
            cos_sin.append(rope.cos_sin(torch.cat((vpos, tpos)).to(device)))
        masks = list(attn_masks) if attn_masks is not None else [None] * len(grids)
        kv_out = [KVCache(len(self.blocks)) for _ in grids] if store_kv else None
        return PackedLayout(grids, vid_lens, txt_lens, cos_sin, masks,
                            list(kv_prefix) if kv_prefix is not None else None, kv_out)

    def embed_prompt_ids(self, ids: torch.Tensor) -> torch.Tensor:
        """(n,) turn ids → (n, txt_in_dim) embeddings to prepend to each prompt's text tokens."""
        if ids.numel() and int(ids.max()) >= self.config.max_num_prompts:
            raise ValueError(
                f"prompt id {int(ids.max())} exceeds the model's {self.config.max_num_prompts} turn embeddings; "
                "start a new session or undo turns")
        return self.prompt_id_embedding(ids)

    # -- forward ---------------------------------------------------------------------------------
    def forward(self, vid: torch.Tensor, vid_shape: torch.Tensor, txt: torch.Tensor, txt_shape: torch.Tensor,
                timestep: torch.Tensor, layout: PackedLayout | None = None,
                vid_timestep_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Predict the velocity of a packed batch.

        Args:
            vid: (sum_b T_b*H_b*W_b, vid_in_channels) flattened latents ([x_t | condition]).
            vid_shape: (B, 3) latent (T, H, W) per sample.
            txt: (sum_b L_b, txt_in_dim) text-encoder states (with prompt-id tokens already fused).
            txt_shape: (B, 1) text length per sample.
            timestep: (B,) in [0, num_train_timesteps], or (N,) distinct timesteps indexed per
                video token by ``vid_timestep_ids`` (block-causal training: clean tokens at t=0).
            layout: precomputed ``self.layout(...)`` (reuse it across sampling steps).
            vid_timestep_ids: optional (sum tokens post-patch,) index into ``timestep`` per video token;
                text tokens then use ``timestep[0]``.
        Returns:
            (sum_b T_b*H_b*W_b, vid_out_channels) predicted velocity.
        """
        if layout is None:
            layout = self.layout(vid_shape, txt_shape, device=vid.device)
        dtype = self.txt_in.weight.dtype
        txt = self.txt_in(txt.to(dtype))
        channels = vid.shape[-1]
        raws = [x.reshape(*shape, channels) for x, shape in
                zip(vid.to(dtype).split([t * h * w for t, h, w in vid_shape.tolist()]), vid_shape.tolist())]
        vid_tokens = [self.vid_in(x) for x in raws]
        if self.vid_pos is not None:
            vid_tokens = [x + self.vid_pos(grid, x.device, dtype) for x, grid in zip(vid_tokens, layout.vid_grids)]
        vid = torch.cat(vid_tokens)

        emb = self.emb_in(timestep, dtype).unflatten(-1, (self.config.vid_dim, 2, 3))  # (B|N, D, 2, 3)
        if vid_timestep_ids is None:
            vid_emb = emb.repeat_interleave(torch.tensor(layout.vid_lens, device=emb.device), dim=0)
            txt_emb = emb.repeat_interleave(torch.tensor(layout.txt_lens, device=emb.device), dim=0)
        else:
            vid_emb = emb[vid_timestep_ids]
            txt_emb = emb[:1].expand(sum(layout.txt_lens), *emb.shape[1:])

        for block in self.blocks:
            if self.gradient_checkpointing and torch.is_grad_enabled():
                vid, txt = torch.utils.checkpoint.checkpoint(block, vid, txt, vid_emb, txt_emb, layout,
                                                             use_reentrant=False)
            else:
                vid, txt = block(vid, txt, vid_emb, txt_emb, layout)

        # Official quirk: the output layer reuses the *attention* slice of the block modulation.
        vid = self.vid_out_ada.modulate(self.vid_out_norm(vid), split_ada(vid_emb)[0], "out")
        outs = [self.vid_out(x, grid) for x, grid in zip(vid.split(layout.vid_lens), layout.vid_grids)]
        if self.pixel_head is not None:
            outs = [o + self.pixel_head(x, grid, raw) for o, x, grid, raw in
                    zip(outs, vid.split(layout.vid_lens), layout.vid_grids, raws)]
        return torch.cat([o.reshape(-1, o.shape[-1]) for o in outs])
