"""Transition annotation: one instruction (+ camera tag, changing objects) per pair of sampled frames.

Backends:

* ``synthetic`` -- exact, from the sidecar JSON of a synthetic video (:mod:`vincie_train.synth`).
* ``openai`` -- any OpenAI-compatible chat endpoint with image input (``pip install openai``), prompted
  with the paper's chain of thought: describe both frames by aspect, list the differences, summarise one
  editing instruction, name the changing objects and the camera motion; the JSON reply is parsed and
  validated, with retries.
* ``hf`` -- a local transformers vision-language model loaded from a folder (no download).

Example:
    >>> t = parse_annotation('{"instruction": "Add a dog.", "camera": "static", '
    ...                      '"changing_objects": {"source": [], "target": ["dog"]}}')
    >>> t.instruction, t.camera, t.objects_tgt
    ('Add a dog.', 'None', ['dog'])
"""

from __future__ import annotations

import base64
import io
import json
import logging
import re
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
from PIL import Image

from ..synth.instructions import category_of, describe_changes, diff_scenes
from ..synth.undo import undo_span
from ..synth.video import load_sidecar

log = logging.getLogger(__name__)

CAMERA_TAGS = (
    "None",
    "pan-left",
    "pan-right",
    "pan-up",
    "pan-down",
    "tilt-up",
    "tilt-down",
    "zoom-in",
    "zoom-out",
    "rotate",
    "shake",
    "other",
)
CATEGORIES = ("add", "remove", "replace", "move", "attribute", "pose", "action", "background", "camera", "global", "other")
ASPECTS = ("characters", "objects", "attributes", "interactions", "scene", "environment")

# The paper's chain-of-thought annotation (Sec. 3.1 / App. C.2): describe by aspect, diff, summarise.
ANNOTATION_PROMPT = """You annotate the visual transition between two frames of one video, to train an image editing model.
The first image is the SOURCE frame and the second image is the TARGET frame.
Think step by step:
1. Describe each frame in detail from these aspects: characters, objects, attributes, interactions, scene, environment.
2. Identify the semantic and visual differences between the two frames from the same aspects.
3. Summarise all the differences into ONE concise, imperative editing instruction that turns the source frame into the target frame (for example "Add a red umbrella to the woman's hand."). Do not mention the camera in it.
4. Name the characters or objects that change, as short noun phrases an object detector can find, separately as they appear in the source frame and in the target frame (an added object appears only in the target list, a removed one only in the source list).
5. Name the camera motion between the frames: one of none, pan-left, pan-right, pan-up, pan-down, tilt-up, tilt-down, zoom-in, zoom-out, rotate, shake, other.
Reply with one JSON object and nothing else, with these keys:
{"source_description": {"characters": "...", "objects": "...", "attributes": "...", "interactions": "...", "scene": "...", "environment": "..."},
 "target_description": {same keys},
 "differences": ["..."],
 "instruction": "...",
 "changing_objects": {"source": ["..."], "target": ["..."]},
 "camera": "none",
 "category": "one of add, remove, replace, move, attribute, pose, action, background, camera, global, other"}"""


class AnnotationError(ValueError):
    """A turn could not be annotated (the message says why); ``reason`` is its summary counter."""

    def __init__(self, message: str, reason: str = "turn_annotation_failed"):
        super().__init__(message)
        self.reason = reason


@dataclass
class Transition:
    """The annotation of frame i -> frame i + 1 (see :class:`vincie_train.data.format.TurnRecord`)."""

    instruction: str
    camera: str = "None"
    category: str = "other"
    objects_src: list[str] = field(default_factory=list)
    objects_tgt: list[str] = field(default_factory=list)
    changes: list[dict] = field(default_factory=list)
    object_ids: list[int] = field(default_factory=list)  # synthetic only: ids in the sidecar
    extra: dict = field(default_factory=dict)


@dataclass
class Clip:
    """The sampled frames of one future session, as annotators and maskers see them.

    Attributes:
        video: source file.
        key: the session key (also seeds any randomness, so results do not depend on sharding).
        frames: K + 1 frames (H, W, 3) uint8 at output resolution (after border crop).
        indices: decode indices of the frames in the video.
        times: their timestamps in seconds.
        crop: ``(top, bottom, left, right)`` pixels cropped from the full-size frames.
        full_size: ``(width, height)`` of the video.
        sidecar: the synthetic sidecar, when the video has one.
    """

    video: Path
    key: str
    frames: list[np.ndarray]
    indices: list[int]
    times: list[float]
    crop: tuple[int, int, int, int] = (0, 0, 0, 0)
    full_size: tuple[int, int] = (0, 0)
    sidecar: dict | None = None


class Annotator(Protocol):
    name: str

    def annotate(self, clip: Clip, i: int) -> Transition:
        """Annotate frames ``i -> i + 1`` of ``clip``; raise :class:`AnnotationError` to reject the turn."""


# --- parsing -------------------------------------------------------------------------------------------


def _extract_json(text: str) -> dict:
    text = text.strip()
    fenced = re.search(r"```(?:json)?\s*(.*?)```", text, re.S)
    if fenced:
        text = fenced.group(1).strip()
    start, end = text.find("{"), text.rfind("}")
    if start < 0 or end <= start:
        raise AnnotationError(f"no JSON object in reply: {text[:80]!r}")
    try:
        data = json.loads(text[start : end + 1])
    except json.JSONDecodeError as exc:
        raise AnnotationError(f"invalid JSON in reply ({exc.msg} at char {exc.pos})") from exc
    if not isinstance(data, dict):
        raise AnnotationError("reply JSON is not an object")
    return data


def normalize_camera(value: object) -> str:
    """Map a free-form camera answer onto :data:`CAMERA_TAGS` (unknown -> ``"other"``)."""
    if value is None:
        return "None"
    v = re.sub(r"[\s_]+", "-", str(value).strip().lower())
    if v in ("", "none", "static", "no", "no-motion", "fixed", "still", "null"):
        return "None"
    return v if v in CAMERA_TAGS else "other"


def _phrases(value: object, field_name: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise AnnotationError(f"{field_name} must be a list of strings, got {value!r:.80}")
    return [v.strip() for v in value if v.strip()][:8]


def parse_annotation(text: str, max_chars: int = 400) -> Transition:
    """Parse and validate a VLM reply (JSON, possibly fenced or surrounded by prose).

    Raises:
        AnnotationError: no JSON object, missing or empty instruction, wrong field types.
    """
    data = _extract_json(text)
    instruction = data.get("instruction")
    if not isinstance(instruction, str) or not instruction.strip():
        raise AnnotationError("reply has no non-empty 'instruction' string")
    instruction = " ".join(instruction.split())
    if len(instruction) > max_chars:
        raise AnnotationError(f"instruction is {len(instruction)} characters, more than {max_chars}")
    objects = data.get("changing_objects", {})
    if isinstance(objects, list):  # a flat list names objects of both frames
        src = tgt = _phrases(objects, "changing_objects")
    elif isinstance(objects, dict):
        src = _phrases(objects.get("source"), "changing_objects.source")
        tgt = _phrases(objects.get("target"), "changing_objects.target")
    else:
        raise AnnotationError(f"changing_objects must be an object with source/target lists, got {objects!r:.80}")
    category = str(data.get("category", "other")).strip().lower()
    extra = {k: data[k] for k in ("source_description", "target_description", "differences") if k in data}
    return Transition(
        instruction=instruction,
        camera=normalize_camera(data.get("camera")),
        category=category if category in CATEGORIES else "other",
        objects_src=src,
        objects_tgt=tgt,
        extra=extra,
    )


# --- synthetic -----------------------------------------------------------------------------------------


def sidecar_path(video: Path) -> Path:
    return video.with_suffix(".json")


class SyntheticAnnotator:
    """Exact annotations from the synthetic sidecar: scene diff -> templated instruction + camera tag.

    Instructions use the *train* phrasings; the template is drawn from a generator seeded by the session
    key and turn, so the result does not depend on sharding or order.

    With ``back_prob > 0``, a turn that undoes the latest change of one thing in the session so far
    (:func:`vincie_train.synth.undo.undo_span`) is, with that probability, also phrased by reference
    ("move the red circle back"): ``extra["back"] = {"instruction": ..., "span": k}``, where ``k`` is
    how many frames back the restored state was last shown. The explicit instruction stays the turn's
    instruction; a trainer uses the back one only when the session it draws holds that frame
    (:func:`vincie_train.pretrain.with_back_instructions`).
    """

    name = "synthetic"

    def __init__(self, split: str = "train", back_prob: float = 0.0):
        if not 0.0 <= back_prob <= 1.0:
            raise ValueError(f"SyntheticAnnotator: back_prob={back_prob} must be within [0, 1]")
        self.split, self.back_prob = split, back_prob

    def annotate(self, clip: Clip, i: int) -> Transition:
        if clip.sidecar is None:
            raise AnnotationError(
                f"no synthetic sidecar {sidecar_path(clip.video).name} next to {clip.video}", reason="turn_no_sidecar"
            )
        frames = clip.sidecar["frames"]
        a, b = frames[clip.indices[i]]["scene"], frames[clip.indices[i + 1]]["scene"]
        changes = diff_scenes(a, b)
        if not changes:
            raise AnnotationError("no change between the frames", reason="turn_no_change")
        rng = np.random.default_rng([zlib.crc32(clip.key.encode()), i])
        instruction, camera = describe_changes(changes, rng, self.split)
        ids = list(dict.fromkeys(c.object.id for c in changes if c.object is not None))
        extra = {}
        if self.back_prob > 0:
            back_rng = np.random.default_rng([zlib.crc32(clip.key.encode()), i, 1])
            # Draw first: the history search is skipped for the turns that stay explicit anyway.
            if back_rng.random() < self.back_prob and (
                    span := undo_span([frames[clip.indices[j]]["scene"] for j in range(i + 1)], b)) is not None:
                extra["back"] = {"instruction": describe_changes(changes, back_rng, self.split, back=True)[0],
                                 "span": span}
        names_a = {o.id: o.describe() for o in a.objects}
        names_b = {o.id: o.describe() for o in b.objects}
        return Transition(
            instruction=instruction,
            camera=camera,
            category=category_of(changes),
            objects_src=[names_a[k] for k in ids if k in names_a],
            objects_tgt=[names_b[k] for k in ids if k in names_b],
            changes=[c.to_dict() for c in changes],
            object_ids=ids,
            extra=extra,
        )


def load_clip_sidecar(video: Path, num_frames: int) -> dict | None:
    """The sidecar of a synthetic video, checked against the decoded frame count; ``None`` if absent."""
    path = sidecar_path(video)
    if not path.is_file():
        return None
    data = load_sidecar(path)
    if data["num_frames"] != num_frames:
        raise AnnotationError(f"sidecar {path} has {data['num_frames']} frames but the video decodes to {num_frames}")
    return data


# --- VLM backends --------------------------------------------------------------------------------------


def _data_url(image: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


class _VLMAnnotator:
    """Shared prompt, parse, validate and retry logic; subclasses implement :meth:`complete`."""

    name = "vlm"

    def __init__(self, max_retries: int = 2, retry_delay: float = 0.5):
        if max_retries < 0:
            raise ValueError(f"max_retries={max_retries} must be >= 0")
        self.max_retries = max_retries
        self.retry_delay = retry_delay

    def complete(self, source: np.ndarray, target: np.ndarray, attempt: int) -> str:
        raise NotImplementedError

    def annotate(self, clip: Clip, i: int) -> Transition:
        errors = []
        for attempt in range(self.max_retries + 1):
            try:
                reply = self.complete(clip.frames[i], clip.frames[i + 1], attempt)
                transition = parse_annotation(reply)
                transition.extra["attempts"] = attempt + 1
                return transition
            except AnnotationError as exc:
                errors.append(str(exc))
            except Exception as exc:  # noqa: BLE001 - endpoint errors of any client library are retried
                errors.append(f"{type(exc).__name__}: {exc}")
            log.warning("%s: %s turn %d attempt %d failed: %s", self.name, clip.key, i, attempt + 1, errors[-1])
            if attempt < self.max_retries and self.retry_delay > 0:
                time.sleep(self.retry_delay * (2**attempt))
        raise AnnotationError(f"{self.name} annotation failed after {len(errors)} attempts: {errors[-1]}")


class OpenAIAnnotator(_VLMAnnotator):
    """Annotate with any OpenAI-compatible chat-completions endpoint that accepts images.

    Args:
        model: model name on the endpoint.
        base_url: e.g. ``http://localhost:8000/v1`` (vLLM, SGLang, llama.cpp server...); ``None`` = OpenAI.
        api_key: the key; ``"EMPTY"`` works for local servers without authentication.
        max_retries: extra attempts after a failed request or an invalid reply.
        timeout: seconds per request.
        json_mode: ask for ``response_format={"type": "json_object"}`` (if the server supports it).

    Example:
        >>> ann = OpenAIAnnotator("Qwen2.5-VL-7B-Instruct", base_url="http://localhost:8000/v1")  # doctest: +SKIP
    """

    name = "openai"

    def __init__(
        self,
        model: str,
        base_url: str | None = None,
        api_key: str | None = None,
        max_retries: int = 2,
        timeout: float = 60.0,
        json_mode: bool = False,
        temperature: float = 0.2,
        max_tokens: int = 1024,
        retry_delay: float = 0.5,
    ):
        super().__init__(max_retries, retry_delay)
        try:
            import openai
        except ImportError as exc:
            raise ImportError("annotator 'openai' needs the openai package: pip install openai") from exc
        # Retries are ours (they also cover invalid replies), so the client must not retry on its own.
        self.client = openai.OpenAI(base_url=base_url, api_key=api_key or "EMPTY", max_retries=0, timeout=timeout)
        self.model, self.json_mode = model, json_mode
        self.temperature, self.max_tokens = temperature, max_tokens

    def complete(self, source: np.ndarray, target: np.ndarray, attempt: int) -> str:
        content = [
            {"type": "text", "text": ANNOTATION_PROMPT},
            {"type": "text", "text": "SOURCE frame:"},
            {"type": "image_url", "image_url": {"url": _data_url(source)}},
            {"type": "text", "text": "TARGET frame:"},
            {"type": "image_url", "image_url": {"url": _data_url(target)}},
        ]
        kwargs = {"response_format": {"type": "json_object"}} if self.json_mode else {}
        response = self.client.chat.completions.create(
            model=self.model,
            messages=[{"role": "user", "content": content}],
            temperature=self.temperature,
            max_tokens=self.max_tokens,
            **kwargs,
        )
        if not response.choices:
            raise AnnotationError("endpoint returned no choices")
        return response.choices[0].message.content or ""


class HFAnnotator(_VLMAnnotator):
    """Annotate with a local transformers image-text-to-text model (e.g. a Qwen2.5-VL folder).

    The folder is loaded with ``AutoProcessor`` and ``AutoModelForImageTextToText`` (offline). Each attempt
    renders the chain-of-thought prompt with both frames through the processor's chat template (which
    inserts the model's image tokens and preprocesses the images), generates at most ``max_new_tokens``
    (greedy first, sampled on retries) and decodes only the generated tokens; the reply is then parsed
    like any other backend's, and a malformed reply is retried up to ``max_retries`` times before the turn
    is rejected with :class:`AnnotationError`.

    Args:
        model_dir: folder with the model's config, weights and processor (nothing is downloaded); the
            processor (or its tokenizer) must have a chat template, i.e. an instruction-tuned model.
        device: torch device.
        max_new_tokens: generation budget (the chain of thought is long).
        max_retries: extra attempts after a failed generation or an invalid reply.

    Raises:
        FileNotFoundError: ``model_dir`` is not a folder.
        ValueError: the processor has no chat template.

    Example:
        >>> ann = HFAnnotator("/models/Qwen2.5-VL-3B-Instruct")  # doctest: +SKIP
    """

    name = "hf"

    def __init__(self, model_dir: str, device: str = "cpu", max_new_tokens: int = 1024, max_retries: int = 1):
        super().__init__(max_retries, retry_delay=0.0)
        path = Path(model_dir)
        if not path.is_dir():
            raise FileNotFoundError(f"annotator 'hf': model folder {path} does not exist; pass --hf-model DIR")
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens={max_new_tokens} must be >= 1")
        from transformers import AutoModelForImageTextToText, AutoProcessor

        self.processor = AutoProcessor.from_pretrained(path, local_files_only=True)
        if not (
            getattr(self.processor, "chat_template", None)
            or getattr(getattr(self.processor, "tokenizer", None), "chat_template", None)
        ):
            raise ValueError(
                f"annotator 'hf': the processor in {path} has no chat template (chat_template.jinja); "
                "use an instruction-tuned vision-language model"
            )
        self.model = AutoModelForImageTextToText.from_pretrained(path, local_files_only=True, dtype="auto")
        self.model.to(device).eval()
        self.device, self.max_new_tokens = device, max_new_tokens

    def messages(self, source: np.ndarray, target: np.ndarray) -> list[dict]:
        """The chat: the prompt, then the SOURCE and TARGET frames, as one user turn."""
        return [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": ANNOTATION_PROMPT},
                    {"type": "text", "text": "SOURCE frame:"},
                    {"type": "image", "image": Image.fromarray(source)},
                    {"type": "text", "text": "TARGET frame:"},
                    {"type": "image", "image": Image.fromarray(target)},
                ],
            }
        ]

    def complete(self, source: np.ndarray, target: np.ndarray, attempt: int) -> str:
        import torch

        # The processor's chat template inserts the model's image tokens and preprocesses the two frames
        # (this also handles the per-model nesting of images, e.g. Idefics3 / SmolVLM).
        inputs = self.processor.apply_chat_template(
            self.messages(source, target),
            add_generation_prompt=True,
            tokenize=True,
            return_dict=True,
            return_tensors="pt",
        )
        # Floating point inputs (pixel values) follow the model's dtype, e.g. a bfloat16 checkpoint.
        inputs = inputs.to(self.model.device, dtype=self.model.dtype)
        prompt_len = inputs["input_ids"].shape[1]
        with torch.no_grad():
            # Greedy first; later attempts sample, so a retry can produce a different (valid) reply.
            out = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=attempt > 0)
        sequences = getattr(out, "sequences", out)  # a generation config may ask for a dict output
        # Decoder-only VLMs return the prompt followed by the reply: decode only the new tokens.
        return self.processor.batch_decode(sequences[:, prompt_len:], skip_special_tokens=True)[0]


def make_annotator(name: str, **options) -> Annotator:
    """Build an annotator by CLI name: ``synthetic``, ``openai`` or ``hf`` (options are its arguments)."""
    if name == "synthetic":
        return SyntheticAnnotator(**options)
    if name == "openai":
        if not options.get("model"):
            raise ValueError("annotator 'openai' needs a model name: pass --openai-model NAME")
        return OpenAIAnnotator(**options)
    if name == "hf":
        if not options.get("model_dir"):
            raise ValueError("annotator 'hf' needs a local model folder: pass --hf-model DIR")
        return HFAnnotator(**options)
    raise ValueError(f"unknown annotator {name!r}; use 'synthetic', 'openai' or 'hf'")
