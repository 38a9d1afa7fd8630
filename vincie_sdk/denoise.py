"""The denoising loop: Euler sampling of a packed batch with classifier-free guidance.

Separated from the pipeline so that parity checks, benchmarks, training previews and the pipeline
all run the very same loop.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from .models.dit import VincieTransformer
from .sampler import FlowMatchSampler

StepCallback = Callable[[int, int], None]  # (finished step index, total steps)


@dataclass
class PackedInputs:
    """One packed batch of sessions, ready for the DiT.

    Attributes:
        noise: (sum_b L_b, C) initial noise of every frame of every sample (flattened latents).
        condition: (sum_b L_b, C + 1) [context latent | context flag] (zeros on the target frame).
        vid_shape: (B, 3) latent (T, H, W) per sample.
        txt_pos, txt_pos_shape: fused positive text (sum_b l_b, txt_dim) and (B, 1) lengths.
        txt_neg, txt_neg_shape: the same for the negative prompt (used when guidance is on).
        residual_base: (sum_b L_b, C) what a residual output is relative to (default: the
            condition latents; a blank frame on a mask target).
    """

    noise: torch.Tensor
    condition: torch.Tensor
    vid_shape: torch.Tensor
    txt_pos: torch.Tensor
    txt_pos_shape: torch.Tensor
    txt_neg: torch.Tensor | None = None
    txt_neg_shape: torch.Tensor | None = None
    residual_base: torch.Tensor | None = None


@torch.no_grad()
def denoise(dit: VincieTransformer, sampler: FlowMatchSampler, inputs: PackedInputs, *,
            steps: int | None = None, cfg_scale: float | None = None, batch_cfg: bool = True,
            callback: StepCallback | None = None) -> torch.Tensor:
    """Integrate all frames from noise to data; returns the final x0 (sum_b L_b, C).

    Args:
        batch_cfg: run the positive and negative passes as one packed forward (same numbers as two
            separate passes, since samples never attend to each other; fewer, larger matmuls).
        callback: called after every step with (step index, steps); raising in it aborts sampling
            (this is how ComfyUI's interrupt reaches the loop).
    """
    # 1. Timesteps and guidance plan.
    timesteps = sampler.timesteps(steps).to(inputs.noise.device)
    n = len(timesteps)
    base_scale = sampler.config.cfg_scale if cfg_scale is None else cfg_scale
    scales = [base_scale if (i + 1) / n <= sampler.config.cfg_partial else 1.0 for i in range(n)]
    guided = any(s != 1.0 for s in scales) and inputs.txt_neg is not None

    # 2. Layouts (RoPE tables) depend only on shapes: build them once for all steps.
    device = inputs.noise.device
    pos_layout = dit.layout(inputs.vid_shape, inputs.txt_pos_shape, device=device)
    if guided:
        neg_layout = dit.layout(inputs.vid_shape, inputs.txt_neg_shape, device=device)
        both_shape = torch.cat((inputs.vid_shape, inputs.vid_shape))
        both_txt_shape = torch.cat((inputs.txt_pos_shape, inputs.txt_neg_shape))
        both_layout = dit.layout(both_shape, both_txt_shape, device=device)
        both_txt = torch.cat((inputs.txt_pos, inputs.txt_neg))
    batch = inputs.vid_shape.shape[0]

    # 3. Euler integration.
    prediction = dit.config.prediction
    # residual outputs: every frame's condition holds its source (context frames: themselves; the target:
    # the image it edits, see pipeline.build_condition).
    source = None
    if dit.config.residual:
        source = (inputs.condition[:, :-1] if inputs.residual_base is None else inputs.residual_base).float()
    x = inputs.noise.float()
    for i, t in enumerate(timesteps):
        t_batch = t.expand(batch)
        vid = torch.cat((x, inputs.condition), dim=-1)
        if guided and scales[i] != 1.0:
            if batch_cfg:
                v = dit(torch.cat((vid, vid)), both_shape, both_txt, both_txt_shape, t.expand(2 * batch),
                        layout=both_layout).float()
                v_pos, v_neg = v.chunk(2)
            else:
                v_pos = dit(vid, inputs.vid_shape, inputs.txt_pos, inputs.txt_pos_shape, t_batch, layout=pos_layout).float()
                v_neg = dit(vid, inputs.vid_shape, inputs.txt_neg, inputs.txt_neg_shape, t_batch, layout=neg_layout).float()
            v_pos = sampler.velocity(v_pos, x, source, t, prediction)
            v_neg = sampler.velocity(v_neg, x, source, t, prediction)
            v = sampler.guide(v_pos, v_neg, scales[i])
        else:
            v = dit(vid, inputs.vid_shape, inputs.txt_pos, inputs.txt_pos_shape, t_batch, layout=pos_layout).float()
            v = sampler.velocity(v, x, source, t, prediction)
        x = sampler.step(x, v, t, timesteps[i + 1] if i + 1 < n else None)
        if callback is not None:
            callback(i, n)
    return x
