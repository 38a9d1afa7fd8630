"""Train the autoencoder of the embedded "vincie-shapes" model on the synthetic shapes world.

The model is the SDK's :class:`~vincie_sdk.models.vae.CausalVAE` (one implementation, official key
names) in a small configuration: three blocks, spatial factor 4 (64x64x3 -> 16x16x8), no temporal
downsampling (the DiT only ever encodes single frames). Training data is drawn on the fly from the
world: ~70% frames (keyframes of editing sessions with camera and lighting changes, and in-between
video frames: objects sliding in from off-screen, colour fades, growing shapes) and ~30% region masks
(white region on black, replicated to RGB), all in [-1, 1].

Each step's batch and posterior noise depend only on ``(seed, step)``, so a run resumed from a
checkpoint (model, optimizer, step, schedule length, RNG state) continues exactly where it stopped.
After training, the latent normalisation (``shifting_factor`` = mean, ``scaling_factor`` = 1 / std of
posterior means over held-out images and masks) is measured and the result is written as a folder:
``vae.safetensors`` + ``vae_config.json`` + ``metrics.json`` + ``recon.png``.

Example:
    python -m vincie_train.autoencoder --out runs/vae-shapes --minutes 15 --seed 0
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from vincie_sdk.config import VAEConfig
from vincie_sdk.loading import atomic_dir, atomic_path, load_into, read_state_dict, save_safetensors, write_json
from vincie_sdk.models.vae import CausalVAE

from .data.masks import dilate
from .synth.dynamics import WorldConfig, sample_scene, sample_transition_session
from .synth.instructions import CHANGE_TYPES, EDIT_TYPES
from .synth.parse import classify_pixels, parse_scene, scene_signature
from .synth.video import sample_video
from .synth.world import COLORS, render_layers

log = logging.getLogger(__name__)

# The architecture of the embedded model's VAE; the latent normalisation is filled in after training.
# Not yet validated against the reconstruction targets: 300 steps at batch 32 (~10 CPU-minutes under load)
# reach a frame MAE of ~0.05 with colours still missing, so the recipe needs far more steps than that.
SHAPES_VAE = VAEConfig(
    block_out_channels=(16, 32, 64),
    layers_per_block=1,
    latent_channels=8,
    norm_num_groups=8,
    temporal_scale_num=0,
    spatial_downsample_factor=4,
    temporal_downsample_factor=1,
    mid_attention=False,
    scaling_factor=1.0,
    shifting_factor=0.0,
    use_sample=False,
)

CHECKPOINT = "checkpoint.pt"
METRICS_LOG = "metrics.jsonl"
# Held-out images come from generators seeded with this first word; training uses (seed, step), so
# the two streams never coincide for any seed below it.
HELD_OUT_SEED = 987_654_321


@dataclass(frozen=True)
class AutoencoderTrainConfig:
    """Hyper-parameters of one autoencoder run (saved in every checkpoint)."""

    vae: VAEConfig = SHAPES_VAE
    seed: int = 0
    image_size: int = 64  # frame side of the synthetic world
    batch_size: int = 32
    max_steps: int = 3000  # schedule length; with max_minutes, an upper bound
    max_minutes: float | None = None  # wall-clock budget: fixes the schedule length after calibration
    lr: float = 2e-3
    min_lr_ratio: float = 0.02  # cosine decay ends at lr * min_lr_ratio
    warmup_steps: int = 100
    weight_decay: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.99)
    l2_weight: float = 1.0  # on top of L1: punishes the rare large errors (wrong colours)
    edge_weight: float = 1.0  # L1 of finite differences: crisp shape edges
    kl_weight: float = 1e-6  # per-element KL to N(0, 1): keeps the latent well-behaved
    sample_posterior: bool = True  # decode a posterior sample while training (robust decoder)
    mask_fraction: float = 0.3  # share of region masks in a batch
    video_fraction: float = 0.35  # share of in-between video frames among the frames
    checkpoint_minutes: float = 2.0
    log_every: int = 25
    calibration_steps: int = 20  # steps timed to turn max_minutes into a step count
    num_threads: int = 2
    stats_images: int = 2000  # held-out images + masks for shifting/scaling factors
    eval_frames: int = 512
    eval_masks: int = 256
    eval_scenes: int = 256  # benchmark keyframes for the colour / parse metrics

    def __post_init__(self) -> None:
        if self.vae.spatial_downsample_factor != 4 or self.image_size % 4:
            raise ValueError(f"AutoencoderTrainConfig: need spatial factor 4 and image_size % 4 == 0, got "
                             f"{self.vae.spatial_downsample_factor} and {self.image_size}")
        if self.max_minutes is not None and self.calibration_steps >= self.warmup_steps:
            raise ValueError(f"AutoencoderTrainConfig: calibration_steps ({self.calibration_steps}) must be below "
                             f"warmup_steps ({self.warmup_steps}) so the schedule is fixed before it matters")
        if not 0.0 <= self.mask_fraction <= 1.0 or not 0.0 <= self.video_fraction <= 1.0:
            raise ValueError("AutoencoderTrainConfig: mask_fraction and video_fraction must be within [0, 1]")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> AutoencoderTrainConfig:
        data = dict(data)
        vae = VAEConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.pop("vae").items()})
        return cls(vae=vae, **{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})


# --- data ----------------------------------------------------------------------------------------------


def _worlds(size: int) -> tuple[WorldConfig, ...]:
    # Positions off the 3x3 grid centres too, so the decoder cannot lean on the benchmark's layout.
    return tuple(WorldConfig(size=size, jitter=j) for j in (0.0, 0.0, 0.5, 1.0))


def sample_frame(rng: np.random.Generator, size: int = 64, video_fraction: float = 0.35) -> np.ndarray:
    """A random world frame: a keyframe of a session (any change type), or an in-between video frame.

    Returns:
        (size, size, 3) uint8.
    """
    worlds = _worlds(size)
    world = worlds[int(rng.integers(len(worlds)))]
    if rng.random() < video_fraction:
        video = sample_video(rng, fps=10.0, seconds=2.5, config=world)
        moving = [f for ev in video.events for f in range(ev.start + 1, ev.end)]
        k = moving[int(rng.integers(len(moving)))] if moving and rng.random() < 0.85 else int(
            rng.integers(len(video.scenes)))
        return video.frame(k)[0]
    session = sample_transition_session(rng, int(rng.integers(1, 4)), world, types=CHANGE_TYPES)
    return session.frames[int(rng.integers(len(session.frames)))]


def sample_mask(rng: np.random.Generator, size: int = 64) -> np.ndarray:
    """A random region mask: an editing session's RoE map, or some objects' visible masks in a video frame
    (partly off-screen or occluded), sometimes dilated as the diff masker does.

    Returns:
        (size, size) bool.
    """
    worlds = _worlds(size)
    world = worlds[int(rng.integers(len(worlds)))]
    if rng.random() < 0.5:
        session = sample_transition_session(rng, 1, world, types=EDIT_TYPES)
        mask = session.roe_src[0] if rng.random() < 0.5 else session.roe_tgt[0]
    else:
        video = sample_video(rng, fps=10.0, seconds=2.5, config=world)
        _, masks = video.frame(int(rng.integers(len(video.scenes))))
        mask = np.zeros((size, size), dtype=bool)
        for m in masks.values():
            if rng.random() < 0.6:
                mask |= m
    if rng.random() < 0.15:
        mask = dilate(mask, int(rng.integers(1, 4)))
    return mask


def to_pixels(images: list[np.ndarray]) -> torch.Tensor:
    """uint8 (H, W, 3) images or bool (H, W) masks (white on black) -> (N, 3, H, W) float in [-1, 1]."""
    arr = np.stack([np.repeat(im[..., None], 3, -1) * 255 if im.ndim == 2 else im for im in images])
    return torch.from_numpy(arr.astype(np.float32)).permute(0, 3, 1, 2) / 127.5 - 1.0


def to_uint8(pixels: torch.Tensor) -> np.ndarray:
    """(N, 3, H, W) in [-1, 1] -> (N, H, W, 3) uint8 (clamped, rounded)."""
    return ((pixels.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def sample_items(rng: np.random.Generator, n: int, cfg: AutoencoderTrainConfig) -> list[np.ndarray]:
    """``n`` frames and masks in the configured mix (frames uint8 RGB, masks bool)."""
    return [sample_mask(rng, cfg.image_size) if rng.random() < cfg.mask_fraction
            else sample_frame(rng, cfg.image_size, cfg.video_fraction) for _ in range(n)]


def training_batch(cfg: AutoencoderTrainConfig, step: int) -> torch.Tensor:
    """The batch of ``step``: (B, 3, 1, H, W) in [-1, 1], a function of ``(cfg.seed, step)`` only."""
    rng = np.random.default_rng([cfg.seed, step])
    return to_pixels(sample_items(rng, cfg.batch_size, cfg)).unsqueeze(2)


# --- loss and schedule ---------------------------------------------------------------------------------


def reconstruction_loss(recon: torch.Tensor, target: torch.Tensor, mean: torch.Tensor, logvar: torch.Tensor,
                        cfg: AutoencoderTrainConfig) -> dict[str, torch.Tensor]:
    """L1 + L2 + edge (finite-difference L1) reconstruction terms and a per-element KL; ``"loss"`` is the sum."""
    diff = recon - target  # (B, 3, T, H, W)
    l1, l2 = diff.abs().mean(), diff.square().mean()
    edge = (diff.diff(dim=-1).abs().mean() + diff.diff(dim=-2).abs().mean()) / 2
    kl = 0.5 * (mean.square() + logvar.exp() - 1.0 - logvar).mean()
    loss = l1 + cfg.l2_weight * l2 + cfg.edge_weight * edge + cfg.kl_weight * kl
    return {"loss": loss, "l1": l1, "l2": l2, "edge": edge, "kl": kl}


def learning_rate(step: int, total_steps: int | None, cfg: AutoencoderTrainConfig) -> float:
    """Linear warm-up, then cosine decay to ``lr * min_lr_ratio`` at ``total_steps``."""
    if step < cfg.warmup_steps or total_steps is None:
        return cfg.lr * min(1.0, (step + 1) / cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, total_steps - cfg.warmup_steps))
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


# --- checkpoints ---------------------------------------------------------------------------------------


@dataclass
class TrainState:
    """What a checkpoint restores besides the weights."""

    step: int = 0
    total_steps: int | None = None  # fixed once (from max_steps, or by timing with max_minutes)
    elapsed: float = 0.0  # training seconds over all sessions of this run
    history: list[dict] = field(default_factory=list)  # one row per session: start step, time


def save_checkpoint(path: Path, model: CausalVAE, optimizer: torch.optim.Optimizer, state: TrainState,
                    cfg: AutoencoderTrainConfig) -> None:
    """Write the checkpoint to a temporary sibling and rename it into place (never half-written)."""
    payload = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "config": cfg.to_dict(),
               "state": dataclasses.asdict(state), "torch_rng": torch.get_rng_state()}
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load_checkpoint(path: Path, model: CausalVAE, optimizer: torch.optim.Optimizer,
                    cfg: AutoencoderTrainConfig) -> TrainState:
    payload = torch.load(path, map_location="cpu", weights_only=True)
    saved = AutoencoderTrainConfig.from_dict(payload["config"])
    if saved.vae != cfg.vae or saved.seed != cfg.seed or saved.batch_size != cfg.batch_size:
        raise ValueError(f"checkpoint {path} was made with another vae/seed/batch_size ({saved.vae}, seed "
                         f"{saved.seed}, batch {saved.batch_size}); pass resume=False or another out_dir")
    model.load_state_dict(payload["model"], strict=True)
    optimizer.load_state_dict(payload["optimizer"])
    torch.set_rng_state(payload["torch_rng"])
    return TrainState(**payload["state"])


# --- training ------------------------------------------------------------------------------------------


def _calibrate(state: TrainState, cfg: AutoencoderTrainConfig, seconds_per_step: float) -> int:
    remaining = cfg.max_minutes * 60 - state.elapsed
    return min(cfg.max_steps, state.step + max(0, int(remaining / seconds_per_step)))


def train_autoencoder(config: AutoencoderTrainConfig, out_dir: str | os.PathLike, resume: bool = True,
                      export: bool = True) -> CausalVAE:
    """Train (or resume) the shapes autoencoder in ``out_dir`` and export ``out_dir/final``.

    Args:
        config: the run; with ``max_minutes`` the schedule length is fixed after timing a few steps.
        out_dir: run folder: ``checkpoint.pt`` (every ``checkpoint_minutes``), ``metrics.jsonl``, ``final/``.
        resume: continue from ``out_dir/checkpoint.pt`` when it exists.
        export: measure the latent normalisation and write ``final/`` at the end.
    Returns:
        The trained model (eval mode; its config holds the measured scaling when ``export``).
    """
    cfg, out = config, Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(cfg.num_threads)
    torch.manual_seed(cfg.seed)
    model = CausalVAE(cfg.vae)
    decay = [p for n, p in model.named_parameters() if p.ndim > 1]
    no_decay = [p for n, p in model.named_parameters() if p.ndim <= 1]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=cfg.betas)
    state, ckpt = TrainState(), out / CHECKPOINT
    if resume and ckpt.is_file():
        state = load_checkpoint(ckpt, model, optimizer, cfg)
        log.info("resumed from %s at step %d (%.1f min trained)", ckpt, state.step, state.elapsed / 60)
    if state.total_steps is None and cfg.max_minutes is None:
        state.total_steps = cfg.max_steps
    state.history.append({"start_step": state.step, "time": time.time()})
    n_params = sum(p.numel() for p in model.parameters())
    log.info("training %.2fM-parameter VAE %s for %s steps", n_params / 1e6, cfg.vae.block_out_channels,
             state.total_steps or f"{cfg.max_minutes} min")

    model.train()
    session_start, last_ckpt, window = time.perf_counter(), time.perf_counter(), []
    first_step, calib_start = state.step, None
    while state.total_steps is None or state.step < state.total_steps:
        t0 = time.perf_counter()
        # 1. Batch and posterior noise of this step (functions of seed and step: exact resume).
        x = training_batch(cfg, state.step)
        gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + state.step)
        # 2. Forward, loss, update.
        lr = learning_rate(state.step, state.total_steps, cfg)
        for group in optimizer.param_groups:
            group["lr"] = lr
        recon, mean, logvar = model(x, generator=gen, sample=cfg.sample_posterior)
        terms = reconstruction_loss(recon, x, mean, logvar, cfg)
        optimizer.zero_grad(set_to_none=True)
        terms["loss"].backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        state.step += 1
        now = time.perf_counter()
        state.elapsed += now - t0
        window.append({k: v.item() for k, v in terms.items()} | {"grad_norm": grad_norm.item()})
        # 3. Fix the schedule length from the measured speed (the first steps are slower: skip 2).
        if state.total_steps is None:
            if state.step - first_step == 2:
                calib_start = now
            elif state.step - first_step == cfg.calibration_steps:
                per_step = (now - calib_start) / (cfg.calibration_steps - 2)
                state.total_steps = _calibrate(state, cfg, per_step)
                log.info("%.3f s/step: schedule fixed at %d steps for %.1f min", per_step, state.total_steps,
                         cfg.max_minutes)
        # 4. Log, checkpoint.
        done = state.total_steps is not None and state.step >= state.total_steps
        if state.step % cfg.log_every == 0 or done:
            row = {k: float(np.mean([w[k] for w in window])) for k in window[0]}
            row |= {"step": state.step, "lr": lr, "elapsed_min": state.elapsed / 60,
                    "s_per_step": (now - session_start) / max(1, state.step - first_step)}
            with open(out / METRICS_LOG, "a") as f:
                f.write(json.dumps(row) + "\n")
            log.info("step %d/%s loss %.4f l1 %.4f edge %.4f kl %.1f lr %.2e %.2fs/step", state.step,
                     state.total_steps or "?", row["loss"], row["l1"], row["edge"], row["kl"], lr, row["s_per_step"])
            window = []
        if done or now - last_ckpt > cfg.checkpoint_minutes * 60:
            save_checkpoint(ckpt, model, optimizer, state, cfg)
            last_ckpt = time.perf_counter()
        if cfg.max_minutes is not None and state.elapsed > 1.25 * cfg.max_minutes * 60 and not done:
            log.warning("stopping at step %d: %.1f min exceeds the %.1f-min budget by 25%% (machine busy?)",
                        state.step, state.elapsed / 60, cfg.max_minutes)
            save_checkpoint(ckpt, model, optimizer, state, cfg)
            break
    model.eval()
    if export:
        model = export_autoencoder(model, cfg, out / "final", train_minutes=state.elapsed / 60, steps=state.step)
    return model


# --- evaluation and export -----------------------------------------------------------------------------


@torch.no_grad()
def _reconstruct(model: CausalVAE, pixels: torch.Tensor, batch: int = 64) -> torch.Tensor:
    """Posterior-mean reconstructions of (N, 3, H, W) pixels, clamped to [-1, 1]."""
    out = [model(pixels[i:i + batch].unsqueeze(2), sample=False)[0].squeeze(2) for i in range(0, len(pixels), batch)]
    return torch.cat(out).clamp(-1, 1)


@torch.no_grad()
def latent_statistics(model: CausalVAE, cfg: AutoencoderTrainConfig) -> tuple[float, float]:
    """``(shifting_factor, scaling_factor)``: mean and 1 / std of posterior means over held-out data."""
    rng = np.random.default_rng([HELD_OUT_SEED, 0])
    means = []
    for start in range(0, cfg.stats_images, 64):
        x = to_pixels(sample_items(rng, min(64, cfg.stats_images - start), cfg)).unsqueeze(2)
        means.append(model.encode_posterior(x)[0].flatten().double())
    z = torch.cat(means)
    return float(z.mean()), float(1.0 / z.std())


def _iou(pred: np.ndarray, true: np.ndarray) -> float:
    union = np.count_nonzero(pred | true)
    return 1.0 if union == 0 else np.count_nonzero(pred & true) / union


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(255.0 ** 2 / mse))


@torch.no_grad()
def evaluate(model: CausalVAE, cfg: AutoencoderTrainConfig) -> tuple[dict, dict[str, np.ndarray]]:
    """Held-out reconstruction metrics; also returns the images used (for the contact sheet).

    Frames and masks come from the training distribution (new seeds); "scenes" are benchmark keyframes
    (identity camera, full light, cell centres) whose objects and colours the pixel parser must recover.
    """
    size = cfg.image_size
    rng = np.random.default_rng([HELD_OUT_SEED, 1])
    frames = np.stack([sample_frame(rng, size, cfg.video_fraction) for _ in range(cfg.eval_frames)])
    masks = np.stack([sample_mask(rng, size) for _ in range(cfg.eval_masks)])
    scenes = [sample_scene(rng, WorldConfig(size=size)) for _ in range(cfg.eval_scenes)]
    layers = [render_layers(s, size) for s in scenes]
    scene_frames = np.stack([img for img, _ in layers])

    rec_frames = to_uint8(_reconstruct(model, to_pixels(list(frames))))
    rec_masks = to_uint8(_reconstruct(model, to_pixels(list(masks))))
    rec_scenes = to_uint8(_reconstruct(model, to_pixels(list(scene_frames))))
    err = np.abs(rec_frames.astype(np.float64) - frames) / 255.0
    ious = [_iou(r.mean(-1) >= 127.5, m) for r, m in zip(rec_masks, masks)]

    colour_ok, n_objects, label_agree, parsed_ok = 0, 0, [], []
    palette = list(COLORS)
    for scene, (img, obj_masks), rec in zip(scenes, layers, rec_scenes):
        labels = classify_pixels(rec)
        label_agree.append(np.mean(labels == classify_pixels(img)))
        for obj in scene.objects:
            visible = labels[obj_masks[obj.id]]
            if visible.size:
                n_objects += 1
                colour_ok += int(np.bincount(visible + 1, minlength=len(palette) + 1).argmax() - 1
                                 == palette.index(obj.color))
        parsed_ok.append(scene_signature(parse_scene(rec)) == scene_signature(scene))
    metrics = {
        "frames_mae": float(err.mean()),  # [0, 1] pixel units
        "frames_max_abs_error_p99": float(np.quantile(err.max(-1), 0.99)),
        "frames_psnr_db": _psnr(rec_frames, frames),
        "masks_iou_mean": float(np.mean(ious)),
        "masks_iou_min": float(np.min(ious)),
        "masks_mae": float(np.mean(np.abs(rec_masks.mean(-1) / 255.0 - masks))),
        "scenes_mae": float(np.mean(np.abs(rec_scenes.astype(np.float64) - scene_frames)) / 255.0),
        "scenes_object_color_accuracy": colour_ok / max(1, n_objects),
        "scenes_pixel_label_agreement": float(np.mean(label_agree)),
        "scenes_parse_accuracy": float(np.mean(parsed_ok)),
        "n_eval": {"frames": len(frames), "masks": len(masks), "scenes": len(scenes), "objects": n_objects},
    }
    shown = {"frames": frames[:8], "rec_frames": rec_frames[:8], "masks": masks[:8], "rec_masks": rec_masks[:8],
             "scenes": scene_frames[:8], "rec_scenes": rec_scenes[:8]}
    return metrics, shown


@torch.no_grad()
def timing(model: CausalVAE, size: int = 64, batch: int = 64, repeats: int = 3) -> dict[str, float]:
    """Best-of-``repeats`` milliseconds per image for ``encode_images`` and ``decode_images`` at ``batch``."""
    x = torch.rand(batch, 3, size, size) * 2 - 1
    enc, dec = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        z = model.encode_images(x, sample=False)
        t1 = time.perf_counter()
        model.decode_images(z)
        dec.append(time.perf_counter() - t1)
        enc.append(t1 - t0)
    return {"encode_ms_per_image": 1000 * min(enc) / batch, "decode_ms_per_image": 1000 * min(dec) / batch,
            "encode_decode_ms_batch64": 1000 * (min(enc) + min(dec)) * 64 / batch}


def contact_sheet(shown: dict[str, np.ndarray], path: Path, scale: int = 3, gap: int = 4) -> None:
    """Rows: originals over reconstructions (x``scale`` nearest) for frames, benchmark scenes and masks,
    each followed by the absolute error amplified x4."""
    from PIL import Image

    rows = []
    for key in ("frames", "scenes", "masks"):
        orig = shown[key] if shown[key].ndim == 4 else np.repeat(shown[key][..., None] * 255, 3, -1).astype(np.uint8)
        rec = shown[f"rec_{key}"]
        error = np.clip(np.abs(orig.astype(np.int16) - rec) * 4, 0, 255).astype(np.uint8)
        rows += [orig, rec, error]
    n, h, w = len(rows[0]), rows[0].shape[1] * scale, rows[0].shape[2] * scale
    sheet = np.full((len(rows) * (h + gap) + gap, n * (w + gap) + gap, 3), 255, dtype=np.uint8)
    for r, row in enumerate(rows):
        for c, img in enumerate(row):
            y, x = gap + r * (h + gap), gap + c * (w + gap)
            sheet[y:y + h, x:x + w] = img.repeat(scale, 0).repeat(scale, 1)
    with atomic_path(path) as tmp:
        Image.fromarray(sheet).save(tmp, format="PNG")


def export_autoencoder(model: CausalVAE, cfg: AutoencoderTrainConfig, folder: str | os.PathLike,
                       **extra_metrics) -> CausalVAE:
    """Measure the latent normalisation and metrics, then write the folder atomically.

    Writes ``vae.safetensors`` (official key names), ``vae_config.json`` (VAEConfig fields),
    ``metrics.json`` and ``recon.png``. Returns the model rebuilt with the measured config.
    """
    model.eval()
    shift, scale = latent_statistics(model, cfg)
    vae_cfg = dataclasses.replace(model.config, shifting_factor=shift, scaling_factor=scale)
    final = CausalVAE(vae_cfg).eval()
    final.load_state_dict(model.state_dict(), strict=True)
    metrics, shown = evaluate(final, cfg)
    metrics |= timing(final, cfg.image_size) | extra_metrics
    metrics |= {"parameters": sum(p.numel() for p in final.parameters()),
                "shifting_factor": shift, "scaling_factor": scale, "seed": cfg.seed}
    log.info("metrics: %s", json.dumps(metrics))
    with atomic_dir(folder) as tmp:
        save_safetensors(final.state_dict(), tmp / "vae.safetensors", metadata={"format": "pt"})
        write_json(dataclasses.asdict(vae_cfg), tmp / "vae_config.json")
        write_json(metrics, tmp / "metrics.json")
        contact_sheet(shown, tmp / "recon.png")
    return final


def load_autoencoder(folder: str | os.PathLike) -> CausalVAE:
    """Load an exported folder (``vae_config.json`` + ``vae.safetensors``) with full key checks."""
    folder = Path(folder)
    path = folder / "vae_config.json"
    if not path.is_file():
        raise FileNotFoundError(f"no vae_config.json in {folder}; pass a folder written by export_autoencoder")
    values = json.loads(path.read_text())
    cfg = VAEConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})
    model = CausalVAE(cfg)
    return load_into(model, read_state_dict(folder / "vae.safetensors", "VAE weights"), f"VAE {folder}").eval()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vincie_train.autoencoder", description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="run folder (checkpoint, metrics.jsonl, train.log, final/)")
    parser.add_argument("--minutes", type=float, default=None, help="wall-clock training budget")
    parser.add_argument("--steps", type=int, default=AutoencoderTrainConfig.max_steps,
                        help="schedule length (an upper bound with --minutes)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=AutoencoderTrainConfig.batch_size)
    parser.add_argument("--lr", type=float, default=AutoencoderTrainConfig.lr)
    parser.add_argument("--threads", type=int, default=AutoencoderTrainConfig.num_threads)
    parser.add_argument("--no-resume", action="store_true", help="start over even if a checkpoint exists")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        handlers=[logging.StreamHandler(), logging.FileHandler(out / "train.log")])
    cfg = AutoencoderTrainConfig(seed=args.seed, max_steps=args.steps, max_minutes=args.minutes,
                                 batch_size=args.batch_size, lr=args.lr, num_threads=args.threads)
    try:
        train_autoencoder(cfg, out, resume=not args.no_resume)
    except (ValueError, FileNotFoundError) as exc:
        log.error("%s", exc)
        return 2
    print(f"wrote {out / 'final'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
