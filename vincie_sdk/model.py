"""``VincieModel``: the DiT, the VAE and the text encoder of one checkpoint, on their devices.

Checkpoint layouts understood by :meth:`VincieModel.from_pretrained`:

* an official release folder: ``dit.pth``, ``vae.pth``, ``llm14b/`` (e.g. VINCIE-3B); the DiT
  config is recognised from tensor shapes, the VAE uses the official config;
* our folder format: ``config.json``, ``dit.safetensors``, ``vae.safetensors``, ``text_encoder/``
  (written by :meth:`save_pretrained` and ``vincie convert``);
* the name of the embedded model, ``"vincie-shapes"``, shipped inside the package.

Example:
    >>> model = VincieModel.from_pretrained("path/to/VINCIE-3B", device="cuda", dtype="bfloat16")  # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path

import torch
from torch import nn

from .config import VincieConfig, get_preset
from .loading import (atomic_dir, dit_config_from_state_dict, load_into, read_config, read_state_dict,
                      resolve_dtype, save_safetensors, write_json)
from .models.dit import VincieTransformer
from .models.text_encoder import TextEncoder, build_text_encoder_folder
from .models.autoencoder import build_autoencoder
from .models.vae import CausalVAE, convert_official_state_dict

log = logging.getLogger(__name__)

EMBEDDED_DIR = Path(__file__).parent / "weights"
SINGLE_FILE_KEY = "vincie_config"
SINGLE_FILE_TEXT_FILES = "vincie_text_encoder_files"
EMBEDDED_MODELS = ("vincie-shapes",)


class VincieModel:
    """The three networks of VINCIE plus their config. Holds no session state.

    Args:
        config: the full model config.
        dit, vae, text_encoder: the networks (already on their devices and dtypes).
        device: where the DiT and VAE run.
        text_encoder_offload: keep the text encoder on the CPU and move it to ``device`` only while
            encoding (saves its memory on the GPU between turns).
    """

    def __init__(self, config: VincieConfig, dit: VincieTransformer, vae: nn.Module, text_encoder: TextEncoder,
                 device: torch.device | str = "cpu", text_encoder_offload: bool = False) -> None:
        self.config = config
        self.dit = dit.eval().requires_grad_(False)
        self.vae = vae.eval().requires_grad_(False)
        self.text_encoder = text_encoder
        self.device = torch.device(device)
        self.text_encoder_offload = text_encoder_offload
        self._lora = None  # LoraStack of the applied adapters (see load_lora)
        self.weights_version = 0  # bumped when adapters change the DiT's function (sessions drop caches)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, *, device: str | torch.device = "cpu",
                        dtype: str | torch.dtype | None = "auto", text_encoder_path: str | os.PathLike | None = None,
                        text_encoder_dtype: str | torch.dtype | None = None, text_encoder_offload: bool = False,
                        allow_download: bool = False, config: VincieConfig | None = None) -> "VincieModel":
        """Load a checkpoint from a local folder (or the embedded model by name).

        Args:
            path: checkpoint folder, or ``"vincie-shapes"``. A hub id (``"ByteDance-Seed/VINCIE-3B"``)
                is fetched only with ``allow_download=True``.
            device: where the DiT and VAE run.
            dtype: DiT weights/compute dtype: "auto" (bf16 on CUDA, fp32 on CPU), "float32",
                "bfloat16", "float16". The official single-GPU script runs the DiT in float32.
            text_encoder_path: override the text-encoder folder (default: from the checkpoint).
            text_encoder_dtype: default: the config's (bfloat16 for the official Qwen encoder).
            config: for an official folder, the config to build (default: recognised from the DiT
                shapes, with the official VAE and text-encoder settings).
        """
        folder = _resolve_location(path, allow_download)
        device = torch.device(device)
        dtype = resolve_dtype(dtype, device)
        if folder.is_file():
            return cls._from_single_file(folder, device=device, dtype=dtype, text_encoder_path=text_encoder_path,
                                         text_encoder_dtype=text_encoder_dtype, text_encoder_offload=text_encoder_offload)
        if (folder / "dit.pth").exists() and not (folder / "config.json").exists():
            config, dit, vae = _load_official(folder, config)
        elif (folder / "config.json").exists():
            config = read_config(folder)
            dit = _build_meta(VincieTransformer, config.dit)
            load_into(dit, read_state_dict(folder / "dit.safetensors", "DiT weights"), f"{folder}/dit.safetensors")
            vae = _build_meta(build_autoencoder, config.vae)
            load_into(vae, read_state_dict(folder / "vae.safetensors", "VAE weights"), f"{folder}/vae.safetensors")
        else:
            raise FileNotFoundError(
                f"{folder} is not a VINCIE checkpoint: expected config.json + dit.safetensors (this project's "
                "format) or dit.pth + vae.pth + llm14b/ (the official release)")
        te_folder = Path(text_encoder_path) if text_encoder_path else folder / config.text.subfolder
        te_device = torch.device("cpu") if text_encoder_offload else device
        text_encoder = TextEncoder.from_pretrained(te_folder, config.text, device=te_device, dtype=text_encoder_dtype)
        vae_dtype = torch.float32 if device.type == "cpu" else dtype
        model = cls(config, dit.to(device=device, dtype=dtype), vae.to(device=device, dtype=vae_dtype),
                    text_encoder, device, text_encoder_offload)
        log.info("loaded %s from %s on %s (%s)", config.name, folder, device, dtype)
        return model

    @classmethod
    def from_random(cls, config: VincieConfig, *, seed: int = 0, device: str | torch.device = "cpu",
                    vocab: list[str] | None = None) -> "VincieModel":
        """Randomly initialised model (tests, benchmarks, the start of training). It does not edit."""
        torch.manual_seed(seed)
        dit, vae = VincieTransformer(config.dit), build_autoencoder(config.vae)
        with tempfile.TemporaryDirectory() as tmp:
            build_text_encoder_folder(tmp, vocab=vocab, hidden_size=config.text.hidden_size,
                                      max_length=config.text.max_length, seed=seed)
            text_encoder = TextEncoder.from_pretrained(tmp, config.text, device=device, dtype=torch.float32)
        return cls(config, dit.to(device), vae.to(device), text_encoder, device)

    def save_pretrained(self, folder: str | os.PathLike) -> Path:
        """Write config.json, dit.safetensors, vae.safetensors and text_encoder/ atomically."""
        folder = Path(folder)
        if self.loras:
            log.warning("applied LoRA adapters %s are not part of the saved weights; call merge_lora() first "
                        "to save them merged", list(self.loras))
        with atomic_dir(folder) as tmp:
            write_json(self.config.to_dict(), tmp / "config.json")
            save_safetensors(self.dit.state_dict(), tmp / "dit.safetensors")
            save_safetensors(self.vae.state_dict(), tmp / "vae.safetensors")
            self.text_encoder.save_pretrained(tmp / self.config.text.subfolder)
        return folder

    def save_single_file(self, path: str | os.PathLike, include_text_encoder: bool = True) -> Path:
        """One ``.safetensors`` file: ``dit.*``, ``vae.*`` (and ``text_encoder.*``) tensors, with the config
        and the text encoder's small files (HF config, tokenizer) in the metadata.

        Without the text encoder (e.g. the official 28 GB Qwen), load with ``text_encoder_path=``.
        """
        tensors = {f"dit.{k}": v for k, v in self.dit.state_dict().items()}
        tensors.update({f"vae.{k}": v for k, v in self.vae.state_dict().items()})
        metadata = {SINGLE_FILE_KEY: self.config.to_json()}
        if include_text_encoder:
            with tempfile.TemporaryDirectory() as tmp:
                self.text_encoder.save_pretrained(tmp)
                files = {}
                for f in sorted(Path(tmp).iterdir()):
                    if f.suffix == ".safetensors":
                        tensors.update({f"text_encoder.{k}": v for k, v in read_state_dict(f, "text encoder").items()})
                    elif f.is_file():
                        files[f.name] = f.read_text()
                metadata[SINGLE_FILE_TEXT_FILES] = json.dumps(files)
        save_safetensors(tensors, path, metadata=metadata)
        return Path(path)

    @classmethod
    def _from_single_file(cls, path: Path, *, device, dtype, text_encoder_path, text_encoder_dtype,
                          text_encoder_offload) -> "VincieModel":
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                metadata = f.metadata() or {}
        except Exception as e:
            raise ValueError(f"cannot read {path}: {e} (corrupt or not a safetensors file)") from None
        if SINGLE_FILE_KEY not in metadata:
            raise ValueError(f"{path} is a safetensors file without a VINCIE config; it is not a single-file "
                             "VINCIE checkpoint (write one with VincieModel.save_single_file)")
        config = VincieConfig.from_dict(json.loads(metadata[SINGLE_FILE_KEY]))
        sd = read_state_dict(path, "single-file checkpoint")
        parts = {p: {k[len(p) + 1:]: v for k, v in sd.items() if k.startswith(p + ".")} for p in ("dit", "vae", "text_encoder")}
        dit = load_into(_build_meta(VincieTransformer, config.dit), parts["dit"], f"{path} (dit.*)")
        vae = load_into(_build_meta(build_autoencoder, config.vae), parts["vae"], f"{path} (vae.*)")
        te_device = torch.device("cpu") if text_encoder_offload else device
        if text_encoder_path is not None:
            text = TextEncoder.from_pretrained(text_encoder_path, config.text, device=te_device, dtype=text_encoder_dtype)
        elif SINGLE_FILE_TEXT_FILES in metadata and parts["text_encoder"]:
            with tempfile.TemporaryDirectory() as tmp:
                for name, content in json.loads(metadata[SINGLE_FILE_TEXT_FILES]).items():
                    (Path(tmp) / Path(name).name).write_text(content)
                save_safetensors(parts["text_encoder"], Path(tmp) / "model.safetensors", metadata={"format": "pt"})
                text = TextEncoder.from_pretrained(tmp, config.text, device=te_device, dtype=text_encoder_dtype)
        else:
            raise FileNotFoundError(f"{path} holds no text encoder; pass text_encoder_path=")
        vae_dtype = torch.float32 if device.type == "cpu" else dtype
        return cls(config, dit.to(device=device, dtype=dtype), vae.to(device=device, dtype=vae_dtype), text,
                   device, text_encoder_offload)

    # ------------------------------------------------------------------ LoRA adapters
    def load_lora(self, adapter, strength: float = 1.0, name: str | None = None) -> str:
        """Apply a LoRA adapter to the DiT (on top of any already applied); returns its name.

        Args:
            adapter: an adapter folder, a ``.safetensors`` adapter file, or a ``LoraAdapter``.
            strength: multiplies the update (0 = the base model, 1 = as trained; negative subtracts).
            name: label for :meth:`set_lora_strength` / :meth:`unload_lora` (default: the file name).
        Raises:
            ValueError: the adapter's layers do not exist in this DiT or have other shapes.

        Example:
            >>> model.load_lora("runs/lora/adapter", 0.8)  # doctest: +SKIP
            'adapter'
        """
        from .lora import LoraAdapter

        if not isinstance(adapter, LoraAdapter):
            adapter = LoraAdapter.load(adapter)
        name = self._lora_stack().add(adapter, strength, name)
        self.weights_version += 1
        return name

    def set_lora_strength(self, name: str, strength: float) -> None:
        self._lora_stack().set_strength(name, strength)
        self.weights_version += 1

    def unload_lora(self, name: str | None = None) -> None:
        """Remove one applied adapter (or all with ``name=None``); the DiT is exactly the base again."""
        self._lora_stack().remove(name)
        self.weights_version += 1

    def merge_lora(self) -> None:
        """Bake the applied adapters (times their strengths) into the DiT weights; not reversible."""
        self._lora_stack().merge()
        self.weights_version += 1

    @property
    def loras(self) -> dict[str, float]:
        """Applied (unmerged) adapters and their strengths."""
        stack = self._lora
        return {} if stack is None or stack.dit is not self.dit else {k: v[1] for k, v in stack.entries.items()}

    def _lora_stack(self):
        from .lora import LoraStack

        if self._lora is None or self._lora.dit is not self.dit:  # a copy with its own DiT gets its own stack
            self._lora = LoraStack(self.dit, self.config.name)
        return self._lora

    # ------------------------------------------------------------------ encoders
    @property
    def dtype(self) -> torch.dtype:
        return next(self.dit.parameters()).dtype

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str], use_cache: bool = True) -> list[torch.Tensor]:
        """Text-encoder states per prompt, on ``self.device`` ((m_j, txt_in_dim) each)."""
        te = self.text_encoder
        if self.text_encoder_offload:
            te.to(self.device)
        try:
            if not use_cache:
                te.cache_clear()
            out = te.encode(prompts)
        finally:
            if self.text_encoder_offload:
                te.to("cpu")
        return [e.to(self.device) for e in out]

    @torch.no_grad()
    def encode_images(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """(N, 3, H, W) in [-1, 1] → DiT-space latents (N, H/8, W/8, C)."""
        vae = self.vae
        return vae.encode_images(images.to(self.device, vae.dtype), generator=generator).float()

    @torch.no_grad()
    def blank_latent(self, height: int, width: int) -> torch.Tensor:
        """DiT-space latent (h, w, C) of an all-black frame of ``height`` x ``width`` pixels: an empty
        region mask. A residual model (``DiTConfig.residual``) predicts masks as residuals of it, so that "nothing"
        is the zero output for masks as "unchanged" is for images.

        >>> model.blank_latent(64, 64).shape  # doctest: +SKIP
        torch.Size([16, 16, 48])
        """
        black = -torch.ones(1, 3, height, width, device=self.device)
        return self.encode_images(black, generator=torch.Generator(device=self.device).manual_seed(0))[0]

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """DiT-space latents (N, h, w, C) → (N, 3, 8h, 8w) in about [-1, 1] (not clamped)."""
        return self.vae.decode_images(latents.to(self.device, self.vae.dtype)).float()


def _build_meta(klass, config):
    # Built without memory, then the checkpoint tensors are assigned: no double allocation for 3B.
    with torch.device("meta"):
        return klass(config)


def _load_official(folder: Path, config: VincieConfig | None) -> tuple[VincieConfig, VincieTransformer, CausalVAE]:
    dit_sd = read_state_dict(folder / "dit.pth", "official DiT checkpoint")
    if config is None:
        config = official_config(dit_sd, folder.name)
    dit = load_into(_build_meta(VincieTransformer, config.dit), dit_sd, f"{folder}/dit.pth")
    vae_sd = convert_official_state_dict(read_state_dict(folder / "vae.pth", "official VAE checkpoint"))
    vae = load_into(_build_meta(CausalVAE, config.vae), vae_sd, f"{folder}/vae.pth")
    return config, dit, vae


def official_config(dit_state_dict, name: str) -> VincieConfig:
    """The config of an official release: DiT recognised from shapes, official VAE/text/sampler settings."""
    dit_cfg = dit_config_from_state_dict(dit_state_dict)
    base = get_preset("vincie-3b")
    return base.replace(dit=dit_cfg, name=base.name if dit_cfg == base.dit else f"official-{name}")


def _resolve_location(path: str | os.PathLike, allow_download: bool) -> Path:
    name = str(path)
    if name in EMBEDDED_MODELS:
        folder = EMBEDDED_DIR / name
        if not (folder / "config.json").exists():
            raise FileNotFoundError(f"the embedded model {name!r} is not installed at {folder}")
        return folder
    folder = Path(path).expanduser()
    if folder.exists():
        if folder.is_file() and folder.suffix != ".safetensors":
            raise ValueError(f"{folder} is a file; pass a checkpoint folder or a single-file .safetensors checkpoint")
        return folder
    if "/" in name and not name.startswith((".", "/", "~")) and name.count("/") == 1:
        if not allow_download:
            raise FileNotFoundError(
                f"{name!r} is not a local folder. To fetch it from the Hugging Face hub pass allow_download=True "
                "(CLI: --allow-download), or download it yourself and pass the folder")
        try:
            from huggingface_hub import snapshot_download

            return Path(snapshot_download(name))
        except Exception as e:
            raise RuntimeError(f"could not download {name!r}: {e}") from None
    raise FileNotFoundError(f"model folder not found: {folder}")
