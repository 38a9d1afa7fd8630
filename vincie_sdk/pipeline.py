"""One generation step of a session: check → encode text → build inputs → denoise with CFG.

A *request* is the context of one sample: the clean latents of its frames so far and the prompts
introducing frames 1..T (the last prompt introduces the frame being generated). Several requests
(sessions) are packed into one batch without padding.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .denoise import PackedInputs, StepCallback, denoise
from .model import VincieModel
from .sampler import FlowMatchSampler


@dataclass
class FrameRequest:
    """Generate the next frame of one session.

    Attributes:
        context_latents: (T, h, w, C) clean DiT-space latents of frames 0..T-1.
        prompts: T formatted prompts; prompt j introduces frame j+1 (the last: the new frame).
        seed: noise seed; the noise of all T+1 frames is drawn at once, as the official code does.
        source: index of the context frame the new frame is generated from (the image it edits); only
            residual models (``DiTConfig.residual``) use it. ``None`` = the last context frame.
        residual_base: (h, w, C) latent a residual output is relative to instead of the
            source (``VincieModel.blank_latent`` for a mask); ``None`` = the source.
    """

    context_latents: torch.Tensor
    prompts: list[str]
    seed: int
    source: int | None = None
    residual_base: torch.Tensor | None = None


def draw_noise(shape: tuple[int, ...], seed: int, device: torch.device) -> torch.Tensor:
    """Official noise: one ``randn`` of the whole (T+1, h, w, C) block from a seeded generator.

    On ``cuda:0`` this is bit-identical to the official script; on other devices the stream differs.
    """
    generator = torch.Generator(device=device).manual_seed(int(seed))
    return torch.randn(shape, generator=generator, device=device, dtype=torch.float32)


def build_condition(context_latents: torch.Tensor, source: int | None = None) -> torch.Tensor:
    """(T, h, w, C) → (T+1, h, w, C+1): [latent | 1] for context frames, zeros for the target.

    With ``source`` (residual models) the target carries
    ``[latent of context frame source | 0]``: the image its output is a residual of, in its own channels
    as in the block-causal layout.
    """
    t, h, w, c = context_latents.shape
    cond = context_latents.new_zeros(t + 1, h, w, c + 1)
    cond[:t, ..., :c] = context_latents
    cond[:t, ..., c] = 1.0
    if source is not None and t:
        cond[t, ..., :c] = context_latents[source]
    return cond


def fuse_prompts(model: VincieModel, embeds: list[torch.Tensor]) -> torch.Tensor:
    """[id_0; E_0; id_1; E_1; ...] — each prompt's turn embedding prepended ("seq_concat")."""
    ids = torch.arange(len(embeds), device=model.device)
    id_emb = model.dit.embed_prompt_ids(ids).float()
    parts = []
    for j, e in enumerate(embeds):
        parts += [id_emb[j: j + 1], e.float()]
    return torch.cat(parts)


def pack_requests(model: VincieModel, requests: list[FrameRequest], negative_prompt: str | None,
                  use_cache: bool = True) -> PackedInputs:
    """Encode texts and build the packed DiT inputs for a batch of requests."""
    device = model.device
    unique = sorted({p for r in requests for p in r.prompts} | ({negative_prompt} if negative_prompt is not None else set()))
    table = dict(zip(unique, model.encode_prompts(unique, use_cache=use_cache)))
    noises, conds, shapes, txts, txt_lens, bases = [], [], [], [], [], []
    with_bases = any(r.residual_base is not None for r in requests)  # else the condition latents are the base
    for r in requests:
        t, h, w, c = r.context_latents.shape
        if len(r.prompts) != t:
            raise ValueError(f"a request with {t} context frames needs {t} prompts, got {len(r.prompts)}")
        noises.append(draw_noise((t + 1, h, w, c), r.seed, device).reshape(-1, c))
        source = (t - 1 if r.source is None else r.source) if model.config.dit.residual else None
        cond = build_condition(r.context_latents.to(device).float(), source)
        conds.append(cond.reshape(-1, c + 1))
        if with_bases:
            base = cond[..., :-1].clone()
            if r.residual_base is not None:
                base[t] = r.residual_base.to(device).float()
            bases.append(base.reshape(-1, c))
        shapes.append([t + 1, h, w])
        txt = fuse_prompts(model, [table[p] for p in r.prompts])
        txts.append(txt)
        txt_lens.append([txt.shape[0]])
    inputs = PackedInputs(noise=torch.cat(noises), condition=torch.cat(conds),
                          vid_shape=torch.tensor(shapes), txt_pos=torch.cat(txts), txt_pos_shape=torch.tensor(txt_lens),
                          residual_base=torch.cat(bases) if bases else None)
    if negative_prompt is not None:
        neg = torch.cat((model.dit.embed_prompt_ids(torch.zeros(1, dtype=torch.long, device=device)).float(),
                         table[negative_prompt].float()))
        inputs.txt_neg = neg.repeat(len(requests), 1)
        inputs.txt_neg_shape = torch.tensor([[neg.shape[0]]] * len(requests))
    return inputs


def generate(model: VincieModel, requests: list[FrameRequest], *, steps: int | None = None,
             cfg_scale: float | None = None, negative_prompt: str | None = None, batch_cfg: bool = True,
             use_cache: bool = True, callback: StepCallback | None = None) -> list[torch.Tensor]:
    """Sample the next frame of every request; returns DiT-space latents (h, w, C) per request.

    Args:
        steps, cfg_scale: default to the model's sampler config.
        negative_prompt: default: the model's session config; "" is a valid (empty) negative prompt.
        batch_cfg: pack the guided and unguided passes into one forward (the "fast" mode).
        use_cache: reuse text embeddings of prompts seen before (False re-encodes, like the official code).
    """
    # 1. Check.
    if not requests:
        return []
    cfg = model.config
    scale = cfg.sampler.cfg_scale if cfg_scale is None else float(cfg_scale)
    negative = cfg.session.negative_prompt if negative_prompt is None else negative_prompt
    # 2. Encode texts and pack.
    inputs = pack_requests(model, requests, negative if scale != 1.0 else None, use_cache=use_cache)
    # 3. Denoise all frames.
    x0 = denoise(model.dit, FlowMatchSampler(cfg.sampler), inputs, steps=steps, cfg_scale=scale,
                 batch_cfg=batch_cfg, callback=callback)
    # 4. Keep each request's target (last) frame.
    outs, start = [], 0
    for (t1, h, w) in inputs.vid_shape.tolist():
        n = t1 * h * w
        outs.append(x0[start: start + n].reshape(t1, h, w, -1)[-1])
        start += n
    return outs
