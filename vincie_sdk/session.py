"""``Session``: a multi-turn editing history, its caches, and the operations the paper describes.

A session is an ordered list of frames (images and region masks). Frame 0 is the source image;
every later frame was introduced by one prompt. Each turn sees the whole history. By default the
clean latent of every frame is kept in memory, so a turn encodes nothing it has seen before (the
official script re-reads every PNG, re-encodes every image and prompt each turn; pass
``exact_official=True`` to reproduce that round trip).

Example:
    >>> from vincie_sdk import VincieModel, Session
    >>> model = VincieModel.from_pretrained("vincie-shapes")              # doctest: +SKIP
    >>> s = Session(model, "scene.png", seed=1)                           # doctest: +SKIP
    >>> img = s.edit("Add a red circle at the top left")                  # doctest: +SKIP
    >>> s.undo(); s.save("scene.vincie")                                  # doctest: +SKIP
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import Image

from . import block_causal as bc
from .image import ImageInput, load_image, mask_to_tensor, preprocess, tensor_to_mask, to_uint8, working_size
from .loading import atomic_path
from .model import VincieModel
from .pipeline import FrameRequest, draw_noise, generate
from .prompts import FrameKind, compose_prompts, frame_prompt

log = logging.getLogger(__name__)

SESSION_FORMAT = "vincie-session/1"
_uids = itertools.count()


@dataclass(frozen=True)
class Frame:
    """One image or mask of a session.

    Attributes:
        kind: image, current-region mask (CSP) or next-region mask (NSP).
        image: the picture (inputs at their original size, generated frames at the working size).
        latent: clean DiT-space latent (h, w, C), or None until encoded.
        prompt: the formatted text that introduced this frame (None for frame 0).
        instruction: the user's words for the turn that added it.
        turn: 0 for inputs, then 1, 2, ... per user operation.
    """

    kind: FrameKind
    image: Image.Image
    latent: torch.Tensor | None = None
    prompt: str | None = None
    instruction: str | None = None
    turn: int = 0
    uid: int = dataclasses.field(default_factory=lambda: next(_uids), compare=False, repr=False)


@dataclass(frozen=True)
class SessionSettings:
    seed: int = 1
    resolution: int | None = None  # None: the model's default
    negative_prompt: str | None = None
    camera_prefix: str | None = None
    pad_img_placeholder: bool | None = None
    steps: int | None = None
    cfg_scale: float | None = None
    exact_official: bool = False


class Session:
    """A multi-turn editing session (see the module docstring).

    Args:
        model: a loaded :class:`VincieModel`.
        image: the source image (path, PIL image, array or tensor), or a list of them: the first is the
            session's frame 0, the others join the context as references and edits apply to the last.
        seed: noise seed (the official code uses the same seed every turn).
        resolution: working area is resolution**2 pixels (default: the model's, 256 for VINCIE-3B).
        negative_prompt, camera_prefix, pad_img_placeholder, steps, cfg_scale: override the model's defaults.
        exact_official: reproduce the official script turn by turn (PNG round trip, re-encoding,
            separate guidance passes) instead of the cached fast path.
    """

    def __init__(self, model: VincieModel, image: ImageInput | None = None, *, seed: int = 1,
                 resolution: int | None = None, negative_prompt: str | None = None, camera_prefix: str | None = None,
                 pad_img_placeholder: bool | None = None, steps: int | None = None, cfg_scale: float | None = None,
                 exact_official: bool = False) -> None:
        self.model = model
        self.settings = SessionSettings(seed, resolution, negative_prompt, camera_prefix, pad_img_placeholder,
                                        steps, cfg_scale, exact_official)
        self.frames: list[Frame] = []
        # Block-causal models: the clean history's KV cache and the uids of the frames it holds.
        self._history: tuple[bc.CachedHistory, tuple[int, ...], int] | None = None
        if isinstance(image, (list, tuple)):
            if not image:
                raise ValueError("image: an empty list; give one source image or several")
            # Several sources: the first is frame 0, the others are introduced as references
            # ("<IMG1>: ", ...), as in the official multi-concept convention; edits continue from the last.
            images = [load_image(im, max_side=self._cfg.max_side, what=f"source image {i}") for i, im in enumerate(image)]
            self._add_inputs(images, compose_prompts("", len(images))[:-1])
        elif image is not None:
            self._add_inputs([load_image(image, max_side=self._cfg.max_side, what="source image")], [])

    # ------------------------------------------------------------------ settings
    @property
    def _cfg(self):
        return self.model.config.session

    @property
    def resolution(self) -> int:
        return self.settings.resolution or self._cfg.resolution

    @property
    def size(self) -> tuple[int, int]:
        """Working (W, H) in pixels: set by the first image and the resolution."""
        if not self.frames:
            raise ValueError("the session has no image yet")
        return working_size(self.frames[0].image.size, self.resolution, self._cfg.size_multiple)

    def _opt(self, name: str):
        value = getattr(self.settings, name)
        return getattr(self._cfg, name) if value is None else value

    # ------------------------------------------------------------------ views
    @property
    def images(self) -> list[Image.Image]:
        """All image frames (source first), generated ones at the working size."""
        return [f.image for f in self.frames if f.kind == FrameKind.IMAGE]

    @property
    def masks(self) -> list[Image.Image]:
        return [f.image.convert("L") for f in self.frames if f.kind != FrameKind.IMAGE]

    @property
    def prompts(self) -> list[str]:
        """The user's instruction of every turn, in order."""
        seen: dict[int, str] = {}
        for f in self.frames:
            if f.turn > 0 and f.instruction is not None:
                seen.setdefault(f.turn, f.instruction)
        return [seen[k] for k in sorted(seen)]

    @property
    def turns(self) -> int:
        return max((f.turn for f in self.frames), default=0)

    def copy(self) -> "Session":
        """A new session sharing the (immutable) frames: extending it leaves this one unchanged."""
        other = copy.copy(self)
        other.frames = list(self.frames)
        return other

    # ------------------------------------------------------------------ operations
    def edit(self, instruction: str, *, mask: ImageInput | None = None, next_mask: ImageInput | None = None,
             steps: int | None = None, cfg_scale: float | None = None, seed: int | None = None,
             callback=None) -> Image.Image:
        """Next-image prediction: apply ``instruction`` to the latest image; returns the new image.

        Args:
            mask: optional region to edit in the current image (white = edit), put in the context as
                a current-region mask frame.
            next_mask: optional region where the result should be (drag editing: a moved mask), put in
                the context as a next-region mask frame.
            callback: called after each sampling step with (step, steps).
        """
        instruction = self._check_instruction(instruction)
        turn = self.turns + 1
        src = self._last_image_index()
        for kind, m in ((FrameKind.CURRENT_MASK, mask), (FrameKind.NEXT_MASK, next_mask)):
            if m is not None:
                self._append_mask(m, kind, instruction, src, turn)
        return self._generate(instruction, FrameKind.IMAGE, src, turn, steps, cfg_scale, seed, callback).image

    def predict_mask(self, instruction: str, which: Literal["current", "next"] = "current", *,
                     steps: int | None = None, cfg_scale: float | None = None, seed: int | None = None,
                     callback=None) -> Image.Image:
        """CSP / NSP: the region that ``instruction`` changes in the current image, or where it will be
        in the next one. Returns an 'L' mask at the working size; the session is not changed."""
        kind = {"current": FrameKind.CURRENT_MASK, "next": FrameKind.NEXT_MASK}.get(which)
        if kind is None:
            raise ValueError(f"which={which!r}; use 'current' or 'next'")
        trial = self.copy()
        frame = trial._generate(self._check_instruction(instruction), kind, self._last_image_index(),
                                self.turns + 1, steps, cfg_scale, seed, callback)
        return frame.image.convert("L")

    def chain_edit(self, instruction: str, **kwargs) -> Image.Image:
        """Chain of editing (paper Table 3, CS → NS → I): predict the current-region mask, then the
        next-region mask, each kept in the context, then the edited image."""
        instruction = self._check_instruction(instruction)
        turn, src = self.turns + 1, self._last_image_index()
        for kind in (FrameKind.CURRENT_MASK, FrameKind.NEXT_MASK, FrameKind.IMAGE):
            frame = self._generate(instruction, kind, src, turn, kwargs.get("steps"), kwargs.get("cfg_scale"),
                                   kwargs.get("seed"), kwargs.get("callback"))
        return frame.image

    @classmethod
    def compose(cls, model: VincieModel, references: list[ImageInput], instruction: str, **kwargs) -> "Session":
        """Multi-concept composition: frames = references, then one image generated from all of them.

        All references are resized to the first one's size (as the official code does). The result is
        ``session.images[-1]``; the session can be edited further.
        """
        if not references:
            raise ValueError("compose needs at least one reference image")
        callback = kwargs.pop("callback", None)
        session = cls(model, None, **kwargs)
        imgs = [load_image(r, max_side=session._cfg.max_side, what=f"reference image {i}") for i, r in enumerate(references)]
        prompts = compose_prompts(instruction if isinstance(instruction, str) else "", len(imgs))
        session._add_inputs(imgs, prompts[:-1])
        session._check_instruction(instruction)
        session._generate(instruction, FrameKind.IMAGE, len(imgs) - 1, 1, None, None, None, callback,
                          prompt=prompts[-1])
        return session

    def add_turn(self, instruction: str, image: ImageInput) -> Image.Image:
        """Record a turn whose result you already have: ``image`` joins the history as the result of
        ``instruction``, as if this session had generated it (an edit made elsewhere, a touched-up output,
        or the ground truth in a teacher-forced evaluation). Returns the image at the working size.

        Example:
            >>> s = Session(model, "cat.png")                                   # doctest: +SKIP
            >>> s.edit("make the cat blue"); s.undo()                           # doctest: +SKIP
            >>> s.add_turn("make the cat blue", "cat_blue_fixed.png")           # doctest: +SKIP
            >>> s.edit("now add a hat")  # sees the fixed image, not the model's  # doctest: +SKIP
        """
        instruction = self._check_instruction(instruction)
        turn, src = self.turns + 1, self._last_image_index()
        loaded = load_image(image, max_side=self._cfg.max_side, what=f"image of turn {turn}")
        # Through the first image's transform chain, so the frame has the session's working size.
        pixels = preprocess([self.frames[0].image, loaded], self.resolution, self._cfg.size_multiple)[1:]
        latent = None if self.settings.exact_official else self._encode(pixels)[0]
        frame = Frame(FrameKind.IMAGE, Image.fromarray(to_uint8(pixels[0])), latent,
                      self._prompt(instruction, FrameKind.IMAGE, src, len(self.frames)), instruction, turn)
        self.frames.append(frame)
        return frame.image

    def undo(self, turns: int = 1) -> None:
        """Remove the frames of the last ``turns`` turns (the source images stay)."""
        if turns < 0:
            raise ValueError("turns must be >= 0")
        last = self.turns - turns
        self.frames = [f for f in self.frames if f.turn <= max(last, 0)]

    # ------------------------------------------------------------------ internals
    def _check_instruction(self, instruction: str) -> str:
        if not isinstance(instruction, str) or not instruction.strip():
            raise ValueError(f"instruction must be a non-empty string, got {instruction!r}")
        if not self.frames:
            raise ValueError("the session has no source image; create it with Session(model, image)")
        limit = self.model.config.dit.max_num_prompts
        if len(self.frames) + 1 > limit:
            raise ValueError(f"this session already has {len(self.frames)} frames; the model has turn embeddings "
                             f"for {limit} prompts. Undo turns or start a new session from the last image")
        return instruction

    def _last_image_index(self) -> int:
        return max(i for i, f in enumerate(self.frames) if f.kind == FrameKind.IMAGE)

    def _add_inputs(self, images: list[Image.Image], prompts: list[str]) -> None:
        working_size(images[0].size, self.resolution, self._cfg.size_multiple)  # refuses sizes that leave no block
        pixels = preprocess(images, self.resolution, self._cfg.size_multiple)  # (N, 3, h, w), all at the first's size
        latents = self._encode(pixels) if not self.settings.exact_official else [None] * len(images)
        for i, (img, lat) in enumerate(zip(images, latents)):
            self.frames.append(Frame(FrameKind.IMAGE, img, lat, prompts[i - 1] if i else None, None, 0))

    def _append_mask(self, mask: ImageInput, kind: FrameKind, instruction: str, src: int, turn: int) -> None:
        pixels = mask_to_tensor(mask, self.size, what=f"{kind.value} mask")
        image = Image.fromarray(to_uint8(pixels))
        latent = None if self.settings.exact_official else self._encode(pixels[None])[0]
        prompt = self._prompt(instruction, kind, src, len(self.frames))
        self.frames.append(Frame(kind, image, latent, prompt, instruction, turn))

    def _prompt(self, instruction: str, kind: FrameKind, src: int, index: int) -> str:
        return frame_prompt(instruction, src=src, index=index, kind=kind, pad_img_placeholder=self._opt("pad_img_placeholder"),
                            camera_prefix=self._opt("camera_prefix"))

    def _encode(self, pixels: torch.Tensor) -> list[torch.Tensor]:
        generator = torch.Generator(device=self.model.device).manual_seed(self.settings.seed)
        return list(self.model.encode_images(pixels, generator=generator))

    def _context_latents(self) -> torch.Tensor:
        if self.settings.exact_official:
            # Official round trip: every frame re-read as uint8 pixels, resized to the first image's size,
            # re-preprocessed and re-encoded (posterior sample from the global RNG).
            pixels = preprocess([f.image for f in self.frames], self.resolution, self._cfg.size_multiple)
            return self.model.encode_images(pixels, generator=None)
        return torch.stack([f.latent for f in self.frames])

    def _generate(self, instruction: str, kind: FrameKind, src: int, turn: int, steps, cfg_scale, seed, callback,
                  prompt: str | None = None) -> Frame:
        index = len(self.frames)
        prompt = prompt or self._prompt(instruction, kind, src, index)
        seed = self.settings.seed if seed is None else seed
        cfg_scale = self.settings.cfg_scale if cfg_scale is None else cfg_scale
        steps = steps or self.settings.steps
        base = None
        if kind != FrameKind.IMAGE and self.model.config.dit.residual:
            base = self.model.blank_latent(*self.size[::-1])  # a mask is a residual of an empty mask
        if self.model.config.dit.attention == "block_causal":
            latent = self._sample_block_causal(prompt, src, steps, cfg_scale, seed, callback, base)
        else:
            latent = self._sample_full(prompt, src, steps, cfg_scale, seed, callback, base)
        decoded = self.model.decode_latents(latent[None])[0]
        exact = self.settings.exact_official
        if exact:
            decoded = decoded.to(torch.bfloat16)  # the official VAE output is bf16, and so is its uint8 arithmetic
        if kind == FrameKind.IMAGE:
            image = Image.fromarray(to_uint8(decoded))
        else:
            image = Image.fromarray((tensor_to_mask(decoded) * 255).round().astype(np.uint8)).convert("RGB")
        frame = Frame(kind, image, None if exact else latent, prompt, instruction, turn)
        self.frames.append(frame)
        return frame

    def _sample_full(self, prompt: str, src: int, steps, cfg_scale, seed, callback, base) -> torch.Tensor:
        """Official layout: all frames in one sequence, context as condition channels."""
        exact = self.settings.exact_official
        request = FrameRequest(self._context_latents(), [f.prompt for f in self.frames[1:]] + [prompt], seed, src, base)
        return generate(self.model, [request], steps=steps, cfg_scale=cfg_scale,
                        negative_prompt=self._opt("negative_prompt"), batch_cfg=not exact, use_cache=not exact,
                        callback=callback)[0]

    def _sample_block_causal(self, prompt: str, src: int, steps, cfg_scale, seed, callback, base) -> torch.Tensor:
        """Block-causal layout: the clean history comes from the KV cache; only the new frame is run."""
        from .sampler import FlowMatchSampler

        model, dit = self.model, self.model.dit
        history = self._cached_history()
        k = len(self.frames)
        scale = model.config.sampler.cfg_scale if cfg_scale is None else float(cfg_scale)
        texts = [prompt] + ([self._opt("negative_prompt")] if scale != 1.0 else [])
        prompts = [self._fused_prompt(t, k - 1) for t in texts]
        prefixes = bc.prompt_cache(dit, history, prompts)
        source = self.frames[src].latent
        noise = draw_noise(tuple(source.shape), seed, model.device)
        return bc.denoise_next_frame(dit, FlowMatchSampler(model.config.sampler), prefixes, source, noise, k,
                                     steps=steps, cfg_scale=scale, callback=callback, residual_base=base)

    def _fused_prompt(self, text: str, turn_id: int) -> torch.Tensor:
        embed = self.model.encode_prompts([text])[0]
        ids = self.model.dit.embed_prompt_ids(torch.tensor([turn_id], device=self.model.device)).float()
        return torch.cat((ids, embed.float()))

    def _cached_history(self) -> "bc.CachedHistory":
        """Bring the clean-history cache up to date with ``self.frames`` (prefill only what is new)."""
        uids = tuple(f.uid for f in self.frames)
        version = getattr(self.model, "weights_version", 0)
        history, cached, cached_version = self._history or (bc.empty_history(self.model.dit), (), version)
        if cached_version != version:  # LoRA adapters changed the DiT since: the cached keys/values are stale
            history, cached = bc.empty_history(self.model.dit), ()
        common = 0
        while common < min(len(uids), len(cached)) and uids[common] == cached[common]:
            common += 1
        history = history.truncated(common)
        for k in range(common, len(self.frames)):
            frame = self.frames[k]
            if frame.latent is None:
                raise ValueError("block-causal sessions keep latents; exact_official applies to the official layout only")
            if k > 0:
                history = bc.extend_history(self.model.dit, history, prompt=self._fused_prompt(frame.prompt, k - 1))
            history = bc.extend_history(self.model.dit, history, frame=frame.latent)
        self._history = (history, uids, version)
        return history

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | os.PathLike) -> Path:
        """Write the session (frames, latents, prompts, settings) as one safetensors file, atomically."""
        from safetensors.torch import save_file

        tensors, frames_meta = {}, []
        for i, f in enumerate(self.frames):
            tensors[f"frame{i}.image"] = torch.from_numpy(np.asarray(f.image.convert("RGB"), dtype=np.uint8).copy())
            if f.latent is not None:
                tensors[f"frame{i}.latent"] = f.latent.detach().float().cpu().contiguous()
            frames_meta.append({"kind": f.kind.value, "prompt": f.prompt, "instruction": f.instruction, "turn": f.turn})
        meta = {"format": SESSION_FORMAT, "model": self.model.config.name,
                "settings": dataclasses.asdict(self.settings), "frames": frames_meta}
        path = Path(path)
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp), metadata={"vincie_session": json.dumps(meta)})
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, model: VincieModel) -> "Session":
        """Read a file written by :meth:`save`; latents move to the model's device."""
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"session file not found: {path}")
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = json.loads((f.metadata() or {}).get("vincie_session", "null"))
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as e:
            raise ValueError(f"cannot read session file {path}: {e}") from None
        if not isinstance(meta, dict) or meta.get("format") != SESSION_FORMAT:
            raise ValueError(f"{path} is not a VINCIE session file ({SESSION_FORMAT})")
        if meta.get("model") != model.config.name:
            log.warning("session %s was made with model %r, loading it with %r", path, meta.get("model"), model.config.name)
        session = cls(model, None, **meta["settings"])
        for i, fm in enumerate(meta["frames"]):
            latent = tensors.get(f"frame{i}.latent")
            session.frames.append(Frame(FrameKind(fm["kind"]), Image.fromarray(tensors[f"frame{i}.image"].numpy()),
                                        None if latent is None else latent.to(model.device), fm["prompt"],
                                        fm["instruction"], fm["turn"]))
        return session
