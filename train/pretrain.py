"""Pretraining from video sessions with NIP + CSP + NSP (paper 3.2-3.3), for both attention variants.

``vincie train CONFIG.yaml`` runs :func:`train` with the YAML parsed into :class:`TrainConfig`. The
loop uses accelerate, so the same script runs on one CPU and on many GPUs (DDP), with bf16 autocast
on GPU, optional gradient checkpointing, EMA, AdamW with warmup, and checkpoints written atomically.
Every random choice of step ``s`` (data, composition, timesteps, noise) is drawn from a generator
seeded by ``(seed, s, rank)``, so killing a run and resuming it reproduces the uninterrupted run
exactly: a checkpoint only needs the model, EMA, optimizer and scheduler states and the step.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import json
import logging
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from vincie_sdk import block_causal as bc
from vincie_sdk.config import get_preset
from vincie_sdk.image import DIVISOR, preprocess
from vincie_sdk.loading import atomic_dir, atomic_path
from vincie_sdk.model import VincieModel
from vincie_sdk.models.dit import VincieTransformer
from vincie_sdk.pipeline import build_condition
from vincie_sdk.prompts import FrameKind
from vincie_sdk.sampler import FlowMatchSampler

from .data.format import CAMERA_NONE, SessionRecord
from .degrade import degrade_pixels
from .tasks import ComposedSession, CompositionConfig, compose, without_dropped

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------
# Configuration
# ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class DataConfig:
    # Shard files or folders (``vincie data build`` output), or edit folders/files of pairs and
    # sequences (``vincie data pairs``, docs/lora.md): e.g. pairwise-only training from scratch.
    shards: tuple[str, ...] = ()
    min_turns: int = 1  # sessions are cut to a random number of turns in [min_turns, max_turns]
    max_turns: int = 4
    shuffle_buffer: int = 512
    # False: keep only the turns whose camera is static (sessions are split at camera-move turns). Pans
    # and zooms change every pixel; a small model on a short budget learns local edits faster without
    # them (the shapes recipe; the paper keeps them, with camera tags).
    camera_moves: bool = True
    # Keep only turns of these categories (``TurnRecord.category``; sessions are split at the others).
    # Empty = all. For a curriculum: e.g. local edits first, then everything.
    categories: tuple[str, ...] = ()
    # Share of the drawn samples that end at a turn phrased by reference to the history ("put the red
    # circle back", ``vincie data build --back-phrasing``) and reach back to the frame it refers to. Drawn
    # uniformly, a few percent of the targets are such turns, and a model trained on them for an hour
    # did not learn to resolve them (docs/training.md, stage 4).
    recall_share: float = 0.0
    # Share of the drawn samples that end at a turn of one of these categories (after ``recall_share``'s
    # draw): more of the edits a model does worst, without dropping the others' (``categories`` does that).
    focus_categories: tuple[str, ...] = ()
    focus_share: float = 0.0


@dataclass(frozen=True)
class ObjectiveConfig:
    """Flow-matching loss settings, shared by pretraining and LoRA fine-tuning (both configs extend it)."""

    timestep_loc: float = 0.0  # logit-normal training timesteps
    timestep_scale: float = 1.0
    timestep_shift: float = 1.0  # warp training timesteps like the sampler's shift (1 = plain logit-normal)
    timestep_uniform: float = 0.0  # share of timesteps drawn uniformly (covers t ~ T, where sampling starts)
    timestep_top: float = 0.0  # share drawn from [0.95 T, T], where sampling starts (see sample_training_timesteps)
    # Lower bound on B(t) when a non-velocity prediction is converted to v for the loss: the loss is then
    # the x0 error / max(B, min_sigma)^2, so almost clean samples do not dominate (cf. JiT's clamp).
    min_sigma: float = 0.25
    # Extra loss weight on the latent pixels an image target changes from its source (0 = the plain mean).
    # Edits touch a few percent of the pixels; without it the loss is mostly "copy the rest".
    changed_weight: float = 0.0
    # Targets that change more than this share of their latent pixels (background, lighting) get no extra
    # weight. Upweighting whole-frame changes made the model hedge at t ~ T between copying its source and
    # repainting every pixel (white backgrounds came out grey before the text could decide).
    changed_max_share: float = 0.3
    # History degradation (block-causal, pixel-space models; ``vincie_train.degrade``): the probability that
    # a history image after the first is seen, as context only, blurred (Gaussian sigma uniform up to
    # ``context_blur`` pixels) and noised (std uniform up to ``context_noise``, images in [-1, 1]). At
    # inference those frames are the model's own outputs; trained on exact frames only, ``vincie-shapes``
    # failed most second turns.
    context_degrade: float = 0.0
    context_blur: float = 0.8
    context_noise: float = 0.05


@dataclass(frozen=True)
class TrainConfig(ObjectiveConfig):
    """A pretraining run. YAML keys mirror these fields (nested: ``data``, ``composition``)."""

    out_dir: str = "runs/pretrain"
    preset: str = "vincie-shapes"  # architecture to train (vincie_sdk.config preset)
    attention: str | None = None  # override the preset's variant: "full" or "block_causal"
    # Override ``DiTConfig.prompt_position`` ("cursor" or "frame"): no new weights, so also on ``init``.
    prompt_position: str | None = None
    # Override ``DiTConfig.target_prompts`` ("all" or "own"): no new weights, so also on ``init``.
    target_prompts: str | None = None
    prediction: str | None = None  # override the preset's output (config.PREDICTION_KINDS); fresh models only if it changes the width
    # Override the preset's DiT patch (t, h, w) in latent pixels: the token size. Fresh models only (it
    # changes the DiT's shapes); the exported config records it.
    patch_size: tuple[int, int, int] | None = None
    # Override the preset's ``DiTConfig.frame_position`` (absolute in-frame position features, 0 = off),
    # ``pixel_head`` (hidden channels of the per-pixel output head, 0 = off) and ``pixel_fold``. Fresh
    # models only (they change the weights).
    frame_position: int | None = None
    pixel_head: int | None = None
    pixel_fold: int | None = None
    # Override the preset's working resolution (``SessionConfig.resolution``) and the multiple its sides are
    # cropped to (``size_multiple``); they change no weights and the exported config records them.
    resolution: int | None = None
    size_multiple: int | None = None
    init: str | None = None  # a model folder to start from (e.g. the trained autoencoder + fresh DiT)
    vae: str | None = None  # folder with vae.safetensors (+ vae_config.json) for a fresh model
    train_text_encoder: bool = True
    data: DataConfig = field(default_factory=DataConfig)
    composition: CompositionConfig = field(default_factory=CompositionConfig)
    batch_size: int = 8
    lr: float = 3e-4
    text_lr: float | None = None  # default: lr
    weight_decay: float = 0.01
    warmup_steps: int = 200
    decay_to: float = 0.1  # cosine decay of the learning rate down to this fraction at max_steps
    grad_clip: float = 1.0
    max_steps: int = 100_000
    max_minutes: float | None = None  # stop (after a checkpoint) when this much time was spent in total
    # Stop at this step although the learning-rate schedule runs to ``max_steps``: the branch point of a
    # later stage that starts from this run's model (``init``) with other data (the shapes recipe's stage 3).
    stop_step: int | None = None
    ema_decay: float = 0.999
    mixed_precision: str = "auto"  # "auto" = bf16 on GPU, none on CPU
    gradient_checkpointing: bool = False
    checkpoint_minutes: float = 5.0
    # Keep the exported EMA model of every checkpoint as snapshots/step<N>/ (about 8 MB each for
    # vincie-shapes), to evaluate a learning curve after the run; model/ is always the latest.
    keep_snapshots: bool = False
    log_every: int = 10
    seed: int = 0
    threads: int | None = None  # torch CPU threads

    @classmethod
    def from_dict(cls, data: dict) -> "TrainConfig":
        data = dict(data)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"train config: unknown keys {unknown}; known keys: {sorted(known)}")
        if "data" in data:
            d = dict(data["data"])
            for key in ("shards", "categories", "focus_categories"):  # YAML lists → the dataclass's tuples
                d[key] = tuple(d.get(key, ()))
            data["data"] = DataConfig(**d)
        if "composition" in data:
            data["composition"] = CompositionConfig(**data["composition"])
        if data.get("patch_size") is not None:
            data["patch_size"] = tuple(data["patch_size"])
        return cls(**data)

    @classmethod
    def from_yaml(cls, path: str | Path) -> "TrainConfig":
        import yaml

        try:
            return cls.from_dict(yaml.safe_load(Path(path).read_text()) or {})
        except FileNotFoundError:
            raise FileNotFoundError(f"train config not found: {path}") from None


# ----------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------

def kept_parts(record: SessionRecord, keep) -> list[SessionRecord]:
    """The maximal runs of consecutive turns with ``keep(turn)`` true, each as a session."""
    parts, start = [], None
    for i, turn in enumerate(record.turns + [None]):
        kept = turn is not None and keep(turn)
        if kept and start is None:
            start = i
        elif not kept and start is not None:
            parts.append(SessionRecord(f"{record.key}-{start}", record.frames[start: i + 1], record.turns[start: i],
                                       record.provenance))
            start = None
    return parts


def back_phrasing(turn) -> dict | None:
    """The turn's phrasing by reference to the history, ``{"instruction", "span"}``, if annotated
    (``vincie data build --back-phrasing``)."""
    return (turn.extra or {}).get("back")


def instructions_of(turn) -> list[str]:
    """Every wording a turn can be trained with: its instruction and, if annotated, its back phrasing."""
    back = back_phrasing(turn)
    return [turn.instruction] + ([back["instruction"]] if back else [])


def with_back_instructions(record: SessionRecord) -> SessionRecord:
    """The session with each turn that has a back phrasing (``extra["back"]``, written by the synthetic
    annotator with ``--back-phrasing``) worded by it when the session holds the frame that phrasing
    refers to (``span`` frames before the turn's source); turns cut off from it keep the explicit one."""
    def worded(k: int, turn):
        back = back_phrasing(turn)
        return dataclasses.replace(turn, instruction=back["instruction"]) if back and k >= int(back["span"]) else turn

    return SessionRecord(record.key, record.frames, [worded(k, t) for k, t in enumerate(record.turns)],
                         record.provenance)


def recall_turns(sessions: list[SessionRecord], min_turns: int, max_turns: int) -> list[tuple[int, int, int]]:
    """``(session, turn, fewest turns)`` for every turn with a back phrasing that a sample of at most
    ``max_turns`` turns ending at it can hold together with the frame it refers to (``span`` frames
    before its source): the sample needs at least ``span + 1`` turns (and ``min_turns``)."""
    out = []
    for s, record in enumerate(sessions):
        for k, turn in enumerate(record.turns):
            back = back_phrasing(turn)
            if back:
                fewest = max(int(back["span"]) + 1, min_turns)
                if fewest <= min(max_turns, k + 1):
                    out.append((s, k, fewest))
    return out


def categories_in(sessions: list[SessionRecord]) -> list[str]:
    """The sorted turn categories of ``sessions`` (for error messages)."""
    return sorted({t.category for s in sessions for t in s.turns})


def static_camera_parts(record: SessionRecord) -> list[SessionRecord]:
    """The maximal runs of consecutive static-camera turns of a session, each as a session."""
    return kept_parts(record, lambda turn: (turn.camera or CAMERA_NONE) == CAMERA_NONE)


class SessionPool:
    """All sessions of the configured shards in memory (our synthetic shards are small), drawn by step.

    Drawing by ``(seed, step, rank)`` instead of iterating makes the data position part of the step.
    """

    def __init__(self, config: DataConfig) -> None:
        from .data.edits import read_edits
        from .data.format import read_sessions

        if not config.shards:
            raise ValueError("train config: data.shards is empty; build shards with `vincie data build`")
        self.sessions: list[SessionRecord] = []
        for path in config.shards:
            p = Path(path).expanduser()
            # A shard folder also holds JSON summaries, which are not edit rows: read only its shards.
            shards = p.suffix == ".tar" or (p.is_dir() and any(p.glob("*.tar")))
            self.sessions.extend(read_sessions(p) if shards else read_edits(p))
        if not self.sessions:
            raise ValueError(f"no sessions found in {list(config.shards)}")
        # Everything read, before filtering: the text encoder's vocabulary comes from it, so that a run
        # can change its filter on resume without changing the model's shape.
        self.corpus = self.sessions
        if not config.camera_moves:
            self.sessions = [part for s in self.sessions for part in static_camera_parts(s)]
            if not self.sessions:
                raise ValueError(f"no static-camera turns in {list(config.shards)} (data.camera_moves: false)")
        if config.categories:
            wanted = set(config.categories)
            self.sessions = [part for s in self.sessions for part in kept_parts(s, lambda t: t.category in wanted)]
            if not self.sessions:
                raise ValueError(f"no turns of categories {sorted(wanted)} in {list(config.shards)} "
                                 f"(data.categories); the shards have {categories_in(self.corpus)}")
        self.config = config
        self._index_ending_turns()
        log.info("loaded %d sessions from %s", len(self.sessions), list(config.shards))

    @classmethod
    def from_sessions(cls, sessions: list[SessionRecord], config: DataConfig) -> "SessionPool":
        """A pool over sessions already in memory (``config.shards`` is not read)."""
        if not sessions:
            raise ValueError("SessionPool: no sessions")
        pool = cls.__new__(cls)
        pool.sessions, pool.config = list(sessions), config
        pool.corpus = pool.sessions
        pool._index_ending_turns()
        return pool

    def _index_ending_turns(self) -> None:
        self.recall_turns = recall_turns(self.sessions, self.config.min_turns, self.config.max_turns)
        if self.config.recall_share > 0 and not self.recall_turns:
            raise ValueError(f"data.recall_share={self.config.recall_share} but no turn of {list(self.config.shards)} "
                             "has a back phrasing within reach of a sample of data.max_turns turns (build the "
                             "shards with `vincie data build --back-phrasing`)")
        wanted = set(self.config.focus_categories)
        self.focus_turns = [(s, k) for s, record in enumerate(self.sessions) for k, turn in enumerate(record.turns)
                            if turn.category in wanted]
        if self.config.focus_share > 0 and not self.focus_turns:
            raise ValueError(f"data.focus_share={self.config.focus_share} but no turn of the kept sessions has a "
                             f"category in data.focus_categories={sorted(wanted)}; "
                             f"they have {categories_in(self.sessions)}")

    def draw(self, rng: np.random.Generator, n: int) -> list[SessionRecord]:
        out = []
        c = self.config
        for _ in range(n):
            # No extra draw without a share: earlier runs resume on the same samples.
            if c.recall_share > 0 and rng.random() < c.recall_share:
                s, turn, shortest = self.recall_turns[int(rng.integers(len(self.recall_turns)))]
                window = self._ending_at(rng, s, turn, shortest)
            elif c.focus_share > 0 and rng.random() < c.focus_share:
                s, turn = self.focus_turns[int(rng.integers(len(self.focus_turns)))]
                window = self._ending_at(rng, s, turn, min(c.min_turns, turn + 1))
            else:
                s = int(rng.integers(len(self.sessions)))
                n_turns = len(self.sessions[s].turns)
                turns = min(int(rng.integers(c.min_turns, c.max_turns + 1)), n_turns)
                window = (s, int(rng.integers(0, n_turns - turns + 1)), turns)
            s, start, turns = window
            record = self.sessions[s]
            out.append(with_back_instructions(SessionRecord(record.key, record.frames[start: start + turns + 1],
                                                            record.turns[start: start + turns], record.provenance)))
        return out

    def _ending_at(self, rng: np.random.Generator, s: int, turn: int, shortest: int) -> tuple[int, int, int]:
        """``(session, start, turns)`` of a window of ``shortest``..``max_turns`` turns ending at ``turn``."""
        turns = int(rng.integers(shortest, min(self.config.max_turns, turn + 1) + 1))
        return s, turn + 1 - turns, turns


# ----------------------------------------------------------------------------------------------
# Loss
# ----------------------------------------------------------------------------------------------

CHANGED_THRESHOLD = 0.1  # latent units (about 8/255 in pixel space for the shapes model)


class Objective:
    """Flow-matching loss of a batch of composed sessions, for either attention variant."""

    def __init__(self, dit: VincieTransformer, vae, text_encoder, sampler: FlowMatchSampler, config: ObjectiveConfig,
                 resolution: int, forward=None, size_multiple: int = DIVISOR) -> None:
        self.dit, self.vae, self.text_encoder, self.sampler = dit, vae, text_encoder, sampler
        self.forward = forward or dit  # the (possibly distributed-wrapped) module to call
        self.latent_cache: dict[bytes, torch.Tensor] = {}
        self.max_cached = 200_000
        self.config = config
        self.resolution, self.size_multiple = resolution, size_multiple
        if config.context_degrade and (dit.config.attention != "block_causal"
                                       or getattr(getattr(vae, "config", None), "kind", None) != "pixel"):
            raise ValueError("context_degrade needs a block-causal model in pixel space (it degrades history "
                             "frames in pixels each step; through a learned VAE that would be slow and lossy)")
        if config.changed_weight and dit.config.attention == "full" and dit.config.prediction == "velocity":
            raise ValueError("changed_weight needs the target's source latent, which the official full-attention "
                             "layout does not give a velocity model: use prediction 'source_residual' or the "
                             "block-causal variant")

    @torch.no_grad()
    def encode_frames(self, sessions: list[ComposedSession], device) -> list[torch.Tensor]:
        """VAE latents (N_b, h, w, C) per session. The autoencoder is frozen, so each distinct image is
        encoded once and its latent cached (keyed by a digest of its pixels)."""
        flat = self._encode([img for s in sessions for img in s.images], device)  # one encoder batch per step
        out, i = [], 0
        for s in sessions:
            out.append(torch.stack(flat[i: i + len(s.images)]))
            i += len(s.images)
        return out

    @torch.no_grad()
    def blank_latents(self, sessions: list[ComposedSession], device) -> list[torch.Tensor]:
        """Per session, the latent of an all-black frame of its size: the residual base of its mask
        targets for residual models (see ``VincieModel.blank_latent``)."""
        return self._encode([np.zeros_like(s.images[0]) for s in sessions], device)

    def _encode(self, images: list[np.ndarray], device) -> list[torch.Tensor]:
        from PIL import Image

        keys = [hashlib.blake2b(img.tobytes() + bytes(str(img.shape), "ascii"), digest_size=16).digest() for img in images]
        todo = {k: img for k, img in zip(keys, images) if k not in self.latent_cache}
        if todo:
            pixels = preprocess([Image.fromarray(img) for img in todo.values()], self.resolution, self.size_multiple) \
                if len({img.shape for img in todo.values()}) == 1 else \
                torch.cat([preprocess([Image.fromarray(img)], self.resolution, self.size_multiple) for img in todo.values()])
            latents = self.vae.encode_images(pixels.to(device, self.vae.dtype), sample=False).float()
            if len(self.latent_cache) + len(todo) > self.max_cached:
                kept = {k: self.latent_cache[k] for k in keys if k in self.latent_cache}
                self.latent_cache.clear()
                self.latent_cache.update(kept)
            self.latent_cache.update(zip(todo, latents))
        return [self.latent_cache[k] for k in keys]

    def fused_prompts(self, texts: list[list[str]], device) -> list[list[torch.Tensor]]:
        """Per session, per prompt j: [turn id j ; text states] (ids follow the official seq_concat)."""
        flat = [t for ts in texts for t in ts] + [""]
        states = self.text_encoder.encode(flat)
        empty = states.pop()
        out, i = [], 0
        for ts in texts:
            ids = self.dit.embed_prompt_ids(torch.arange(len(ts), device=device))
            out.append([torch.cat((ids[j: j + 1], states[i + j].float())) for j in range(len(ts))]
                       + [torch.cat((ids[j: j + 1], empty.float())) for j in range(len(ts))])
            i += len(ts)
        return out

    def loss(self, sessions: list[ComposedSession], rng: torch.Generator, device) -> torch.Tensor:
        latents = self.encode_frames(sessions, device)
        if self.dit.config.attention == "block_causal":
            return self._block_causal_loss(sessions, latents, rng, device)
        return self._full_loss(sessions, latents, rng, device)

    def _timesteps(self, n: int, rng: torch.Generator, device) -> torch.Tensor:
        c = self.config
        return self.sampler.sample_training_timesteps(n, rng, c.timestep_loc, c.timestep_scale,
                                                      shift=c.timestep_shift, uniform=c.timestep_uniform,
                                                      top=c.timestep_top).to(device)

    def _residual_bases(self, sessions, device) -> list[torch.Tensor | None]:
        """Per session, the blank latent mask targets are residuals of (residual models only)."""
        if not self.dit.config.residual:
            return [None] * len(sessions)
        return self.blank_latents(sessions, device)

    def _block_causal_loss(self, sessions, latents, rng, device) -> torch.Tensor:
        fused = self.fused_prompts([s.prompts for s in sessions], device)
        sequences = []
        for s, lat, prompts, blank in zip(sessions, latents, fused, self._residual_bases(sessions, device)):
            n = len(s.prompts)
            targets = s.targets
            t = self._timesteps(len(targets), rng, device)
            noise = torch.randn((len(targets),) + tuple(lat.shape[1:]), generator=rng).to(device)
            nulls = [prompts[n + k - 1] if k in s.text_dropped else None for k in targets]
            bases = [None if s.kinds[k] == FrameKind.IMAGE else blank for k in targets]
            sequences.append(bc.TrainingSequence(lat, prompts[:n], s.sources, targets, t, noise, nulls, set(s.dropped),
                                                 bases, self._degraded_history(s, lat, rng)))
        packed = bc.pack_training(self.dit, self.sampler, sequences)
        packed = dataclasses.replace(packed, **{f: getattr(packed, f).to(device) for f in
                                                ("vid", "txt", "velocity", "x_t", "x0", "source", "row_timesteps",
                                                 "exact_source")})
        out = bc.training_velocity(self.dit, packed, forward=self.forward)
        prediction, clamp = self.dit.config.prediction, self.config.min_sigma
        per_row = (packed.velocity_of(out.float(), self.sampler, prediction, clamp)
                   - packed.velocity_target(self.sampler, prediction, clamp).float()).pow(2).mean(-1)
        rows = torch.tensor([lat.shape[1] * lat.shape[2] for s, lat in zip(sessions, latents) for _ in s.targets],
                            device=device)  # loss rows per target (sessions may differ in size)
        is_image = torch.tensor([s.kinds[k] == FrameKind.IMAGE for s in sessions for k in s.targets],
                                device=device).repeat_interleave(rows)
        return self._weighted(per_row, packed.x0, packed.exact_source, is_image, rows)

    @torch.no_grad()
    def _degraded_history(self, s: ComposedSession, lat: torch.Tensor, rng: torch.Generator) -> torch.Tensor | None:
        """The latents the history shows (``TrainingSequence.context``): each image after the first is,
        with probability ``context_degrade``, blurred and noised in pixel space; None if none is."""
        c = self.config
        if not c.context_degrade:
            return None
        picks = [k for k in range(1, len(s.kinds)) if s.kinds[k] == FrameKind.IMAGE
                 and float(torch.rand(1, generator=rng)) < c.context_degrade]
        if not picks:
            return None
        n = len(picks)
        blur = torch.rand(n, generator=rng) * c.context_blur
        noise = torch.rand(n, generator=rng) * c.context_noise
        pixels = self.vae.decode_images(lat[picks].to(self.vae.dtype))
        degraded = self.vae.encode_images(degrade_pixels(pixels.float(), blur, noise, rng).to(self.vae.dtype),
                                          sample=False).to(lat)
        out = lat.clone()
        out[picks] = degraded
        return out

    def _weighted(self, per_row: torch.Tensor, x0: torch.Tensor, source: torch.Tensor,
                  is_image: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """Mean of the per-row errors; with ``changed_weight`` > 0, rows of image targets that differ from
        their source count ``1 + changed_weight`` times (normalised, so the scale stays comparable), unless
        the target changes more than ``changed_max_share`` of its rows. ``rows``: loss rows per target."""
        lam = self.config.changed_weight
        if not lam:
            return per_row.mean()
        changed = ((x0 - source).abs().amax(-1) > CHANGED_THRESHOLD).float()
        target = torch.arange(len(rows), device=rows.device).repeat_interleave(rows)
        share = torch.zeros(len(rows), device=rows.device).index_add_(0, target, changed) / rows
        local = (share <= self.config.changed_max_share)[target]
        weight = 1 + lam * changed * (is_image & local).float()
        return (weight * per_row).sum() / weight.sum()

    def _full_loss(self, sessions, latents, rng, device) -> torch.Tensor:
        """Official layout: one random target per session, all its frames noised at the same t."""
        views, view_latents = [], []
        for s, lat in zip(sessions, latents):
            target = int(torch.randint(1, len(s.images), (1,), generator=rng))
            view = without_dropped(s, target)
            keep = [k for k in range(target + 1) if k == 0 or k == target or k == s.sources[target - 1]
                    or k not in s.dropped]
            views.append((view, target in s.text_dropped))
            view_latents.append(lat[keep])
        fused = self.fused_prompts([v.prompts for v, _ in views], device)
        vids, shapes, txts, lens, t_all, targets_v, rows = [], [], [], [], [], [], []
        xts, x0s, bases = [], [], []
        row = 0
        t = self._timesteps(len(views), rng, device)
        blanks = self._residual_bases([v for v, _ in views], device)
        for b, ((view, drop_text), lat, prompts) in enumerate(zip(views, view_latents, fused)):
            n = len(view.prompts)
            texts = prompts[:n - 1] + [prompts[n + n - 1] if drop_text else prompts[n - 1]]
            x0 = lat  # (T+1, h, w, C): context frames then the target
            noise = torch.randn(x0.shape, generator=rng).to(device)
            xt = self.sampler.add_noise(x0, noise, t[b].expand(x0.shape[0]))
            residual = self.dit.config.residual
            cond = build_condition(x0[:-1], source=view.sources[-1] if residual else None)
            vids.append(torch.cat((xt, cond), -1).reshape(-1, 2 * x0.shape[-1] + 1))
            xts.append(xt.reshape(-1, x0.shape[-1]))
            x0s.append(x0.reshape(-1, x0.shape[-1]))
            mask_target = view.kinds[-1] != FrameKind.IMAGE and blanks[b] is not None
            bases.append((blanks[b] if mask_target else cond[-1, ..., :-1]).reshape(-1, x0.shape[-1]))
            shapes.append(list(x0.shape[:3]))
            txt = torch.cat(texts)
            txts.append(txt)
            lens.append([txt.shape[0]])
            frame = x0.shape[1] * x0.shape[2]
            rows.append(torch.arange(row + (x0.shape[0] - 1) * frame, row + x0.shape[0] * frame))
            targets_v.append(self.sampler.velocity_target(x0[-1], noise[-1]).reshape(-1, x0.shape[-1]))
            row += x0.shape[0] * frame
        out = self.forward(torch.cat(vids), torch.tensor(shapes), torch.cat(txts), torch.tensor(lens), t)
        rows = torch.cat(rows).to(device)
        prediction = self.dit.config.prediction
        if prediction == "velocity":
            return F.mse_loss(out[rows].float(), torch.cat(targets_v).float())
        source = torch.cat(bases)  # the target rows' residual bases, in row order
        x_t, x0 = torch.cat(xts)[rows], torch.cat(x0s)[rows]
        row_t = torch.cat([t[b].expand(s[0] * s[1] * s[2]) for b, s in enumerate(shapes)])[rows]
        clamp = self.config.min_sigma
        per_row = (self.sampler.velocity(out[rows].float(), x_t, source, row_t, prediction, clamp)
                   - self.sampler.x0_velocity(x0, x_t, row_t, clamp)).pow(2).mean(-1)
        is_image = torch.tensor([v.kinds[-1] == FrameKind.IMAGE for v, _ in views], device=device)
        frame_rows = torch.tensor([s[1] * s[2] for s in shapes], device=device)
        return self._weighted(per_row, x0, source, is_image.repeat_interleave(frame_rows), frame_rows)


# ----------------------------------------------------------------------------------------------
# Checkpoints, EMA, logging
# ----------------------------------------------------------------------------------------------

class EMA:
    """Exponential moving average of trainable parameters (kept in float32)."""

    def __init__(self, modules: dict[str, torch.nn.Module], decay: float) -> None:
        self.decay = decay
        self.shadow = {f"{name}.{k}": v.detach().float().clone() for name, m in modules.items()
                       for k, v in m.state_dict().items() if v.is_floating_point()}

    @torch.no_grad()
    def update(self, modules: dict[str, torch.nn.Module], step: int) -> None:
        d = min(self.decay, (1 + step) / (10 + step))  # warm-up: early averages forget faster
        for name, m in modules.items():
            for k, v in m.state_dict().items():
                key = f"{name}.{k}"
                if key in self.shadow:
                    self.shadow[key].mul_(d).add_(v.detach().float(), alpha=1 - d)

    def state_for(self, name: str) -> dict[str, torch.Tensor]:
        prefix = name + "."
        return {k[len(prefix):]: v for k, v in self.shadow.items() if k.startswith(prefix)}


def lr_lambda(config: TrainConfig):
    def f(step: int) -> float:
        if step < config.warmup_steps:
            return (step + 1) / config.warmup_steps
        progress = min(1.0, (step - config.warmup_steps) / max(1, config.max_steps - config.warmup_steps))
        return config.decay_to + (1 - config.decay_to) * 0.5 * (1 + math.cos(math.pi * progress))
    return f


def save_checkpoint(path: Path, *, step: int, elapsed: float, modules: dict, ema: EMA, optimizer, scheduler,
                    losses: list[float]) -> None:
    """One file with everything needed to resume exactly; written to a temp name then renamed."""
    state = {"step": step, "elapsed": elapsed, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
             "modules": {k: m.state_dict() for k, m in modules.items()}, "ema": ema.shadow, "losses": losses}
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: Path) -> dict:
    # Our own files, but still loaded without unpickling arbitrary objects.
    return torch.load(path, map_location="cpu", weights_only=True)


def plot_losses(losses: list[tuple[int, float]], path: Path) -> None:
    """Loss curve PNG (log scale, with a moving average)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not losses:
        return
    steps, values = zip(*losses)
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    ax.plot(steps, values, lw=0.6, alpha=0.4, label="loss")
    k = max(1, len(values) // 50)
    smooth = np.convolve(values, np.ones(k) / k, mode="valid")
    ax.plot(steps[k - 1:], smooth, lw=1.5, label=f"moving average ({k})")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("flow-matching MSE")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


# ----------------------------------------------------------------------------------------------
# The loop
# ----------------------------------------------------------------------------------------------

def build_model(config: TrainConfig, pool: "SessionPool") -> VincieModel:
    """The model to train: ``init`` if given, else a fresh preset with a trained autoencoder (``vae``)
    and a text encoder whose vocabulary is the training corpus' words."""
    from .embedded import extend_vocabulary, fresh_model, prompt_vocabulary

    vocab = prompt_vocabulary((text for r in pool.corpus for t in r.turns for text in instructions_of(t)),
                              (t.camera for r in pool.corpus for t in r.turns))
    if config.init:
        model = VincieModel.from_pretrained(config.init, dtype="float32")
        added = extend_vocabulary(model.text_encoder, vocab, seed=config.seed)
        if added:
            log.info("text encoder: %d new words from the data: %s", len(added), " ".join(added))
    else:
        preset = get_preset(config.preset)
        if _architecture(config):
            preset = preset.replace(dit=dataclasses.replace(preset.dit, **_architecture(config)))
        if config.prediction:  # may change the output width, so before the weights exist
            preset = preset.replace(dit=dataclasses.replace(preset.dit, prediction=config.prediction,
                                                            vid_out_channels=preset.dit.output_channels(config.prediction)))
        model = fresh_model(preset, vae_dir=config.vae, vocab=vocab, seed=config.seed)
    overrides = {k: v for k, v in (("attention", config.attention), ("prediction", config.prediction),
                                   ("prompt_position", config.prompt_position),
                                   ("target_prompts", config.target_prompts))
                 if v and v != getattr(model.config.dit, k)}
    for key, value in _architecture(config).items() if config.init else ():
        if value != getattr(model.config.dit, key):
            raise ValueError(f"TrainConfig: {key}={value} differs from the model in {config.init} "
                             f"({getattr(model.config.dit, key)}); it changes the weights, so train a fresh model for it")
    if overrides:
        if model.config.dit.output_channels(overrides.get("prediction", model.config.dit.prediction)) \
                != model.config.dit.vid_out_channels:
            raise ValueError(f"TrainConfig: prediction={config.prediction!r} changes the output width of the model "
                             f"in {config.init}; train a fresh model for it")
        new_dit_cfg = dataclasses.replace(model.config.dit, **overrides)
        model.config = model.config.replace(dit=new_dit_cfg)
        model.dit.config = new_dit_cfg
    session = {k: v for k, v in (("resolution", config.resolution), ("size_multiple", config.size_multiple))
               if v is not None}
    if session:
        model.config = model.config.replace(session=dataclasses.replace(model.config.session, **session))
    return model


def _architecture(config: TrainConfig) -> dict:
    """The DiT fields this run sets beyond its preset (the weight-changing overrides, fresh models only)."""
    fields = {k: getattr(config, k) for k in ("patch_size", "frame_position", "pixel_head", "pixel_fold")
              if getattr(config, k) is not None}
    if "patch_size" in fields:
        fields["patch_size"] = tuple(fields["patch_size"])
    return fields


def step_generators(seed: int, step: int, rank: int) -> tuple[np.random.Generator, torch.Generator]:
    mix = np.random.SeedSequence([seed, step, rank])
    rng = np.random.default_rng(mix)
    gen = torch.Generator().manual_seed(int(mix.generate_state(1, dtype=np.uint64)[0] % (2**63)))
    return rng, gen


@contextlib.contextmanager
def torch_threads(threads: int | None):
    """Use ``threads`` CPU threads inside the block (None: leave as is), then restore the setting."""
    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def train(config: TrainConfig, *, progress: bool = True, stop_after: int | None = None) -> Path:
    """Run (or resume) a pretraining run; returns the folder of the final EMA model.

    Args:
        stop_after: stop after this many steps in this call (tests use it to simulate a kill).
    """
    out = Path(config.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with torch_threads(config.threads):
        return _train(config, out, progress, stop_after)


def _train(config: TrainConfig, out: Path, progress: bool, stop_after: int | None) -> Path:
    accelerator = make_accelerator(config.mixed_precision)
    device = accelerator.device

    pool = SessionPool(config.data)
    model = build_model(config, pool)
    (out / "config.json").write_text(json.dumps({"train": _jsonable(dataclasses.asdict(config)),
                                                 "model": model.config.to_dict()}, indent=2))
    dit, text, vae = model.dit, model.text_encoder, model.vae
    dit.train().requires_grad_(True)
    dit.gradient_checkpointing = config.gradient_checkpointing
    text.train().requires_grad_(config.train_text_encoder)
    vae.eval().requires_grad_(False)
    modules = {"dit": dit, "text_encoder": text}
    groups = [{"params": [p for p in dit.parameters() if p.requires_grad], "lr": config.lr}]
    if config.train_text_encoder:
        groups.append({"params": [p for p in text.parameters() if p.requires_grad], "lr": config.text_lr or config.lr})
    lrs = [g["lr"] for g in groups]  # read before the scheduler rescales them
    optimizer = torch.optim.AdamW(groups, weight_decay=config.weight_decay, betas=(0.9, 0.99))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(config))
    ema = EMA(modules, config.ema_decay)

    ckpt = out / "checkpoint.pt"
    state = resume(ckpt, modules, optimizer, scheduler, ema, lrs=lrs)
    dit, text, optimizer, scheduler = accelerator.prepare(dit, text, optimizer, scheduler)
    vae.to(device)
    objective = Objective(accelerator.unwrap_model(dit), vae, accelerator.unwrap_model(text),
                          FlowMatchSampler(model.config.sampler), config, model.config.session.resolution, forward=dit,
                          size_multiple=model.config.session.size_multiple)

    def trained() -> dict:
        return {"dit": accelerator.unwrap_model(dit), "text_encoder": accelerator.unwrap_model(text)}

    def checkpoint(state: LoopState) -> None:
        save_checkpoint(ckpt, step=state.step, elapsed=state.elapsed, modules=trained(), ema=ema,
                        optimizer=optimizer, scheduler=scheduler, losses=state.losses)
        plot_losses(state.losses, out / "loss.png")
        export_model(model, ema, out / "model")
        if config.keep_snapshots:
            snapshot(out / "model", out / "snapshots" / f"step{state.step:07d}")
        exported = VincieModel.from_pretrained(out / "model")
        sample_grid(exported, pool, out / "samples" / f"step{state.step:07d}.png")
        check = {"step": state.step, "minutes": state.elapsed / 60, "text_sensitivity": text_sensitivity(exported, pool),
                 "copy_error": copy_error(exported, pool)}
        with (out / "checks.jsonl").open("a") as f:
            f.write(json.dumps(check) + "\n")

    run_steps(config, accelerator, out, state,
              draw=lambda rng: [compose(r, rng, config.composition) for r in pool.draw(rng, config.batch_size)],
              loss=lambda sessions, gen: objective.loss(sessions, gen, device),
              params=[p for g in groups for p in g["params"]], optimizer=optimizer, scheduler=scheduler,
              after_step=lambda step: ema.update(trained(), step), checkpoint=checkpoint,
              progress=progress, stop_after=stop_after, desc="pretrain")
    return out / "model"


# ----------------------------------------------------------------------------------------------
# Pieces shared with LoRA fine-tuning (vincie_train.lora)
# ----------------------------------------------------------------------------------------------

def make_accelerator(mixed_precision: str = "auto"):
    """An ``accelerate.Accelerator``: ``"auto"`` = bf16 autocast on GPU, none on CPU."""
    from accelerate import Accelerator

    mp = mixed_precision
    if mp == "auto":
        mp = "bf16" if torch.cuda.is_available() else "no"
    return Accelerator(mixed_precision=mp, cpu=not torch.cuda.is_available())


@dataclass
class LoopState:
    """Where a run is: optimizer steps done, seconds spent over all its sessions, (step, loss) history."""

    step: int = 0
    elapsed: float = 0.0
    losses: list = field(default_factory=list)


def resume(path: Path, modules: dict, optimizer, scheduler, ema: EMA, lrs: list[float] | None = None) -> LoopState:
    """Restore modules, optimizer, scheduler and EMA from a :func:`save_checkpoint` file, if there is one.

    ``lrs``: the configured base learning rate per parameter group; they replace the checkpoint's.
    """
    if not path.exists():
        return LoopState()
    state = load_checkpoint(path)
    for k, m in modules.items():
        m.load_state_dict(state["modules"][k])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    ema.shadow = state["ema"]
    # The configured learning rates win over the checkpoint's, so a run can be resumed with a new lr; the
    # schedule's position is kept.
    if lrs is not None:
        factor = scheduler.lr_lambdas[0](state["step"])
        for i, (group, base, lr) in enumerate(zip(optimizer.param_groups, list(scheduler.base_lrs), lrs)):
            if abs(base - lr) > 1e-12:
                log.warning("learning rate of parameter group %d: %.3g -> %.3g (from the config) at step %d",
                            i, base, lr, state["step"])
            group["initial_lr"], group["lr"] = lr, lr * factor
        scheduler.base_lrs = list(lrs)
        scheduler._last_lr = [g["lr"] for g in optimizer.param_groups]
    log.info("resumed %s at step %d (%.1f min)", path, state["step"], state["elapsed"] / 60)
    return LoopState(state["step"], state["elapsed"], [tuple(x) for x in state["losses"]])


def run_steps(config, accelerator, out: Path, state: LoopState, *, draw, loss, params, optimizer, scheduler,
              after_step, checkpoint, progress: bool = True, stop_after: int | None = None,
              desc: str = "train") -> None:
    """The optimisation loop of pretraining and LoRA fine-tuning, resumable exactly.

    Step ``s`` draws everything from :func:`step_generators` ``(config.seed, s, rank)``, so the run
    does not depend on where it was interrupted.

    Args:
        config: reads ``max_steps``, ``seed``, ``grad_clip``, ``log_every``, ``checkpoint_minutes``,
            ``max_minutes`` and (pretraining) ``stop_step``.
        state: from :func:`resume`; updated in place.
        draw: ``draw(rng)`` -> the step's batch (numpy generator).
        loss: ``loss(batch, gen)`` -> scalar loss tensor (torch generator), run under autocast.
        params: the parameters whose gradient norm is clipped.
        after_step: ``after_step(step)`` after each optimizer step (0-based step index; EMA update).
        checkpoint: ``checkpoint(state)`` on the main process when a checkpoint is due (every
            ``checkpoint_minutes``, at the end, when out of time, after ``stop_after`` steps).
        stop_after: stop after this many steps in this call (tests use it to simulate a kill).
    """
    from tqdm import tqdm

    metrics = (out / "metrics.jsonl").open("a")
    end = min(config.max_steps, getattr(config, "stop_step", None) or config.max_steps)
    bar = tqdm(total=end, initial=state.step, desc=desc, unit="step", disable=not progress)
    start, last_ckpt, done_here = time.time() - state.elapsed, time.time(), 0
    try:
        while state.step < end:
            rng, gen = step_generators(config.seed, state.step, accelerator.process_index)
            batch = draw(rng)
            with accelerator.autocast():
                value_t = loss(batch, gen)
            accelerator.backward(value_t)
            if config.grad_clip:
                accelerator.clip_grad_norm_(params, config.grad_clip)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            after_step(state.step)
            state.step += 1
            done_here += 1
            value = float(value_t.detach())
            state.losses.append((state.step, value))
            bar.update(1)
            bar.set_postfix(loss=f"{value:.4f}")
            if state.step % config.log_every == 0:
                metrics.write(json.dumps({"step": state.step, "loss": value, "lr": scheduler.get_last_lr()[0],
                                          "minutes": (time.time() - start) / 60}) + "\n")
                metrics.flush()
            out_of_time = config.max_minutes is not None and (time.time() - start) / 60 >= config.max_minutes
            stop_now = stop_after is not None and done_here >= stop_after
            if ((time.time() - last_ckpt) / 60 >= config.checkpoint_minutes or out_of_time or stop_now
                    or state.step >= end):
                state.elapsed = time.time() - start
                if accelerator.is_main_process:
                    checkpoint(state)
                last_ckpt = time.time()
            if out_of_time or stop_now:
                break
    finally:
        bar.close()
        metrics.close()


def export_model(model: VincieModel, ema: EMA, folder: Path) -> Path:
    """Write the EMA weights as a loadable model folder (config.json + safetensors + text encoder)."""
    exported = copy.copy(model)
    dit = copy.deepcopy(model.dit)
    dit.load_state_dict({**dit.state_dict(), **ema.state_for("dit")})
    text = copy.deepcopy(model.text_encoder)
    text.load_state_dict({**text.state_dict(), **ema.state_for("text_encoder")})
    exported.dit, exported.text_encoder = dit.eval(), text.eval()
    return exported.save_pretrained(folder)


def snapshot(folder: Path, dest: Path) -> Path:
    """Copy a model folder to ``dest`` atomically; an existing ``dest`` (the same step, written before an
    interruption) is replaced."""
    with atomic_dir(dest) as tmp:
        shutil.copytree(folder, tmp, dirs_exist_ok=True)
    return dest


def _first_turns(model: VincieModel, pool: SessionPool, sessions: int):
    """The first turns of a few pool sessions (spread over the pool) as plain NIP samples, for the
    checks below: (composed sessions, sampler, latents, fused prompts)."""
    records = [r for r in pool.sessions[:: max(1, len(pool.sessions) // sessions)][:sessions]]
    plain = CompositionConfig(roe_prob=0.0, drop_current_frame=0.0, text_drop=0.0, word_drop=0.0)
    composed = [compose(SessionRecord(r.key, r.frames[:2], r.turns[:1], r.provenance), np.random.default_rng(0), plain)
                for r in records]
    sampler = FlowMatchSampler(model.config.sampler)
    objective = Objective(model.dit, model.vae, model.text_encoder, sampler, TrainConfig(), model.config.session.resolution,
                          size_multiple=model.config.session.size_multiple)
    latents = objective.encode_frames(composed, model.device)
    prompts = [p[0] for p in objective.fused_prompts([c.prompts for c in composed], model.device)]
    return composed, sampler, latents, prompts


@torch.no_grad()
def text_sensitivity(model: VincieModel, pool: SessionPool, sessions: int = 6, t: float = 600.0) -> float | None:
    """Is the model reading its instructions? The mean change of the DiT output on the first turn of a few
    pool sessions when each gets another session's instruction, relative to the output's mean size.

    0 means the instructions are ignored (the failure of a text pathway that never learned); a model that
    edits as asked typically shows tens of percent. Block-causal models only (``None`` otherwise).
    """
    if model.dit.config.attention != "block_causal":
        return None
    composed, sampler, latents, own = _first_turns(model, pool, sessions)
    other = own[1:] + own[:1]
    g = torch.Generator().manual_seed(0)
    outs = []
    for prompts in (own, other):
        seqs = [bc.TrainingSequence(lat, [p], c.sources, [1], torch.tensor([t]),
                                    torch.randn((1,) + tuple(lat.shape[1:]), generator=g).to(lat.device))
                for lat, p, c in zip(latents, prompts, composed)]
        g.manual_seed(0)  # the same noise for both passes
        outs.append(bc.training_velocity(model.dit, bc.pack_training(model.dit, sampler, seqs)).float())
    return float((outs[0] - outs[1]).abs().mean() / outs[0].abs().mean().clamp_min(1e-8))


@torch.no_grad()
def copy_error(model: VincieModel, pool: SessionPool, sessions: int = 6, ts: tuple[float, ...] = (1000.0, 950.0)
               ) -> dict[str, float] | None:
    """Does the model keep what an edit leaves alone, where sampling starts? The mean squared error (latent
    units) of the one-shot ``x0`` prediction on the unchanged latent pixels of the first turn of a few pool
    sessions, per timestep. At ``t = T`` the noisy frame holds nothing, so only the context can tell; a
    model under-trained there scores far worse at T than at 0.95 T, and its first sampling steps go astray.
    Block-causal models only (``None`` otherwise).
    """
    if model.dit.config.attention != "block_causal":
        return None
    composed, sampler, latents, prompts = _first_turns(model, pool, sessions)
    g = torch.Generator().manual_seed(0)
    errors = {}
    for t in ts:
        seqs = [bc.TrainingSequence(lat, [p], c.sources, [1], torch.tensor([t]),
                                    torch.randn((1,) + tuple(lat.shape[1:]), generator=g).to(lat.device))
                for lat, p, c in zip(latents, prompts, composed)]
        packed = bc.pack_training(model.dit, sampler, seqs)
        v = packed.velocity_of(bc.training_velocity(model.dit, packed).float(), sampler, model.dit.config.prediction)
        _, b = sampler.alpha_sigma(packed.row_timesteps)
        x0 = packed.x_t - b[:, None] * v
        kept = (packed.x0 - packed.source).abs().amax(-1) <= CHANGED_THRESHOLD
        errors[f"{t:g}"] = float((x0 - packed.x0).pow(2).mean(-1)[kept].mean())
    return errors


def sample_grid(model_dir: Path | VincieModel, pool: SessionPool, path: Path, sessions: int = 3, steps: int = 10) -> None:
    """A contact sheet of the exported model (a folder, or a loaded model) replaying the first turns of a
    few training sessions (ground truth on the left of each row's predictions), to look at progress."""
    from PIL import Image

    from vincie_sdk import Session
    from vincie_sdk.sheet import contact_sheet

    model = model_dir if isinstance(model_dir, VincieModel) else VincieModel.from_pretrained(model_dir)
    rows = []
    for record in pool.sessions[:: max(1, len(pool.sessions) // sessions)][:sessions]:
        s = Session(model, record.frames[0], seed=0, steps=steps)
        row = [(Image.fromarray(record.frames[0]), "source")]
        for k, turn in enumerate(record.turns[:3]):
            pred = s.edit(turn.instruction)
            row += [(Image.fromarray(record.frames[k + 1]), f"truth: {turn.instruction}"), (pred, "model")]
        rows.append(row)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        label = model.config.name if isinstance(model_dir, VincieModel) else model_dir
        contact_sheet(rows, cell=128, title=f"{label} samples").save(tmp, format="PNG")


def _jsonable(x):
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple, set)):
        return [_jsonable(v) for v in x]
    return x
