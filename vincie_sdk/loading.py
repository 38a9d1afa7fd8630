"""Checkpoint files: reading, full-coverage key checks, recognising official checkpoints, writing.

All tensor files are read without executing code: ``.pth`` with ``torch.load(weights_only=True,
mmap=True)``, everything else with safetensors. Every file written goes to a temporary name first
and is renamed into place, so an interrupted run never leaves a half-written checkpoint.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Iterator, Mapping

import torch
from torch import nn

from .config import DiTConfig, VincieConfig

log = logging.getLogger(__name__)

# Some official checkpoints carry this wrapper prefix from a FLOPs counter; it is stripped on load.
_OFFICIAL_PREFIX = "_flops_wrap_module."

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device | str) -> torch.dtype:
    """'auto'/None → bfloat16 on CUDA, float32 elsewhere; names like 'bf16' → torch dtypes."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):
        return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
    try:
        return DTYPES[str(dtype).lower()]
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r}; use one of {sorted(DTYPES)} or 'auto'") from None


def read_state_dict(path: str | os.PathLike, what: str = "checkpoint") -> dict[str, torch.Tensor]:
    """Load a ``.pth``/``.pt`` (weights only, memory-mapped) or ``.safetensors`` state dict."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} file not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd = load_file(str(path))
        else:
            sd = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # corrupt, truncated or foreign files surface as many exception types
        raise ValueError(f"cannot read {what} {path}: {type(e).__name__}: {e} (corrupt or truncated file?)") from None
    if not isinstance(sd, Mapping) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ValueError(f"{what} {path} does not hold a flat state dict of tensors")
    return {k[len(_OFFICIAL_PREFIX):] if k.startswith(_OFFICIAL_PREFIX) else k: v for k, v in sd.items()}


def check_state_dict(module: nn.Module, state_dict: Mapping[str, torch.Tensor], what: str) -> None:
    """Raise a ValueError naming missing, unexpected and mis-shaped keys (full coverage required)."""
    expected = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in state_dict.items()}
    missing = sorted(set(expected) - set(got))
    unexpected = sorted(set(got) - set(expected))
    shapes = sorted(f"{k}: file {got[k]} vs model {expected[k]}" for k in set(got) & set(expected) if got[k] != expected[k])
    if missing or unexpected or shapes:
        parts = []
        for label, items in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", shapes)):
            if items:
                shown = ", ".join(items[:8]) + (f", ... ({len(items)} in all)" if len(items) > 8 else "")
                parts.append(f"{label}: {shown}")
        raise ValueError(f"{what} does not match the model: " + "; ".join(parts)
                         + ". Is this checkpoint for another preset/config?")


def load_into(module: nn.Module, state_dict: Mapping[str, torch.Tensor], what: str) -> nn.Module:
    """Check full coverage, then assign the tensors (works for modules built on the meta device)."""
    check_state_dict(module, state_dict, what)
    module.load_state_dict(dict(state_dict), strict=True, assign=True)
    return module


def dit_config_from_state_dict(sd: Mapping[str, torch.Tensor], **overrides) -> DiTConfig:
    """Recognise an official-layout DiT by its tensor shapes (the ``.pth`` files carry no config)."""
    try:
        dim, in_features = sd["vid_in.proj.weight"].shape
        txt_in_dim = sd["txt_in.weight"].shape[1]
        head_dim = sd["blocks.0.attn.norm_q." + ("vid" if "blocks.0.attn.norm_q.vid.weight" in sd else "all") + ".weight"].shape[0]
        n_freqs = sd["blocks.0.attn.rope.rope.freqs"].shape[0]
        max_prompts = sd["prompt_id_embedding.embedding.weight"].shape[0]
        out_features = sd["vid_out.proj.weight"].shape[0]
    except KeyError as e:
        raise ValueError(f"not an official VINCIE DiT state dict: key {e} is missing") from None
    layers = {int(m.group(1)) for k in sd if (m := re.match(r"blocks\.(\d+)\.", k))}
    mm = {int(m.group(1)) for k in sd if (m := re.match(r"blocks\.(\d+)\.attn\.proj_qkv\.vid\.", k))}
    patch = (1, 2, 2)
    cfg = dict(vid_in_channels=in_features // 4, vid_out_channels=out_features // 4, vid_dim=dim,
               txt_in_dim=txt_in_dim, heads=dim // head_dim, head_dim=head_dim, patch_size=patch,
               num_layers=len(layers), mm_layers=len(mm), rope_dim=3 * 2 * n_freqs, max_num_prompts=max_prompts)
    cfg.update(overrides)
    config = DiTConfig(**cfg)
    gate_key = next(k for k in sd if k.startswith("blocks.0.mlp.") and k.endswith("proj_in_gate.weight"))
    if sd[gate_key].shape[0] != config.mlp_hidden:
        raise ValueError(f"unsupported MLP width {sd[gate_key].shape[0]} (expected {config.mlp_hidden} for expand_ratio 4)")
    return config


# ----------------------------------------------------------------------------------------------
# Writing
# ----------------------------------------------------------------------------------------------

@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling path; rename it onto ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling directory; swap it into place at ``path`` on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            if old.exists():
                shutil.rmtree(old)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old)
        else:
            os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def save_safetensors(state_dict: Mapping[str, torch.Tensor], path: str | os.PathLike,
                     metadata: dict[str, str] | None = None) -> None:
    from safetensors.torch import save_file

    tensors = {k: v.detach().contiguous().cpu() for k, v in state_dict.items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)


def write_json(data: dict, path: str | os.PathLike) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2))


def read_config(folder: Path) -> VincieConfig:
    path = folder / "config.json"
    try:
        return VincieConfig.from_dict(json.loads(path.read_text()))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from None
