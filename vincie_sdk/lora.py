"""LoRA adapters of the DiT: read, check, apply with a strength, stack, merge, unload.

An adapter holds low-rank updates ``W <- W + strength * (alpha / r) * B @ A`` of some ``nn.Linear``
layers of :class:`~vincie_sdk.models.dit.VincieTransformer`, addressed by their official module names
(``blocks.3.attn.proj_qkv.vid``, ``blocks.7.mlp.all.proj_out``, ...). Files (written by
``vincie train-lora`` and :meth:`LoraAdapter.save`)::

    NAME/adapter_config.json          {"format": "vincie-lora/1", "peft_type": "LORA", "r", "lora_alpha",
                                       "target_modules": [...], "base_model": {"name", "dit": {...}}, ...}
    NAME/adapter_model.safetensors    "<module>.lora_A.weight" (r, in), "<module>.lora_B.weight" (out, r)

or one ``NAME.safetensors`` holding the same tensors with the JSON config in its metadata (key
``vincie_lora``), which is what ComfyUI's model folders list. Tensor names follow peft's; peft's
``base_model.model.`` prefix is accepted on reading.

Example:
    >>> model = VincieModel.from_pretrained("vincie-shapes")          # doctest: +SKIP
    >>> model.load_lora("runs/lora-pairs/adapter", strength=0.8)      # doctest: +SKIP
    >>> model.load_lora("style.safetensors", strength=0.5)            # stacked  # doctest: +SKIP
    >>> model.merge_lora()                                            # baked in  # doctest: +SKIP
"""

from __future__ import annotations

import fnmatch
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from .loading import atomic_dir, save_safetensors, write_json

log = logging.getLogger(__name__)

ADAPTER_FORMAT = "vincie-lora/1"
CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
METADATA_KEY = "vincie_lora"
PEFT_PREFIX = "base_model.model."

# DiT config fields that decide the shapes of the layers an adapter can target.
FINGERPRINT_FIELDS = ("vid_in_channels", "vid_out_channels", "vid_dim", "txt_in_dim", "heads", "head_dim",
                      "num_layers", "mm_layers", "expand_ratio", "patch_size")

# Named groups of module-name patterns over the official layout (fnmatch; ``*`` also matches dots).
TARGET_GROUPS: dict[str, tuple[str, ...]] = {
    "qkv": ("blocks.*.attn.proj_qkv.*",),
    "attn_out": ("blocks.*.attn.proj_out.*",),
    "attn": ("blocks.*.attn.proj_qkv.*", "blocks.*.attn.proj_out.*"),
    "mlp": ("blocks.*.mlp.*.proj_in_gate", "blocks.*.mlp.*.proj_in", "blocks.*.mlp.*.proj_out"),
    "io": ("vid_in.proj", "txt_in", "vid_out.proj"),
    "time": ("emb_in.proj_in", "emb_in.proj_hid", "emb_in.proj_out"),
}
# Stream of a block layer: "vid"/"txt" = the two weights of a dual-stream ("mm") block, "all" = shared block.
STREAMS = ("vid", "txt", "all")


# ----------------------------------------------------------------------------------------------
# Choosing layers
# ----------------------------------------------------------------------------------------------

def select_modules(dit: nn.Module, targets: Iterable[str] = ("qkv", "attn_out", "mlp"),
                   streams: Iterable[str] = STREAMS, blocks: Iterable[int] | None = None) -> list[str]:
    """Names of the DiT's Linear layers chosen by name patterns.

    Args:
        dit: the transformer.
        targets: group names of :data:`TARGET_GROUPS` or fnmatch patterns over module names.
        streams: keep block layers of these streams: ``vid``/``txt`` (dual-stream blocks), ``all``
            (shared blocks).
        blocks: block indices to adapt (negative counts from the end); None = every block. Layers
            outside the blocks (``io``, ``time``) are unaffected by this filter.

    Returns:
        Sorted module names, e.g. ``["blocks.0.attn.proj_qkv.txt", "blocks.0.attn.proj_qkv.vid", ...]``.

    Example:
        >>> from vincie_sdk.config import TINY
        >>> from vincie_sdk.models.dit import VincieTransformer
        >>> select_modules(VincieTransformer(TINY.dit), ["qkv"], streams=["vid"])
        ['blocks.0.attn.proj_qkv.vid']
    """
    patterns = [p for t in targets for p in TARGET_GROUPS.get(t, (t,))]
    streams = set(streams)
    if not patterns:
        raise ValueError("select_modules: targets is empty; use group names "
                         f"{sorted(TARGET_GROUPS)} or patterns such as 'blocks.*.attn.proj_qkv.*'")
    bad = streams - set(STREAMS)
    if bad:
        raise ValueError(f"select_modules: unknown streams {sorted(bad)}; use some of {list(STREAMS)}")
    n_blocks = len(getattr(dit, "blocks", []))
    wanted = None
    if blocks is not None:
        wanted = set()
        for b in blocks:
            if not -n_blocks <= int(b) < n_blocks:
                raise ValueError(f"select_modules: block {b} does not exist; the model has blocks 0..{n_blocks - 1}")
            wanted.add(int(b) % n_blocks)
    names = []
    for name, module in dit.named_modules():
        if not isinstance(module, nn.Linear) or not any(fnmatch.fnmatchcase(name, p) for p in patterns):
            continue
        parts = name.split(".")
        if parts[0] == "blocks":
            stream = next((p for p in parts[2:] if p in STREAMS), None)
            if stream not in streams or (wanted is not None and int(parts[1]) not in wanted):
                continue
        names.append(name)
    if not names:
        raise ValueError(f"select_modules: no Linear layer matches targets={list(targets)}, streams={sorted(streams)}, "
                         f"blocks={None if blocks is None else list(blocks)}; layer names look like "
                         "'blocks.0.attn.proj_qkv.vid' or 'blocks.5.mlp.all.proj_out'")
    return sorted(names)


def dit_fingerprint(dit_config) -> dict:
    """The shape-deciding fields of a DiT config (stored with an adapter, shown in mismatch errors)."""
    out = {}
    for f in FINGERPRINT_FIELDS:
        v = getattr(dit_config, f)
        out[f] = list(v) if isinstance(v, tuple) else v
    return out


# ----------------------------------------------------------------------------------------------
# The adapter
# ----------------------------------------------------------------------------------------------

@dataclass
class LoraAdapter:
    """Low-rank updates of some DiT Linear layers.

    Attributes:
        weights: module name -> (A (r, in_features), B (out_features, r)).
        alpha: the update of a layer is ``(alpha / r) * B @ A``.
        base: what it was trained on: ``{"name": config name, "dit": dit_fingerprint(...)}``.
        name: a label (the file or folder name when read).
        info: any other config entries (training settings), kept when saving.
    """

    weights: dict[str, tuple[torch.Tensor, torch.Tensor]]
    alpha: float
    base: dict = field(default_factory=dict)
    name: str = "lora"
    info: dict = field(default_factory=dict)

    @property
    def rank(self) -> int:
        return max(a.shape[0] for a, _ in self.weights.values())

    def scale(self, module: str) -> float:
        return self.alpha / self.weights[module][0].shape[0]

    def delta(self, module: str) -> torch.Tensor:
        """The float32 weight update ``(alpha / r) * B @ A`` of ``module``, (out_features, in_features)."""
        a, b = self.weights[module]
        return (b.float() @ a.float()) * self.scale(module)

    # -- checks -----------------------------------------------------------------------------------
    def check(self, dit: nn.Module, model_name: str | None = None) -> None:
        """Raise a ValueError naming what differs when this adapter cannot be applied to ``dit``
        (``model_name``: the model's config name, for the message)."""
        linears = {n: m for n, m in dit.named_modules() if isinstance(m, nn.Linear)}
        missing = [n for n in self.weights if n not in linears]
        shapes = []
        for n, (a, b) in self.weights.items():
            m = linears.get(n)
            if m is not None and (a.shape[1] != m.in_features or b.shape[0] != m.out_features):
                shapes.append(f"{n}: adapter {a.shape[1]}->{b.shape[0]}, model {m.in_features}->{m.out_features}")
        if missing or shapes:
            problems = []
            if missing:
                problems.append(f"{len(missing)} of its {len(self.weights)} layers do not exist in the model "
                                f"(e.g. {', '.join(missing[:3])})")
            if shapes:
                problems.append(f"{len(shapes)} layers have other shapes (e.g. {'; '.join(shapes[:2])})")
            raise ValueError(
                f"LoRA adapter {self.name!r} does not match this model: it was trained for "
                f"{_describe(self.base.get('name'), self.base.get('dit'))}, this model is "
                f"{_describe(model_name, _fingerprint_or_none(dit))}; "
                f"{' and '.join(problems)}. Use an adapter trained on this base model")
        if self.base.get("dit") and _fingerprint_or_none(dit) not in (None, self.base["dit"]):
            log.warning("LoRA adapter %r was trained for %s; applying it to %s (its layers fit)", self.name,
                        _describe(self.base.get("name"), self.base.get("dit")),
                        _describe(model_name, _fingerprint_or_none(dit)))

    # -- files ------------------------------------------------------------------------------------
    def config_dict(self) -> dict:
        ranks = {a.shape[0] for a, _ in self.weights.values()}
        config = {"format": ADAPTER_FORMAT, "peft_type": "LORA", "r": self.rank, "lora_alpha": self.alpha,
                  "target_modules": sorted(self.weights), "bias": "none", "base_model": self.base}
        if len(ranks) > 1:
            config["rank_pattern"] = {n: a.shape[0] for n, (a, _) in self.weights.items()}
        return {**self.info, **config}

    def state_dict(self) -> dict[str, torch.Tensor]:
        out = {}
        for n, (a, b) in sorted(self.weights.items()):
            out[f"{n}.lora_A.weight"] = a
            out[f"{n}.lora_B.weight"] = b
        return out

    def save(self, path: str | os.PathLike) -> Path:
        """Write a folder (config JSON + safetensors), or one file if ``path`` ends in ``.safetensors``."""
        path = Path(path)
        config = self.config_dict()
        if path.suffix == ".safetensors":
            save_safetensors(self.state_dict(), path, metadata={METADATA_KEY: json.dumps(config), "format": "pt"})
            return path
        with atomic_dir(path) as tmp:
            write_json(config, tmp / CONFIG_NAME)
            save_safetensors(self.state_dict(), tmp / WEIGHTS_NAME, metadata={"format": "pt"})
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "LoraAdapter":
        """Read an adapter folder or single ``.safetensors`` file (see the module docstring)."""
        from safetensors import safe_open

        path = Path(path).expanduser()
        if path.is_dir():
            config_file, weights_file = path / CONFIG_NAME, path / WEIGHTS_NAME
            if not config_file.is_file() or not weights_file.is_file():
                raise FileNotFoundError(f"{path} is not a LoRA adapter folder: expected {CONFIG_NAME} and {WEIGHTS_NAME}")
            config = json.loads(config_file.read_text())
        elif path.is_file():
            weights_file, config = path, None
        else:
            raise FileNotFoundError(f"LoRA adapter not found: {path} (a folder with {CONFIG_NAME} + {WEIGHTS_NAME}, "
                                    "or a .safetensors file written by vincie train-lora)")
        try:
            with safe_open(str(weights_file), framework="pt") as f:
                metadata = f.metadata() or {}
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as e:
            raise ValueError(f"cannot read LoRA weights {weights_file}: {e} (corrupt or not a safetensors file)") from None
        if config is None:
            if METADATA_KEY not in metadata:
                raise ValueError(f"{path} is a safetensors file without a VINCIE LoRA config (metadata key "
                                 f"{METADATA_KEY!r}); it is not an adapter written by vincie train-lora")
            config = json.loads(metadata[METADATA_KEY])
        return cls.from_state_dict(tensors, config, name=path.stem if path.is_file() else path.name)

    @classmethod
    def from_state_dict(cls, tensors: dict[str, torch.Tensor], config: dict, name: str = "lora") -> "LoraAdapter":
        """Build from ``<module>.lora_{A,B}.weight`` tensors (peft names accepted) and a config dict."""
        if config.get("peft_type", "LORA") != "LORA":
            raise ValueError(f"LoRA adapter {name!r}: peft_type={config.get('peft_type')!r}; only LORA adapters are supported")
        pairs: dict[str, dict[str, torch.Tensor]] = {}
        for key, t in tensors.items():
            key = key[len(PEFT_PREFIX):] if key.startswith(PEFT_PREFIX) else key
            for part in ("lora_A", "lora_B"):
                marker = f".{part}."
                if marker in key:
                    module = key.split(marker)[0]
                    pairs.setdefault(module, {})[part] = t
        incomplete = [m for m, p in pairs.items() if len(p) != 2]
        if not pairs or incomplete:
            raise ValueError(f"LoRA adapter {name!r}: expected lora_A/lora_B pairs per layer; "
                             f"{'found none' if not pairs else 'incomplete: ' + ', '.join(incomplete[:3])}")
        weights = {}
        for m, p in pairs.items():
            a, b = p["lora_A"], p["lora_B"]
            if a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[1]:
                raise ValueError(f"LoRA adapter {name!r}: layer {m} has A {tuple(a.shape)} and B {tuple(b.shape)}; "
                                 "expected A (r, in) and B (out, r)")
            weights[m] = (a, b)
        alpha = float(config.get("lora_alpha", max(a.shape[0] for a, _ in weights.values())))
        known = {"format", "peft_type", "r", "lora_alpha", "target_modules", "bias", "base_model", "rank_pattern"}
        base = config.get("base_model") if isinstance(config.get("base_model"), dict) else {}
        return cls(weights, alpha, base, name, {k: v for k, v in config.items() if k not in known})


def load_adapter(path: str | os.PathLike) -> LoraAdapter:
    """Read an adapter folder or ``.safetensors`` file (alias of :meth:`LoraAdapter.load`)."""
    return LoraAdapter.load(path)


def is_adapter(path: str | os.PathLike) -> bool:
    """True for an adapter folder or a ``.safetensors`` file carrying a VINCIE LoRA config (cheap: header only)."""
    p = Path(path)
    if p.is_dir():
        return (p / CONFIG_NAME).is_file() and (p / WEIGHTS_NAME).is_file()
    if p.suffix != ".safetensors" or not p.is_file():
        return False
    try:
        from safetensors import safe_open

        with safe_open(str(p), framework="pt") as f:
            return METADATA_KEY in (f.metadata() or {})
    except Exception:  # unreadable files are simply not adapters
        return False


def parse_lora_arg(text: str) -> tuple[str, float]:
    """``"path:strength"`` (strength optional, default 1.0) as given to ``--lora``.

    Example:
        >>> parse_lora_arg("runs/a/adapter:0.5"), parse_lora_arg("style.safetensors")
        (('runs/a/adapter', 0.5), ('style.safetensors', 1.0))
    """
    path, sep, tail = text.rpartition(":")
    if sep:
        try:
            return path, float(tail)
        except ValueError:
            pass
    if not text:
        raise ValueError("--lora needs PATH or PATH:STRENGTH")
    return text, 1.0


def _fingerprint_or_none(dit: nn.Module) -> dict | None:
    cfg = getattr(dit, "config", None)
    return dit_fingerprint(cfg) if cfg is not None and hasattr(cfg, "vid_dim") else None


def _describe(name: str | None, fp: dict | None) -> str:
    label = f"{name!r}" if name else "a DiT"
    if not fp:
        return label
    return f"{label} (vid_dim {fp['vid_dim']}, {fp['num_layers']} blocks, {fp['mm_layers']} dual-stream)"


# ----------------------------------------------------------------------------------------------
# Applying adapters
# ----------------------------------------------------------------------------------------------

class LoraStack:
    """Adapters applied to one DiT, each with its own strength, through forward hooks.

    Why hooks and not peft at inference: peft's injection replaces every targeted ``nn.Linear`` by a
    wrapper module, which renames its state-dict keys (``...proj_qkv.vid.base_layer.weight``). The SDK
    promises the official key layout everywhere (``save_pretrained``, single-file export, parity checks,
    ComfyUI weight patches address ``dit.<official key>``), and stacking adapters with per-adapter
    strengths would need peft's per-layer ``set_scale`` bookkeeping on top. A forward hook adding
    ``strength * (alpha / r) * B(A(x))`` to a layer's output leaves the module tree and the weights
    untouched, so unloading is exact; merging writes the same sum into the weights. Training, where
    peft's trainable wrappers, dropout and state-dict helpers do fit, uses peft (``vincie_train.lora``).

    Args:
        dit: the transformer to adapt.
        model_name: its model's config name (for error messages).
    """

    def __init__(self, dit: nn.Module, model_name: str | None = None) -> None:
        self.dit = dit
        self.model_name = model_name
        self.entries: dict[str, list] = {}  # name -> [LoraAdapter, strength], in application order
        self._handles: list = []

    def add(self, adapter: LoraAdapter, strength: float = 1.0, name: str | None = None) -> str:
        adapter.check(self.dit, self.model_name)
        name = name or adapter.name
        base, k = name, 2
        while name in self.entries:
            name, k = f"{base}-{k}", k + 1
        self.entries[name] = [adapter, float(strength)]
        self._install()
        return name

    def set_strength(self, name: str, strength: float) -> None:
        self._entry(name)[1] = float(strength)
        self._install()

    def remove(self, name: str | None = None) -> None:
        if name is None:
            self.entries.clear()
        else:
            self._entry(name)
            del self.entries[name]
        self._install()

    @torch.no_grad()
    def merge(self) -> None:
        """Add every applied adapter (times its strength) into the DiT weights, then drop the hooks."""
        modules = dict(self.dit.named_modules())
        for module_name, parts in self._by_module().items():
            weight = modules[module_name].weight
            delta = sum(adapter.delta(module_name).to(weight.device) * strength for adapter, strength in parts)
            weight.copy_((weight.float() + delta).to(weight.dtype))
        self.entries.clear()
        self._install()

    def _entry(self, name: str) -> list:
        if name not in self.entries:
            raise ValueError(f"no LoRA adapter named {name!r} is applied; applied: {list(self.entries) or 'none'}")
        return self.entries[name]

    def _by_module(self) -> dict[str, list[tuple[LoraAdapter, float]]]:
        out: dict[str, list] = {}
        for adapter, strength in self.entries.values():
            if strength == 0.0:  # exactly the base model, not base + 0 * update
                continue
            for module_name in adapter.weights:
                out.setdefault(module_name, []).append((adapter, strength))
        return out

    def _install(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
        modules = dict(self.dit.named_modules())
        for module_name, parts in self._by_module().items():
            weight = modules[module_name].weight
            terms = []
            for adapter, strength in parts:
                a, b = adapter.weights[module_name]
                terms.append((a.to(weight.device, weight.dtype), b.to(weight.device, weight.dtype),
                              strength * adapter.scale(module_name)))
            self._handles.append(modules[module_name].register_forward_hook(_LoraHook(terms)))


class _LoraHook:
    """``output + sum_i factor_i * B_i(A_i(x))`` for one Linear layer."""

    def __init__(self, terms: list[tuple[torch.Tensor, torch.Tensor, float]]) -> None:
        self.terms = terms

    def __call__(self, module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
        x = inputs[0]
        for a, b, factor in self.terms:
            output = output + F.linear(F.linear(x, a.to(x)), b.to(x)) * factor
        return output
