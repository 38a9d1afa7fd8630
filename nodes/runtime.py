"""ComfyUI side of a VINCIE model: checkpoint discovery, a small model cache, device management, progress.

* Checkpoints live in the ``vincie`` model folder (``models/vincie/`` or ``extra_model_paths.yaml``):
  official release folders (``dit.pth``, ``vae.pth``, ``llm14b/``) and folders in this project's format
  (``config.json``, ``dit.safetensors``, ...), plus the embedded model once it is installed.
* Weights are loaded on ComfyUI's offload device; the DiT and VAE (and the text encoder when it is
  placed on the GPU) are wrapped in ``comfy.model_patcher.ModelPatcher``s, so ComfyUI moves them to its
  torch device before a node uses them (:func:`prepare`) and unloads them when another model needs the
  memory or on ``/free``.
* Loaded models are cached here, keyed by (folder, dtype, device, text-encoder placement), never on a
  node class; an entry is dropped when ComfyUI unloads the model.
* LoRA adapters (``vincie_loras`` model folder) never touch a cached model: :func:`apply_lora` returns a
  new model value sharing the networks, whose DiT patcher is a clone carrying the adapter as ComfyUI
  weight patches. ComfyUI merges them into the weights when that value is used and restores the base
  weights when a value without them (or with other ones) is used next, exactly as for its own LoRAs.
"""

from __future__ import annotations

import copy
import logging
import os
import weakref
from collections import OrderedDict
from pathlib import Path

import comfy.model_management as mm
import comfy.model_patcher
import comfy.patcher_extension
import comfy.utils
import folder_paths
from comfy_api.latest import io
from torch import nn

log = logging.getLogger(__name__)

CATEGORY = "VINCIE"
FOLDER = "vincie"
LORA_FOLDER = "vincie_loras"
DTYPES = ("auto", "float32", "bfloat16", "float16")
TEXT_ENCODER_PLACEMENTS = ("gpu", "cpu", "offload")
CACHE_SIZE = 2

ModelSocket = io.Custom("VINCIE_MODEL")
SessionSocket = io.Custom("VINCIE_SESSION")

folder_paths.add_model_folder_path(FOLDER, os.path.join(folder_paths.models_dir, FOLDER))
folder_paths.add_model_folder_path(LORA_FOLDER, os.path.join(folder_paths.models_dir, LORA_FOLDER))

_CACHE: OrderedDict[tuple, object] = OrderedDict()  # key -> VincieModel, most recent last
_PATCHERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # VincieModel -> [ModelPatcher]


# ---------------------------------------------------------------------------------------------- discovery
def _embedded() -> tuple[Path, tuple[str, ...]]:
    from vincie_sdk.model import EMBEDDED_DIR, EMBEDDED_MODELS

    return EMBEDDED_DIR, EMBEDDED_MODELS


def is_checkpoint_dir(path: str | os.PathLike) -> bool:
    p = Path(path)
    return ((p / "config.json").is_file() and (p / "dit.safetensors").is_file()) or \
        ((p / "dit.pth").is_file() and (p / "vae.pth").is_file())


def is_single_file(path: str | os.PathLike) -> bool:
    """A ``.safetensors`` file written by ``VincieModel.save_single_file`` (its header names a config)."""
    p = Path(path)
    if p.suffix != ".safetensors" or not p.is_file():
        return False
    try:
        from safetensors import safe_open

        with safe_open(str(p), framework="pt") as f:
            return "vincie_config" in (f.metadata() or {})
    except Exception:  # unreadable files are simply not offered
        return False


def list_checkpoints() -> list[str]:
    """Names for the loader: installed embedded models first, then checkpoint folders (relative paths)."""
    root, embedded = _embedded()
    names = [n for n in embedded if (root / n / "config.json").is_file()]
    found = set()
    for base in folder_paths.get_folder_paths(FOLDER):
        for dirpath, dirnames, filenames in os.walk(base, followlinks=True):
            rel = os.path.relpath(dirpath, base)
            for name in filenames:
                if is_single_file(os.path.join(dirpath, name)):
                    found.add(os.path.normpath(os.path.join(rel, name)).replace(os.sep, "/"))
            if rel != "." and is_checkpoint_dir(dirpath):
                found.add(rel.replace(os.sep, "/"))
                dirnames[:] = []  # a checkpoint's subfolders (llm14b/, text_encoder/) are not checkpoints
            elif rel.count(os.sep) >= 2:
                dirnames[:] = []
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
    return names + sorted(found - set(names))


def resolve_checkpoint(name: str) -> str:
    """A loader name → what ``VincieModel.from_pretrained`` takes (the embedded name or a folder)."""
    root, embedded = _embedded()
    if name in embedded and (root / name / "config.json").is_file():
        return name
    bases = folder_paths.get_folder_paths(FOLDER)
    for base in bases:
        path = os.path.join(base, name)
        if is_checkpoint_dir(path) or is_single_file(path):
            return os.path.realpath(path)
    raise FileNotFoundError(f"VINCIE checkpoint {name!r} not found in the '{FOLDER}' model folders {bases}; "
                            "put a checkpoint folder (dit.pth + vae.pth + llm14b/, or config.json + "
                            "dit.safetensors + vae.safetensors + text_encoder/) or a single-file .safetensors there")


# ---------------------------------------------------------------------------------------------- loading
class _Weights(nn.Module):
    """What one ModelPatcher moves: a plain container, since the SDK modules own read-only ``device``s."""

    def __init__(self, **parts: nn.Module) -> None:
        super().__init__()
        for name, module in parts.items():
            self.add_module(name, module)


def load_model(checkpoint: str, dtype: str = "auto", text_encoder: str = "gpu"):
    """Load (or reuse) a VincieModel for ComfyUI's torch device; see the module docstring."""
    from vincie_sdk import VincieModel
    from vincie_sdk.loading import resolve_dtype

    if text_encoder not in TEXT_ENCODER_PLACEMENTS:
        raise ValueError(f"text_encoder={text_encoder!r}; use one of {TEXT_ENCODER_PLACEMENTS}")
    location = resolve_checkpoint(checkpoint)
    device, offload = mm.get_torch_device(), mm.unet_offload_device()
    torch_dtype = resolve_dtype(dtype, device)
    key = (location, str(torch_dtype), str(device), text_encoder)
    if key in _CACHE:
        _CACHE.move_to_end(key)
        return _CACHE[key]
    # Weights go to the offload device; ComfyUI moves them to `device` when a node needs them.
    # The text encoder starts on the CPU unless ComfyUI manages it ("gpu"); "offload" lets the SDK move it
    # to the device only while encoding (pointless, and cache-clearing, when the device is the CPU).
    model = VincieModel.from_pretrained(location, device=offload, dtype=torch_dtype,
                                        text_encoder_offload=text_encoder != "gpu")
    model.device = device
    model.text_encoder_offload = text_encoder == "offload" and device.type != "cpu"
    patchers = [comfy.model_patcher.ModelPatcher(_Weights(dit=model.dit, vae=model.vae), device, offload)]
    if text_encoder == "gpu":
        patchers.append(comfy.model_patcher.ModelPatcher(_Weights(text_encoder=model.text_encoder),
                                                         mm.text_encoder_device(), mm.text_encoder_offload_device()))
    for p in patchers:
        # Dropped on a real unload only: switching to a LoRA clone of the same weights detaches without unpatching.
        p.add_callback(comfy.patcher_extension.CallbacksMP.ON_DETACH,
                       lambda _patcher, unpatch_all=True, k=key: _CACHE.pop(k, None) if unpatch_all else None)
    _PATCHERS[model] = patchers
    _CACHE[key] = model
    while len(_CACHE) > CACHE_SIZE:
        _CACHE.popitem(last=False)
    return model


def list_loras() -> list[str]:
    """Adapters in the ``vincie_loras`` model folders: adapter folders and ``.safetensors`` files with a VINCIE
    LoRA config (relative paths)."""
    from vincie_sdk.lora import is_adapter

    found = set()
    for base in folder_paths.get_folder_paths(LORA_FOLDER):
        for dirpath, dirnames, filenames in os.walk(base, followlinks=True):
            rel = os.path.relpath(dirpath, base)
            if rel != "." and is_adapter(dirpath):
                found.add(rel.replace(os.sep, "/"))
                dirnames[:] = []
                continue
            found.update(os.path.normpath(os.path.join(rel, f)).replace(os.sep, "/") for f in filenames
                         if is_adapter(os.path.join(dirpath, f)))
            dirnames[:] = [d for d in dirnames if not d.startswith(".")] if rel.count(os.sep) < 2 else []
    return sorted(found)


def resolve_lora(name: str) -> str:
    from vincie_sdk.lora import is_adapter

    bases = folder_paths.get_folder_paths(LORA_FOLDER)
    for base in bases:
        path = os.path.join(base, name)
        if is_adapter(path):
            return os.path.realpath(path)
    raise FileNotFoundError(f"VINCIE LoRA {name!r} not found in the '{LORA_FOLDER}' model folders {bases}; put an "
                            "adapter folder (adapter_config.json + adapter_model.safetensors) or a .safetensors "
                            "adapter written by `vincie train-lora` there")


def apply_lora(model, name: str, strength: float):
    """A new model value with the adapter ``name`` applied at ``strength`` (the input is not changed).

    The networks are shared; the adapter lives as low-rank ComfyUI weight patches on a clone of the DiT's
    patcher, so no weights are copied and the cached base model keeps computing the base model.
    """
    from comfy.weight_adapter import LoRAAdapter
    from vincie_sdk.lora import LoraAdapter

    patchers = _PATCHERS.get(model)
    if not patchers:
        raise ValueError("this model has no ComfyUI patcher: connect a VINCIE Model Loader (or LoRA Loader) output")
    adapter = LoraAdapter.load(resolve_lora(name))
    adapter.check(model.dit, model.config.name)
    if strength == 0:
        return model
    dit_patcher = patchers[0].clone()
    patches = {f"dit.{module}.weight": LoRAAdapter(set(), (b, a, adapter.alpha, None, None, None))
               for module, (a, b) in adapter.weights.items()}
    applied = dit_patcher.add_patches(patches, strength)
    if len(applied) != len(patches):  # cannot happen after check(); guards against a renamed container
        raise ValueError(f"LoRA {name!r}: only {len(applied)} of {len(patches)} layers found in the model")
    patched = copy.copy(model)
    _PATCHERS[patched] = [dit_patcher, *patchers[1:]]
    return patched


def prepare(model) -> None:
    """Have ComfyUI put ``model``'s weights on its device (unloading other models if memory is short)."""
    patchers = _PATCHERS.get(model)
    if patchers:
        mm.load_models_gpu(patchers, force_full_load=True)


def cached_models() -> list:
    return list(_CACHE.values())


# ---------------------------------------------------------------------------------------------- progress
class Progress:
    """The SDK step callback: one ComfyUI progress tick per sampling step, interrupts checked every step.

    Args:
        total: sampling steps over the whole node run (all turns).
    """

    def __init__(self, total: int) -> None:
        mm.throw_exception_if_processing_interrupted()
        self.done = 0
        self.total = max(1, int(total))
        self.bar = comfy.utils.ProgressBar(self.total)

    def __call__(self, step: int, steps: int) -> None:
        mm.throw_exception_if_processing_interrupted()
        self.done += 1
        self.bar.update_absolute(self.done, max(self.total, self.done))


def resolved_steps(session, steps: int) -> int:
    """The number of sampling steps an operation will run (0 = the session's or the model's default)."""
    return int(steps or session.settings.steps or session.model.config.sampler.steps)


# ---------------------------------------------------------------------------------------------- shared inputs
SEED_MAX = 0xFFFFFFFFFFFFFFFF


def instruction_input(name: str = "instruction", default: str = "", tooltip: str | None = None) -> io.String.Input:
    return io.String.Input(name, multiline=True, default=default,
                           tooltip=tooltip or "What to change, in plain words (e.g. 'make the red square blue').")


def steps_input() -> io.Int.Input:
    return io.Int.Input("steps", default=0, min=0, max=1000,
                        tooltip="Sampling steps. 0: the session's default, else the model's (50 for VINCIE-3B).")


def cfg_input() -> io.Float.Input:
    return io.Float.Input("cfg", default=0.0, min=0.0, max=30.0, step=0.1, round=0.01,
                          tooltip="Classifier-free guidance scale. 0: the model's default (7.5 for VINCIE-3B); "
                                  "1: no guidance (twice as fast).")


def turn_seed_input() -> io.Int.Input:
    return io.Int.Input("seed", default=-1, min=-1, max=SEED_MAX, control_after_generate=False,
                        tooltip="Noise seed of this turn. -1: the session's seed (the official code uses one seed "
                                "for every turn).")


def session_seed_input() -> io.Int.Input:
    return io.Int.Input("seed", default=1, min=0, max=SEED_MAX, control_after_generate=True,
                        tooltip="Session seed: noise of every turn unless a sampler sets its own.")


def resolution_input() -> io.Int.Input:
    return io.Int.Input("resolution", default=0, min=0, max=2048, step=16,
                        tooltip="Working area is resolution x resolution pixels (aspect ratio kept, sides multiples "
                                "of 16). 0: the model's default (256 for VINCIE-3B).")


def turn_seed(seed: int) -> int | None:
    return None if seed < 0 else seed


def check_instruction(text) -> bool | str:
    """validate_inputs helper: a clear message for an empty instruction typed in a widget."""
    if isinstance(text, str) and not text.strip():
        return "the instruction is empty: describe the edit (e.g. 'make the red square blue')"
    return True
