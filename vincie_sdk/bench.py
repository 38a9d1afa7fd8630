"""``vincie bench``: per-turn latency of a multi-turn session, official round trip vs the fast path
(or, for block-causal models, full attention vs the cached block-causal history).

"official" re-reads every image as uint8, re-encodes every image and prompt each turn and runs the
guided and unguided passes separately (what the official script does); "fast" (the default of
``Session``) keeps latents and prompt embeddings cached and packs both guidance passes into one
forward. Both run the same number of sampling steps on the same model.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from .config import VincieConfig
from .model import VincieModel
from .session import Session

BENCH_PROMPTS = ["add a red circle at the top left", "make the square blue", "move the circle to the center",
                 "remove the triangle", "make the background white", "add a green diamond at the bottom right"]


@dataclass
class TurnTiming:
    mode: str
    turn: int
    seconds: float
    dit_tokens: int  # tokens through the DiT over all forwards of the turn

    @property
    def tokens_per_second(self) -> float:
        return self.dit_tokens / self.seconds if self.seconds else 0.0


class _TokenCounter:
    """Counts tokens entering the DiT via a forward pre-hook."""

    def __init__(self, dit: torch.nn.Module) -> None:
        self.count = 0
        self._handle = dit.register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, module, args, kwargs):
        vid, _, txt = args[:3]
        self.count += vid.shape[0] // (module.config.patch_size[1] * module.config.patch_size[2]) + txt.shape[0]

    def close(self) -> None:
        self._handle.remove()


def bench_image(size: int = 256, seed: int = 0) -> Image.Image:
    """A deterministic test picture (gradient + blocks), so the benchmark needs no files."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    img = np.stack([x, y, 1 - x], -1) * 200 + 30
    for _ in range(4):
        a, b = rng.integers(0, size * 3 // 4, 2)
        img[a: a + size // 5, b: b + size // 5] = rng.integers(0, 255, 3)
    return Image.fromarray(img.astype(np.uint8))


def default_modes(model: VincieModel) -> tuple[str, str]:
    """official vs fast for the official layout; full attention vs the cached block-causal history for
    block-causal models (same weights: only the attention layout differs)."""
    return ("full", "cached") if model.config.dit.attention == "block_causal" else ("official", "fast")


def _as_full_attention(model: VincieModel) -> VincieModel:
    view = copy.copy(model)
    view.config = model.config.replace(dit=dataclasses.replace(model.config.dit, attention="full"))
    return view


def run_bench(model: VincieModel, turns: int = 5, steps: int | None = None, seed: int = 0,
              modes: tuple[str, ...] | None = None) -> list[TurnTiming]:
    """Time each turn of a ``turns``-turn session in each mode; returns one row per (mode, turn)."""
    image = bench_image(max(64, model.config.session.resolution))
    counter = _TokenCounter(model.dit)
    rows = []
    try:
        for mode in modes or default_modes(model):
            model.text_encoder.cache_clear()
            runner = _as_full_attention(model) if mode == "full" else model
            session = Session(runner, image, seed=seed, steps=steps, exact_official=(mode == "official"))
            for k in range(turns):
                counter.count = 0
                start = time.perf_counter()
                session.edit(BENCH_PROMPTS[k % len(BENCH_PROMPTS)])
                rows.append(TurnTiming(mode, k + 1, time.perf_counter() - start, counter.count))
    finally:
        counter.close()
    return rows


def format_table(rows: list[TurnTiming], config: VincieConfig, steps: int) -> str:
    """Markdown table: per turn, seconds and DiT tokens/s of each mode, and the slow/fast ratio."""
    by = {(r.mode, r.turn): r for r in rows}
    turns = sorted({r.turn for r in rows})
    slow, fast = list(dict.fromkeys(r.mode for r in rows))[:2]
    lines = [f"preset {config.name} ({config.dit.attention} attention), {steps} steps, cfg {config.sampler.cfg_scale}, "
             f"resolution {config.session.resolution}",
             "", f"| turn | {slow} s | {fast} s | {slow}/{fast} | {slow} tok/s | {fast} tok/s |",
             "|---:|---:|---:|---:|---:|---:|"]
    for t in turns:
        o, f = by.get((slow, t)), by.get((fast, t))
        ratio = f"{o.seconds / f.seconds:.2f}x" if o and f and f.seconds else "-"
        lines.append(f"| {t} | {o.seconds:.3f} | {f.seconds:.3f} | {ratio} | {o.tokens_per_second:,.0f} | "
                     f"{f.tokens_per_second:,.0f} |" if o and f else f"| {t} | - | - | - | - | - |")
    total_o = sum(r.seconds for r in rows if r.mode == slow)
    total_f = sum(r.seconds for r in rows if r.mode == fast)
    if total_f:
        lines.append(f"| all | {total_o:.3f} | {total_f:.3f} | {total_o / total_f:.2f}x | | |")
    return "\n".join(lines)
