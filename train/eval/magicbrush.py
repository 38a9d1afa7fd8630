"""MagicBrush metrics per turn: L1, L2, CLIP-I, CLIP-T and DINO of multi-turn edits against ground truth.

Ground truth, MagicBrush's test-set layout (``--gt`` is its ``images/`` folder)::

    GT/{img_id}/{img_id}-input.png               the source
    GT/{img_id}/{img_id}-output{k}.png           the ground truth after turn k (k = 1..K); masks are ignored
    GT/../edit_sessions.json                     {img_id: [{"input", "mask", "instruction", "output"}, ...]}
    GT/../local_captions.json                    {img_id: {"{img_id}-output{k}.png": caption}} (CLIP-T text)

Generated images (``--generated``), iterative editing (each turn edits the previous output)::

    GEN/{img_id}/{img_id}_1.png, {img_id}_iter_2.png, ...     MagicBrush's names, or
    GEN/{img_id}/turn1.png, turn2.png, ...                    what ``vincie edit -o GEN/{img_id}`` writes

Metrics follow MagicBrush's ``evaluation/image_eval.py``: L1 / L2 are the mean absolute / squared
difference of RGB in [0, 1] after resizing the generated image to the ground truth's size (PIL default
filter); CLIP-I is the cosine of the CLIP image embeddings of generated and ground-truth images, CLIP-T
the cosine of the generated image's embedding and the text embedding of the turn's caption (the
instruction when there are no captions), DINO the cosine of the DINO ViT CLS features (resize 256, crop
224, ImageNet normalisation). CLIP and DINO weights come from local transformers folders (e.g.
``openai/clip-vit-base-patch32`` and ``facebook/dino-vits16`` downloaded beforehand); without them those
metrics are skipped with a note and L1/L2 are still computed.

Example:
    >>> sessions = load_ground_truth("MagicBrush/test/images")               # doctest: +SKIP
    >>> report = evaluate(sessions, "out/generated", clip=ClipScorer.load("models/clip-vit-b32"))  # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch
from PIL import Image

log = logging.getLogger(__name__)

CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
METRICS = ("l1", "l2", "clip_i", "clip_t", "dino")


# ----------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class GroundTruthSession:
    """One MagicBrush session: source, ground truth per turn, and the turn texts when known."""

    img_id: str
    input: Path
    outputs: tuple[Path, ...]  # ground truth after turn 1..K
    instructions: tuple[str, ...] | None = None
    captions: tuple[str, ...] | None = None


def _digits(name: str) -> int:
    return int("".join(filter(str.isdigit, name)) or 0)


def load_ground_truth(gt_dir: str | os.PathLike, *, edit_sessions: str | os.PathLike | None = None,
                      captions: str | os.PathLike | None = None) -> list[GroundTruthSession]:
    """Read the MagicBrush ground-truth layout (see the module docstring), sessions sorted by id.

    ``edit_sessions``/``captions`` default to ``edit_sessions.json`` and ``local_captions.json`` (or
    ``global_descriptions.json``) in ``gt_dir`` or its parent, when present.
    """
    gt = Path(gt_dir).expanduser()
    if not gt.is_dir():
        raise FileNotFoundError(f"MagicBrush ground-truth folder not found: {gt}")
    sessions_file = Path(edit_sessions) if edit_sessions else _find(gt, ("edit_sessions.json",))
    captions_file = Path(captions) if captions else _find(gt, ("local_captions.json", "global_descriptions.json",
                                                                "global_description.json"))
    edits = json.loads(sessions_file.read_text()) if sessions_file else {}
    caps = json.loads(captions_file.read_text()) if captions_file else {}
    out = []
    for d in sorted(p for p in gt.iterdir() if p.is_dir()):
        img_id = d.name
        names = [p.name for p in d.iterdir() if p.suffix.lower() in (".png", ".jpg") and "mask" not in p.name]
        outputs = sorted((n for n in names if "output" in n), key=_digits)
        inputs = [n for n in names if "input" in n]
        if not outputs or not inputs:
            raise ValueError(f"{d}: expected {img_id}-input.png and {img_id}-output1.png ... (MagicBrush layout)")
        turns = edits.get(img_id)
        instructions = tuple(t["instruction"] for t in turns) if turns else None
        cap = caps.get(img_id)
        captions_k = tuple(cap.get(n, "") for n in outputs) if isinstance(cap, dict) else None
        out.append(GroundTruthSession(img_id, d / inputs[0], tuple(d / n for n in outputs), instructions, captions_k))
    if not out:
        raise ValueError(f"{gt}: no session folders ({{img_id}}/{{img_id}}-input.png, -output1.png, ...)")
    return out


def _find(gt: Path, names: tuple[str, ...]) -> Path | None:
    for folder in (gt, gt.parent):
        for n in names:
            if (folder / n).is_file():
                return folder / n
    return None


def generated_path(gen_dir: str | os.PathLike, img_id: str, turn: int) -> Path | None:
    """The generated image of ``turn`` (1-based) of a session, in either naming; None if absent."""
    d = Path(gen_dir) / img_id
    candidates = [d / f"{img_id}_1.png"] if turn == 1 else [d / f"{img_id}_iter_{turn}.png"]
    candidates.append(d / f"turn{turn}.png")
    return next((p for p in candidates if p.is_file()), None)


# ----------------------------------------------------------------------------------------------
# Metrics
# ----------------------------------------------------------------------------------------------

def distances(generated: Image.Image, truth: Image.Image) -> tuple[float, float]:
    """(L1, L2): mean |g - t| and mean (g - t)^2 over RGB in [0, 1], generated resized to the truth's size."""
    g = generated.convert("RGB")
    t = truth.convert("RGB")
    if g.size != t.size:
        g = g.resize(t.size)  # PIL's default filter, as MagicBrush
    a = np.asarray(g, dtype=np.float64) / 255.0
    b = np.asarray(t, dtype=np.float64) / 255.0
    return float(np.abs(a - b).mean()), float(((a - b) ** 2).mean())


def _resize_crop(image: Image.Image, resize: int, crop: int, mean, std) -> torch.Tensor:
    """torchvision Resize(resize, bicubic) + CenterCrop(crop) + ToTensor + Normalize, on a PIL image."""
    image = image.convert("RGB")
    w, h = image.size
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = resize, int(resize * long / short)
    size = (new_short, new_long) if w <= h else (new_long, new_short)
    image = image.resize(size, Image.BICUBIC)
    left, top = int(round((size[0] - crop) / 2.0)), int(round((size[1] - crop) / 2.0))
    image = image.crop((left, top, left + crop, top + crop))
    x = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)
    return (x - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]


def _cosine(a: torch.Tensor, b: torch.Tensor) -> list[float]:
    a, b = a.double(), b.double()
    return (torch.nn.functional.cosine_similarity(a, b, dim=-1)).tolist()


def _weights_note(what: str, path, error: str | None = None) -> str:
    model = "CLIP" if what.startswith("CLIP") else "DINO"
    if path is None:
        return f"{what} skipped: they need {model} weights (a local transformers folder)"
    return f"{what} need {model} weights at {path} (a local transformers folder){f': {error}' if error else ''}; skipping"


class ClipScorer:
    """CLIP image and text embeddings from a local transformers folder (``CLIPModel`` + its tokenizer)."""

    def __init__(self, model, tokenizer, device: str | torch.device = "cpu") -> None:
        self.model = model.eval().to(device)
        self.tokenizer = tokenizer
        self.device = torch.device(device)
        self.size = int(model.config.vision_config.image_size)

    @classmethod
    def load(cls, path: str | os.PathLike, device: str = "cpu") -> "ClipScorer":
        from transformers import AutoTokenizer, CLIPModel

        path = Path(path).expanduser()
        if not (path / "config.json").is_file():
            raise FileNotFoundError(_weights_note("CLIP-I/CLIP-T", path, "no config.json"))
        return cls(CLIPModel.from_pretrained(str(path)), AutoTokenizer.from_pretrained(str(path)), device)

    @torch.no_grad()
    def images(self, images: list[Image.Image]) -> torch.Tensor:
        x = torch.stack([_resize_crop(im, self.size, self.size, CLIP_MEAN, CLIP_STD) for im in images]).to(self.device)
        return _pooled(self.model.get_image_features(pixel_values=x)).float().cpu()

    @torch.no_grad()
    def texts(self, texts: list[str]) -> torch.Tensor:
        limit = int(self.model.config.text_config.max_position_embeddings)
        tokens = self.tokenizer(texts, padding=True, truncation=True, max_length=limit, return_tensors="pt")
        return _pooled(self.model.get_text_features(input_ids=tokens["input_ids"].to(self.device),
                                                    attention_mask=tokens["attention_mask"].to(self.device))).float().cpu()


class DinoScorer:
    """DINO / DINOv2 ViT CLS features from a local transformers folder (``AutoModel``)."""

    def __init__(self, model, device: str | torch.device = "cpu") -> None:
        self.model = model.eval().to(device)
        self.device = torch.device(device)
        self.crop = min(224, int(model.config.image_size))
        self.resize = round(self.crop * 256 / 224)

    @classmethod
    def load(cls, path: str | os.PathLike, device: str = "cpu") -> "DinoScorer":
        from transformers import AutoModel

        path = Path(path).expanduser()
        if not (path / "config.json").is_file():
            raise FileNotFoundError(_weights_note("DINO", path, "no config.json"))
        return cls(AutoModel.from_pretrained(str(path)), device)

    @torch.no_grad()
    def images(self, images: list[Image.Image]) -> torch.Tensor:
        x = torch.stack([_resize_crop(im, self.resize, self.crop, IMAGENET_MEAN, IMAGENET_STD) for im in images])
        return self.model(pixel_values=x.to(self.device)).last_hidden_state[:, 0].float().cpu()


def _pooled(out) -> torch.Tensor:
    # transformers < 5 returns the projected embeddings; 5.x returns an output whose pooler_output holds them.
    return out if isinstance(out, torch.Tensor) else out.pooler_output


def load_scorers(clip: str | None, dino: str | None, device: str = "cpu") -> tuple[ClipScorer | None,
                                                                                  DinoScorer | None, list[str]]:
    """Load what is available; the notes say what is skipped and why (never raises for missing weights)."""
    notes, clip_scorer, dino_scorer = [], None, None
    for what, path, klass in (("CLIP-I/CLIP-T", clip, ClipScorer), ("DINO", dino, DinoScorer)):
        if path is None:
            notes.append(_weights_note(what, None) + f" ({'--clip' if klass is ClipScorer else '--dino'} PATH)")
            continue
        try:
            scorer = klass.load(path, device)
        except FileNotFoundError as e:
            notes.append(str(e))
            continue
        except Exception as e:  # a folder that is not the expected model
            notes.append(_weights_note(what, path, f"{type(e).__name__}: {e}"))
            continue
        if klass is ClipScorer:
            clip_scorer = scorer
        else:
            dino_scorer = scorer
    return clip_scorer, dino_scorer, notes


# ----------------------------------------------------------------------------------------------
# Evaluation
# ----------------------------------------------------------------------------------------------

def evaluate(sessions: list[GroundTruthSession], gen_dir: str | os.PathLike, *, clip: ClipScorer | None = None,
             dino: DinoScorer | None = None, progress: Callable[[Iterable], Iterable] | None = None) -> dict:
    """Per-turn (and final-turn, all-turn) means of L1, L2 and, with their scorers, CLIP-I, CLIP-T, DINO.

    Returns:
        ``{"turns": [{"turn": k, "n": ..., "l1": ..., ...}], "final_turn": {...}, "all_turns": {...},
        "clip_t_text": "captions" | "instructions" | None, "sessions": {img_id: [per-turn dicts]}}``;
        metrics without a scorer are absent.
    Raises:
        FileNotFoundError: a generated image is missing for a ground-truth turn.
    """
    missing = [f"{s.img_id} turn {k}" for s in sessions for k in range(1, len(s.outputs) + 1)
               if generated_path(gen_dir, s.img_id, k) is None]
    if missing:
        raise FileNotFoundError(f"{len(missing)} generated images missing in {gen_dir} (e.g. {missing[:3]}); expected "
                                "{img_id}/{img_id}_1.png, {img_id}_iter_{k}.png or {img_id}/turn{k}.png")
    use_captions = all(s.captions for s in sessions)
    text_source = "captions" if use_captions else "instructions" if all(s.instructions for s in sessions) else None
    per_session: dict[str, list[dict]] = {}
    for s in (progress(sessions) if progress else sessions):
        gens = [Image.open(generated_path(gen_dir, s.img_id, k)).convert("RGB") for k in range(1, len(s.outputs) + 1)]
        truths = [Image.open(p).convert("RGB") for p in s.outputs]
        rows = [dict(zip(("l1", "l2"), distances(g, t))) for g, t in zip(gens, truths)]
        if clip is not None:
            gen_e, gt_e = clip.images(gens), clip.images(truths)
            for row, v in zip(rows, _cosine(gen_e, gt_e)):
                row["clip_i"] = v
            if text_source:
                texts = list(s.captions if use_captions else s.instructions)[: len(gens)]
                for row, v in zip(rows, _cosine(gen_e[: len(texts)], clip.texts(texts))):
                    row["clip_t"] = v
        if dino is not None:
            for row, v in zip(rows, _cosine(dino.images(gens), dino.images(truths))):
                row["dino"] = v
        per_session[s.img_id] = rows
    n_turns = max(len(s.outputs) for s in sessions)
    turns = [{"turn": k, **_means([r[k - 1] for r in per_session.values() if len(r) >= k])} for k in range(1, n_turns + 1)]
    return {"turns": turns, "final_turn": _means([r[-1] for r in per_session.values()]),
            "all_turns": _means([row for r in per_session.values() for row in r]), "clip_t_text": text_source,
            "sessions": per_session}


def _means(rows: list[dict]) -> dict:
    out: dict = {"n": len(rows)}
    for m in METRICS:
        values = [r[m] for r in rows if m in r]
        if values:
            out[m] = float(np.mean(values))
    return out


def format_report(report: dict, notes: list[str] = (), title: str = "MagicBrush") -> str:
    """Markdown table: one row per turn, then the final-turn and all-turn means."""
    present = [m for m in METRICS if m in report["all_turns"]]
    lines = [f"{title}: {report['final_turn']['n']} sessions", "",
             "| turn | n | " + " | ".join(m.upper().replace("_", "-") for m in present) + " |",
             "|---|---:|" + "---:|" * len(present)]
    rows = [(str(t["turn"]), t) for t in report["turns"]] + [("final", report["final_turn"]), ("all", report["all_turns"])]
    for label, r in rows:
        lines.append(f"| {label} | {r['n']} | " + " | ".join(f"{r[m]:.4f}" if m in r else "-" for m in present) + " |")
    if report.get("clip_t_text"):
        lines.append(f"\nCLIP-T text: the turn {report['clip_t_text']}")
    lines += [f"note: {n}" for n in notes]
    return "\n".join(lines)


def generate_magicbrush(sessions: list[GroundTruthSession], model, out_dir: str | os.PathLike, *, seed: int = 1,
                        steps: int | None = None, cfg_scale: float | None = None,
                        progress: Callable[[Iterable], Iterable] | None = None) -> Path:
    """Iterative editing of every session from its input with its instructions, saved with MagicBrush's
    names (``{id}_1.png``, ``{id}_iter_{k}.png``); sessions already complete are skipped."""
    from vincie_sdk import Session
    from vincie_sdk.loading import atomic_path

    out = Path(out_dir)
    for s in (progress(sessions) if progress else sessions):
        if not s.instructions:
            raise ValueError(f"session {s.img_id} has no instructions: generation needs edit_sessions.json")
        n = min(len(s.instructions), len(s.outputs))
        if all(generated_path(out, s.img_id, k) is not None for k in range(1, n + 1)):
            continue
        session = Session(model, s.input, seed=seed, steps=steps, cfg_scale=cfg_scale)
        for k, instruction in enumerate(s.instructions[:n], start=1):
            image = session.edit(instruction)
            name = f"{s.img_id}_1.png" if k == 1 else f"{s.img_id}_iter_{k}.png"
            with atomic_path(out / s.img_id / name) as tmp:
                image.save(tmp, format="PNG")
    return out

