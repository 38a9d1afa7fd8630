"""LoRA fine-tuning of the DiT on editing data (pairs and multi-turn sequences), with peft.

``vincie train-lora CONFIG.yaml`` runs :func:`train_lora` with the YAML parsed into
:class:`LoraTrainConfig`. The base model is frozen (in ``base_dtype``); peft injects LoRA layers into the
Linear layers chosen by name (:func:`vincie_sdk.lora.select_modules`) and only those are trained, in
float32. Everything else is the pretraining machinery (:mod:`vincie_train.pretrain`): the sessions are
composed as in pretraining (:func:`vincie_train.tasks.compose`: context and text dropout, the inference
prompt format), the loss is the same flow-matching :class:`~vincie_train.pretrain.Objective` for both
attention variants, and the loop (:func:`~vincie_train.pretrain.run_steps`: accelerate, autocast,
gradient clipping, checkpoints with exact resume, metrics log, progress bar, loss plot) is shared.

Outputs in ``out_dir``: ``adapter/`` (``adapter_config.json`` + ``adapter_model.safetensors``, the EMA
weights; load with ``VincieModel.load_lora``), ``checkpoint.pt``, ``metrics.jsonl``, ``loss.png``,
``samples/stepNNNNNNN.png`` and ``config.json``.

Example:
    >>> adapter = train_lora(LoraTrainConfig.from_yaml("train/configs/lora_shapes_pairs.yaml"))  # doctest: +SKIP
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch

from vincie_sdk.lora import STREAMS, LoraAdapter, dit_fingerprint, select_modules
from vincie_sdk.loading import resolve_dtype
from vincie_sdk.model import VincieModel
from vincie_sdk.sampler import FlowMatchSampler

from .data.edits import read_edits
from .pretrain import (EMA, DataConfig, LoopState, Objective, ObjectiveConfig, SessionPool, _jsonable, lr_lambda,
                       make_accelerator, plot_losses, resume, run_steps, sample_grid, save_checkpoint, torch_threads)
from .tasks import CompositionConfig, compose

log = logging.getLogger(__name__)

ADAPTER_NAME = "default"  # peft's adapter name inside the training model


# ----------------------------------------------------------------------------------------------
# Configuration
# ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class LoraSpec:
    """Which layers get an adapter, and its size."""

    r: int = 8  # rank
    alpha: float = 8.0  # update = (alpha / r) * B @ A
    dropout: float = 0.0  # dropout on the adapter's input (training only)
    targets: tuple[str, ...] = ("qkv", "attn_out", "mlp")  # groups (vincie_sdk.lora.TARGET_GROUPS) or patterns
    streams: tuple[str, ...] = STREAMS  # vid / txt (dual-stream blocks), all (shared blocks)
    blocks: tuple[int, ...] | None = None  # block indices (negative from the end); None = all


@dataclass(frozen=True)
class EditSource:
    """One dataset: a folder or file of pairs / sequences / shards (see vincie_train.data.edits)."""

    path: str
    columns: dict = field(default_factory=dict)  # our field -> the file's column, e.g. {source: before}
    repeat: int = 1  # weight in the mix: its sessions are listed this many times
    limit: int | None = None  # at most this many sessions


@dataclass(frozen=True)
class EditDataConfig:
    sources: tuple[EditSource, ...] = ()
    min_turns: int = 1  # multi-turn sessions are cut to a random window of [min_turns, max_turns] turns
    max_turns: int = 4
    max_side: int | None = 1024  # shrink larger images when reading (memory); the model crops to its resolution


@dataclass(frozen=True)
class LoraTrainConfig(ObjectiveConfig):
    """A LoRA fine-tuning run. YAML keys mirror these fields (nested: ``lora``, ``data``, ``composition``);
    the loss settings (timesteps, ``min_sigma``, ``changed_weight``) come from :class:`ObjectiveConfig`."""

    out_dir: str = "runs/lora"
    base: str = "vincie-shapes"  # model folder, single file, or embedded name
    base_dtype: str = "auto"  # frozen base weights: auto = bfloat16 on GPU, float32 on CPU
    lora: LoraSpec = field(default_factory=LoraSpec)
    data: EditDataConfig = field(default_factory=EditDataConfig)
    composition: CompositionConfig = field(default_factory=lambda: CompositionConfig(word_drop=0.0))
    resolution: int | None = None  # training working area (default: the model's session resolution)
    batch_size: int = 4
    lr: float = 1e-4
    weight_decay: float = 0.0
    warmup_steps: int = 20
    decay_to: float = 1.0  # cosine decay to this fraction of lr at max_steps (1.0 = constant)
    grad_clip: float = 1.0
    max_steps: int = 500
    max_minutes: float | None = None
    ema_decay: float = 0.0  # 0 = the adapter is the live weights
    mixed_precision: str = "auto"  # "auto" = bf16 autocast on GPU, none on CPU
    gradient_checkpointing: bool = False
    checkpoint_minutes: float = 5.0
    log_every: int = 10
    samples: int = 3  # training sessions replayed in a sample sheet at each checkpoint (0 = none)
    sample_steps: int = 10
    seed: int = 0
    threads: int | None = None

    @classmethod
    def from_dict(cls, data: dict) -> "LoraTrainConfig":
        data = dict(data)
        _check_keys(cls, data, "train-lora config")
        if "lora" in data:
            lora = dict(data["lora"])
            _check_keys(LoraSpec, lora, "train-lora config 'lora'")
            for k in ("targets", "streams", "blocks"):
                if lora.get(k) is not None:
                    lora[k] = tuple(lora[k])
            data["lora"] = LoraSpec(**lora)
        if "data" in data:
            d = dict(data["data"])
            _check_keys(EditDataConfig, d, "train-lora config 'data'")
            sources = []
            for s in d.get("sources", ()):
                s = {"path": s} if isinstance(s, str) else dict(s)
                _check_keys(EditSource, s, "train-lora config data source")
                sources.append(EditSource(**s))
            d["sources"] = tuple(sources)
            data["data"] = EditDataConfig(**d)
        if "composition" in data:
            comp = {"word_drop": 0.0, **data["composition"]}
            _check_keys(CompositionConfig, comp, "train-lora config 'composition'")
            data["composition"] = CompositionConfig(**comp)
        return cls(**data)

    @classmethod
    def from_yaml(cls, path: str | Path) -> "LoraTrainConfig":
        import yaml

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"train-lora config not found: {path}")
        return cls.from_dict(yaml.safe_load(path.read_text()) or {})


def _check_keys(klass, data: dict, where: str) -> None:
    known = {f.name for f in dataclasses.fields(klass)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"{where}: unknown keys {unknown}; known keys: {sorted(known)}")


# ----------------------------------------------------------------------------------------------
# Adapters on the training model (peft)
# ----------------------------------------------------------------------------------------------

def inject_lora(dit: torch.nn.Module, spec: LoraSpec, seed: int = 0) -> list[str]:
    """Freeze ``dit`` and add trainable float32 LoRA layers (peft) to the chosen Linear layers.

    peft initialises A randomly and B to zero (the adapted model starts as the base); the random A comes
    from a generator seeded with ``seed``, so a run is reproducible.

    Returns:
        The adapted module names.
    """
    from peft import LoraConfig, inject_adapter_in_model

    names = select_modules(dit, spec.targets, spec.streams, spec.blocks)
    dit.requires_grad_(False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        inject_adapter_in_model(LoraConfig(r=spec.r, lora_alpha=spec.alpha, lora_dropout=spec.dropout,
                                           target_modules=names, bias="none"), dit, adapter_name=ADAPTER_NAME)
    for p in lora_parameters(dit).values():
        p.data = p.data.float()  # a bf16 base still trains float32 adapters
        p.requires_grad_(True)
    return names


def lora_parameters(dit: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    """The LoRA parameters of a peft-injected DiT, by name (``<module>.lora_A.default.weight``)."""
    return {n: p for n, p in dit.named_parameters() if ".lora_A." in n or ".lora_B." in n}


class AdapterParams:
    """The LoRA parameters seen as a module state (``state_dict``/``load_state_dict``), so the pretraining
    EMA and checkpoint helpers store the adapter only, never the frozen base."""

    def __init__(self, dit: torch.nn.Module) -> None:
        self.params = lora_parameters(dit)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {k: p.detach() for k, p in self.params.items()}

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        missing = sorted(set(self.params) - set(state))
        if missing:
            raise ValueError(f"checkpoint lacks LoRA parameters {missing[:3]}: it was written for other targets; "
                             "use a new out_dir or the original lora settings")
        for k, p in self.params.items():
            p.copy_(state[k])


def to_adapter(state: dict[str, torch.Tensor], spec: LoraSpec, model: VincieModel, info: dict | None = None) -> LoraAdapter:
    """An SDK :class:`LoraAdapter` from peft-named LoRA tensors."""
    tensors = {k.replace(f".{ADAPTER_NAME}.", "."): v.detach().float().cpu().clone() for k, v in state.items()}
    base = {"name": model.config.name, "dit": dit_fingerprint(model.config.dit)}
    return LoraAdapter.from_state_dict(tensors, {"lora_alpha": spec.alpha, "base_model": base,
                                                 "lora_dropout": spec.dropout, **(info or {})}, name="adapter")


# ----------------------------------------------------------------------------------------------
# The run
# ----------------------------------------------------------------------------------------------

def load_sessions(config: EditDataConfig) -> list:
    """Every session of every source, each source repeated ``repeat`` times."""
    if not config.sources:
        raise ValueError("train-lora config: data.sources is empty; give folders or files of pairs/sequences "
                         "(see docs/lora.md), e.g. from `vincie data pairs`")
    sessions = []
    for src in config.sources:
        records = read_edits(src.path, columns=src.columns, limit=src.limit, max_side=config.max_side)
        if not records:
            raise ValueError(f"train-lora: no usable session in {src.path}")
        log.info("%s: %d sessions (x%d)", src.path, len(records), src.repeat)
        sessions.extend(records * src.repeat)
    return sessions


def train_lora(config: LoraTrainConfig, *, progress: bool = True, stop_after: int | None = None) -> Path:
    """Run (or resume) a LoRA fine-tuning run; returns the adapter folder.

    Args:
        stop_after: stop after this many steps in this call (tests use it to simulate a kill).
    """
    out = Path(config.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with torch_threads(config.threads):
        return _train_lora(config, out, progress, stop_after)


def _train_lora(config: LoraTrainConfig, out: Path, progress: bool, stop_after: int | None) -> Path:
    accelerator = make_accelerator(config.mixed_precision)
    device = accelerator.device
    pool = SessionPool.from_sessions(load_sessions(config.data),
                                     DataConfig(min_turns=config.data.min_turns, max_turns=config.data.max_turns))
    model = VincieModel.from_pretrained(config.base, device=device, dtype=resolve_dtype(config.base_dtype, device))
    dit = model.dit
    targets = inject_lora(dit, config.lora, seed=config.seed)
    dit.train()
    dit.gradient_checkpointing = config.gradient_checkpointing
    resolution = config.resolution or model.config.session.resolution
    (out / "config.json").write_text(json.dumps({"train_lora": _jsonable(dataclasses.asdict(config)),
                                                 "model": model.config.to_dict(), "target_modules": targets}, indent=2))
    log.info("LoRA r=%d on %d layers of %s: %d trainable parameters", config.lora.r, len(targets), model.config.name,
             sum(p.numel() for p in lora_parameters(dit).values()))

    adapter_params = AdapterParams(dit)
    params = list(adapter_params.params.values())
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay, betas=(0.9, 0.99))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(config))
    modules = {"lora": adapter_params}
    ema = EMA(modules, config.ema_decay)
    ckpt = out / "checkpoint.pt"
    state = resume(ckpt, modules, optimizer, scheduler, ema, lrs=[config.lr])
    forward, optimizer, scheduler = accelerator.prepare(dit, optimizer, scheduler)
    objective = Objective(dit, model.vae, model.text_encoder, FlowMatchSampler(model.config.sampler), config,
                          resolution, forward=forward, size_multiple=model.config.session.size_multiple)

    def loss(sessions, gen):
        # LoRA dropout draws from the global generator: seed it from the step, so a resumed run is exact.
        torch.manual_seed((gen.initial_seed() + 1) % 2**63)
        return objective.loss(sessions, gen, device)

    def checkpoint(state: LoopState) -> None:
        save_checkpoint(ckpt, step=state.step, elapsed=state.elapsed, modules=modules, ema=ema, optimizer=optimizer,
                        scheduler=scheduler, losses=state.losses)
        plot_losses(state.losses, out / "loss.png")
        info = {"training": {"steps": state.step, "base": config.base, "data": [s.path for s in config.data.sources]}}
        to_adapter(ema.state_for("lora"), config.lora, model, info).save(out / "adapter")
        if config.samples:
            _samples(model, pool, out / "samples" / f"step{state.step:07d}.png", config, resolution)

    run_steps(config, accelerator, out, state,
              draw=lambda rng: [compose(r, rng, config.composition) for r in pool.draw(rng, config.batch_size)],
              loss=loss, params=params, optimizer=optimizer, scheduler=scheduler,
              after_step=lambda step: ema.update(modules, step), checkpoint=checkpoint,
              progress=progress, stop_after=stop_after, desc="train-lora")
    return out / "adapter"


def _samples(model: VincieModel, pool: SessionPool, path: Path, config: LoraTrainConfig, resolution: int) -> None:
    """The training model itself (live adapter weights, dropout off) replays a few training sessions."""
    view = copy.copy(model)  # shares the networks; only the session resolution may differ
    view.config = model.config.replace(session=dataclasses.replace(model.config.session, resolution=resolution))
    model.dit.eval()
    try:
        with torch.no_grad():
            sample_grid(view, pool, path, sessions=config.samples, steps=config.sample_steps)
    finally:
        model.dit.train()
