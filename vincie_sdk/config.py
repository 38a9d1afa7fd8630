"""Configuration dataclasses and named presets.

Every model part is built from a frozen dataclass; a preset is a function-free constant of
:class:`VincieConfig`. Field names of :class:`DiTConfig` and :class:`VAEConfig` follow the official
constructor arguments so that an official ``meta.json``/YAML maps onto them one to one.

Example:
    >>> from vincie_sdk.config import PRESETS
    >>> PRESETS["vincie-3b"].dit.vid_dim
    2560
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any, Literal

# The official default negative prompt (configs/generate.yaml, `generation.negative_prompt`).
DEFAULT_NEGATIVE_PROMPT = (
    "Worst quality, Normal quality, Low quality, Low res, Blurry, Jpeg artifacts, Grainy, text, logo, "
    "watermark, banner, extra digits, signature, subtitling, Bad anatomy, Bad proportions, Deformed, "
    "Disconnected limbs, Disfigured, Extra arms, Extra limbs, Extra hands, Fused fingers, Gross proportions, "
    "Long neck, Malformed limbs, Mutated, Mutated hands, Mutated limbs, Missing arms, Missing fingers, "
    "Poorly drawn hands, Poorly drawn face, Nsfw, Uncensored, Cleavage, Nude, Nipples, Overexposed, "
    "Plain background, Grainy, Underexposed, Deformed structures"
)

# The static-camera tag the paper prepends at inference (official CAMERA_PREFIX example).
STATIC_CAMERA_PREFIX = "[###CAMERA: None###] "

AttentionKind = Literal["full", "block_causal"]
PredictionKind = Literal["velocity", "source_residual", "source_preconditioned", "source_gated"]
PREDICTION_KINDS: tuple[str, ...] = ("velocity", "source_residual", "source_preconditioned", "source_gated")
PromptPositionKind = Literal["cursor", "frame"]
PROMPT_POSITION_KINDS: tuple[str, ...] = ("cursor", "frame")
TargetPromptsKind = Literal["all", "own"]
TARGET_PROMPTS_KINDS: tuple[str, ...] = ("all", "own")


@dataclass(frozen=True)
class DiTConfig:
    """The MM-DiT ("NaDiT") hyper-parameters; names follow the official constructor."""

    vid_in_channels: int = 33  # x_t (16) | context latent (16) | context flag (1)
    vid_out_channels: int = 16  # predicted velocity channels (one latent)
    vid_dim: int = 2560  # hidden width, shared by the video and text streams
    txt_in_dim: int = 5120  # text-encoder hidden size
    heads: int = 20
    head_dim: int = 128
    expand_ratio: float = 4  # SwiGLU hidden = 256 * ceil(int(2 * dim * ratio / 3) / 256)
    norm_eps: float = 1e-5
    patch_size: tuple[int, int, int] = (1, 2, 2)  # (t, h, w)
    num_layers: int = 32
    mm_layers: int = 10  # blocks [0, mm_layers) have separate video/text weights
    rope_dim: int = 128  # rotary dims split over 3 axes: rope_dim // 3 per axis
    time_embed_dim: int = 256  # sinusoidal timestep features fed to emb_in
    max_num_prompts: int = 64  # rows of prompt_id_embedding (turn ids)
    # "full": official layout (context frames as condition channels, all frames noised).
    # "block_causal": the paper's interleaved variant (see models/dit.py).
    attention: AttentionKind = "full"
    # What the network output means. "velocity": v = noise - x0 (the official models).
    # "source_residual": x0 = source + output, where source is the latent of the image the frame is
    # edited from (converted to v for the shared sampler). Unchanged content is then the default, which
    # is what a small model trained briefly from video most needs (our addition; off for official weights).
    # "source_preconditioned": the same residual with EDM-style preconditioning (Karras et al. 2022),
    # x0 = source + c_skip(t) (x_t - A(t) source) + c_out(t) output: the best linear guess of x0 from the
    # source and x_t is built in, so at low noise the default is "read x_t" and at high noise "copy the
    # source" (see ``FlowMatchSampler.x0_of``).
    # "source_gated": source_residual plus the same x_t term behind a learned per-value gate, so the model
    # can read x_t where the frame changes and copy the source exactly elsewhere; the output has twice
    # the latent channels (residual | gate logits).
    prediction: PredictionKind = "velocity"
    # Absolute in-frame position (our addition; 0 = off, the official models): sinusoidal features of each
    # token's row and column in its frame, at this many frequencies per axis, projected and added to the
    # frame's tokens. RoPE only tells a token where it is relative to others; "add ... at the top left" also
    # needs "where in the frame am I", which a uniform background cannot tell through relative offsets.
    frame_position: int = 0
    # Per-pixel output head (our addition; 0 = off, the official linear patch output): this many hidden
    # channels per pixel, two 3x3 convolutions over [token features unfolded to pixels | source]
    # at pixel resolution, added to the linear output. ``pixel_fold`` is how many pixels per latent cell
    # side (the pixel autoencoder's space-to-depth factor; 1 for a learned VAE's latents). A token's
    # linear output must draw its whole patch from one vector; the head draws each pixel from its own
    # input values and neighbours, which is what sharp, small shapes need.
    pixel_head: int = 0
    pixel_fold: int = 1
    # Block-causal only: where the prompts' text tokens sit in RoPE space. "cursor": token j of the
    # session's text at (j, j, j), prompts one after another, so a later turn's prompt lies ever farther
    # from the image grid on the height and width axes too (our first layout). "frame" (our addition):
    # token j of the prompt that introduces frame f at (f - 1 + j, j, j), so turn k is turn 1 shifted
    # along time alone (on its own it did not keep earlier instructions out: see ``target_prompts``).
    prompt_position: PromptPositionKind = "cursor"
    # Block-causal only: which prompts a frame being generated attends to. "all": every earlier one (the
    # paper's mask); "own" (our addition): its own prompt alone, the earlier instructions reaching it only
    # through the clean frames that read them. With "all", earlier instructions took over later turns of a
    # small model (docs/shapes_bench.md, "What in the history hurts").
    target_prompts: TargetPromptsKind = "all"

    def output_channels(self, prediction: str) -> int:
        """The output width ``prediction`` needs: one latent (x_t | condition | flag come in), two gated."""
        latent = (self.vid_in_channels - 1) // 2
        return 2 * latent if prediction == "source_gated" else latent

    @property
    def residual(self) -> bool:
        """Whether the output is relative to a base latent (the source image, or a blank mask)."""
        return self.prediction != "velocity"

    @property
    def emb_dim(self) -> int:
        return 6 * self.vid_dim

    @property
    def mlp_hidden(self) -> int:
        return 256 * math.ceil(int(2 * self.vid_dim * self.expand_ratio / 3) / 256)

    def __post_init__(self) -> None:
        if self.heads * self.head_dim != self.vid_dim:
            raise ValueError(
                f"DiTConfig: heads ({self.heads}) x head_dim ({self.head_dim}) must equal vid_dim ({self.vid_dim})"
            )
        if not 0 <= self.mm_layers <= self.num_layers:
            raise ValueError(f"DiTConfig: mm_layers={self.mm_layers} must be within [0, num_layers={self.num_layers}]")
        if 3 * 2 * (self.rope_dim // 3 // 2) > self.head_dim:
            raise ValueError(f"DiTConfig: rope_dim={self.rope_dim} needs more than head_dim={self.head_dim} dims")
        if self.prediction not in PREDICTION_KINDS:
            raise ValueError(f"DiTConfig: prediction={self.prediction!r}; use one of {', '.join(PREDICTION_KINDS)}")
        if self.prediction == "source_gated" and self.vid_out_channels != self.output_channels(self.prediction):
            raise ValueError(f"DiTConfig: prediction={self.prediction!r} needs vid_out_channels="
                             f"{self.output_channels(self.prediction)} for vid_in_channels={self.vid_in_channels}, "
                             f"got {self.vid_out_channels}")
        if self.prompt_position not in PROMPT_POSITION_KINDS:
            raise ValueError(f"DiTConfig: prompt_position={self.prompt_position!r}; use one of "
                             f"{', '.join(PROMPT_POSITION_KINDS)}")
        if self.target_prompts not in TARGET_PROMPTS_KINDS:
            raise ValueError(f"DiTConfig: target_prompts={self.target_prompts!r}; use one of "
                             f"{', '.join(TARGET_PROMPTS_KINDS)}")
        if self.frame_position < 0:
            raise ValueError(f"DiTConfig: frame_position={self.frame_position} must be >= 0 (0 = off)")
        if self.pixel_head < 0 or self.pixel_fold < 1:
            raise ValueError(f"DiTConfig: pixel_head={self.pixel_head} must be >= 0 and pixel_fold={self.pixel_fold} >= 1")
        if self.pixel_head and (((self.vid_in_channels - 1) // 2) % self.pixel_fold ** 2
                                or self.vid_out_channels % self.pixel_fold ** 2):
            raise ValueError(f"DiTConfig: pixel_fold={self.pixel_fold} must divide the latent into pixels: "
                             f"({self.vid_in_channels} - 1) / 2 and {self.vid_out_channels} must be multiples of "
                             f"{self.pixel_fold ** 2}")
        if self.attention not in ("full", "block_causal"):
            raise ValueError(f"DiTConfig: attention={self.attention!r}; use 'full' or 'block_causal'")


@dataclass(frozen=True)
class VAEConfig:
    """The causal 3-D KL autoencoder (official `VideoAutoencoderKLWrapper`, s8_c16_t4 SD3-style)."""

    kind: str = "causal3d"  # "causal3d" (the official VAE) or "pixel" (parameter-free space-to-depth)
    block_out_channels: tuple[int, ...] = (128, 256, 512, 512)
    layers_per_block: int = 2  # encoder; the decoder uses layers_per_block + 1
    latent_channels: int = 16
    norm_num_groups: int = 32
    in_channels: int = 3
    out_channels: int = 3
    temporal_scale_num: int = 2  # number of x2 temporal stages (x4 in total)
    spatial_downsample_factor: int = 8
    temporal_downsample_factor: int = 4
    mid_attention: bool = True
    scaling_factor: float = 0.9152  # DiT latent = (z - shift) * scale
    shifting_factor: float = 0.0
    use_sample: bool = True  # official encode draws a posterior sample, not the mean


@dataclass(frozen=True)
class TextEncoderConfig:
    """A Hugging Face causal LM used as text encoder (last hidden state + one end-of-text token)."""

    subfolder: str = "llm14b"  # folder inside the checkpoint directory
    hidden_size: int = 5120
    max_length: int = 150
    trust_remote_code: bool = True  # the official llm14b is Qwen-14B remote code
    dtype: str = "bfloat16"


@dataclass(frozen=True)
class SamplerConfig:
    """Flow-matching Euler sampling with classifier-free guidance (official defaults)."""

    steps: int = 50
    shift: float = 12.0
    num_train_timesteps: float = 1000.0
    cfg_scale: float = 7.5
    cfg_rescale: float = 0.0
    cfg_partial: float = 1.0  # fraction of the steps that use guidance


@dataclass(frozen=True)
class SessionConfig:
    """How a session's prompts and images are turned into model inputs."""

    resolution: int = 256  # target area is resolution**2
    # Working sides are cropped to a multiple of this: the pixels per token side (16 = the official VAE's
    # 8 x patch 2). A pixel-space model with 4x4-pixel tokens can work at 36 px, where the shapes world's
    # 3x3 grid of object cells falls on whole tokens (docs/training.md, "Grid alignment").
    size_multiple: int = 16
    pad_img_placeholder: bool = True  # "Based on <IMGj>, ... Output <IMGj+1>: "
    camera_prefix: str = ""  # e.g. STATIC_CAMERA_PREFIX
    negative_prompt: str = DEFAULT_NEGATIVE_PROMPT
    max_side: int = 4096  # refuse larger inputs rather than silently allocating huge buffers


@dataclass(frozen=True)
class VincieConfig:
    """Everything needed to build a VINCIE model; saved as ``config.json`` beside the weights."""

    name: str
    dit: DiTConfig = field(default_factory=DiTConfig)
    vae: VAEConfig = field(default_factory=VAEConfig)
    text: TextEncoderConfig = field(default_factory=TextEncoderConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    session: SessionConfig = field(default_factory=SessionConfig)

    def __post_init__(self) -> None:
        token = self.vae.spatial_downsample_factor * self.dit.patch_size[1]
        if self.session.size_multiple % token:
            raise ValueError(f"config {self.name!r}: session.size_multiple={self.session.size_multiple} is not a "
                             f"multiple of the token side ({self.vae.spatial_downsample_factor} x patch "
                             f"{self.dit.patch_size[1]} = {token} px)")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "VincieConfig":
        parts = {"dit": DiTConfig, "vae": VAEConfig, "text": TextEncoderConfig,
                 "sampler": SamplerConfig, "session": SessionConfig}
        kwargs: dict[str, Any] = {"name": data.get("name", "custom")}
        for key, klass in parts.items():
            if key in data:
                kwargs[key] = _build(klass, data[key], key)
        return cls(**kwargs)

    def replace(self, **parts: Any) -> "VincieConfig":
        return dataclasses.replace(self, **parts)


def _build(klass: type, values: dict[str, Any], where: str) -> Any:
    names = {f.name for f in dataclasses.fields(klass)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ValueError(f"config section {where!r}: unknown keys {unknown}; known keys are {sorted(names)}")
    fixed = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
    return klass(**fixed)


VINCIE_3B = VincieConfig(name="vincie-3b")

# A few-million-parameter model with the official layout, for tests and the CLI demo before the
# embedded model exists. Random weights: it exercises every code path, it does not edit meaningfully.
TINY = VincieConfig(
    name="tiny",
    dit=DiTConfig(vid_dim=64, txt_in_dim=32, heads=2, head_dim=32, num_layers=2, mm_layers=1,
                  rope_dim=30, max_num_prompts=64),
    vae=VAEConfig(block_out_channels=(8, 8, 16, 16), norm_num_groups=4),
    text=TextEncoderConfig(subfolder="text_encoder", hidden_size=32, max_length=64,
                           trust_remote_code=False, dtype="float32"),
    sampler=SamplerConfig(steps=4),
    session=SessionConfig(resolution=64),
)

# An ~11M-parameter official-layout model (DiT 7.4 M, VAE 4.0 M): timings mean something on a CPU.
SMALL = VincieConfig(
    name="small",
    dit=DiTConfig(vid_dim=256, txt_in_dim=64, heads=4, head_dim=64, num_layers=6, mm_layers=2, rope_dim=60),
    vae=VAEConfig(block_out_channels=(16, 32, 64, 64), norm_num_groups=8),
    text=TextEncoderConfig(subfolder="text_encoder", hidden_size=64, max_length=64, trust_remote_code=False,
                           dtype="float32"),
    sampler=SamplerConfig(steps=10),
    session=SessionConfig(resolution=128),
)

# The embedded model: trained here, on a CPU, from synthetic video of a shapes world, at 48 px with 8x8-pixel
# tokens (a 6x6 token grid per frame): the world's 3x3 grid of object cells then falls on whole tokens, so
# every cell draws a shape the same way and a move is a shift by whole tokens; at 32 px with 4x4-pixel tokens
# (the first shipped model) each cell sat at its own offset inside the tokens (docs/training.md, "Grid
# alignment"). Block-causal with a cached history; pixel space (4x4 pixel blocks folded into 48 channels:
# exact, nothing to train; patches of 2x2 blocks); its own word-level text encoder, trained with the DiT.
SHAPES = VincieConfig(
    name="vincie-shapes",
    # Width 192: at equal CPU minutes it learned the binding toy better than width 256 (docs/training.md,
    # "Model size"). A gated source residual (48 residual values + 48 gate logits per latent pixel): at
    # equal minutes it beat the plain residual on ShapesBench (docs/training.md, "Output"). Prompts at their
    # frames, each drawn frame reading its own instruction only: with every prompt visible, earlier
    # instructions took over later turns (ShapesBench turn 5 0.02 -> 0.40, docs/shapes_bench.md).
    dit=DiTConfig(vid_in_channels=97, vid_out_channels=96, vid_dim=192, txt_in_dim=64, heads=3, head_dim=64,
                  patch_size=(1, 2, 2), num_layers=6, mm_layers=2, rope_dim=60, attention="block_causal",
                  prediction="source_gated", prompt_position="frame", target_prompts="own"),
    vae=VAEConfig(kind="pixel", spatial_downsample_factor=4, latent_channels=48, scaling_factor=1.5,
                  shifting_factor=0.0, use_sample=False),
    text=TextEncoderConfig(subfolder="text_encoder", hidden_size=64, max_length=48, trust_remote_code=False,
                           dtype="float32"),
    sampler=SamplerConfig(steps=20, shift=3.0, cfg_scale=1.5),  # 1.5 beat 2 on two models x two noise seeds (docs/shapes_bench.md)
    session=SessionConfig(resolution=48, camera_prefix=STATIC_CAMERA_PREFIX, negative_prompt=""),
)

PRESETS: dict[str, VincieConfig] = {c.name: c for c in (VINCIE_3B, TINY, SMALL, SHAPES)}


def get_preset(name: str) -> VincieConfig:
    """Return a named preset, or raise a ValueError listing the known names."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; known presets: {sorted(PRESETS)}") from None
