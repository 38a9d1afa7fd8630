"""Context composition (paper 3.3): from a session record to the frames, prompts and targets of a
training sample, with RoE masks, context dropout and text dropout.

A session ``I0, T0, I1, T1, ...`` becomes the frame sequence ``I0, [M00, M01], I1, [M10, M11], I2, ...``
where ``M_i0`` / ``M_i1`` are the regions of editing in ``I_i`` / ``I_{i+1}`` (present for the whole
session with probability ``roe_prob``). Every frame after the first is a target: images train next-image
prediction (NIP), current-region masks current-segmentation prediction (CSP), next-region masks
next-segmentation prediction (NSP). Each frame's prompt is written exactly as at inference
(:func:`vincie_sdk.prompts.frame_prompt`), with the turn's camera tag as prefix.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from vincie_sdk.prompts import FrameKind, frame_prompt

from .data.format import CAMERA_NONE, SessionRecord


@dataclass(frozen=True)
class CompositionConfig:
    roe_prob: float = 0.8  # RoE masks are part of a session with this probability
    drop_current_frame: float = 0.2  # I_i hidden from later turns' targets (never from its own turn's)
    drop_current_roe: float = 0.7  # M_i0 hidden from everything after it (still a CSP target)
    drop_next_roe: float = 0.7  # M_i1 hidden likewise (still an NSP target)
    text_drop: float = 0.1  # a target's prompt replaced by the empty prompt (for CFG)
    word_drop: float = 0.1  # an instruction's leading verb phrase replaced by [UNK]s (see unknown_verb)
    camera_tags: bool = True  # "[###CAMERA: tag###] " prefixes from the annotations


@dataclass
class ComposedSession:
    """Frames and prompts of one training sample, plus its dropout decisions.

    Attributes:
        images: frame pixels (H, W, 3) uint8; masks are replicated to RGB (white = region).
        kinds: FrameKind per frame.
        prompts: one formatted prompt per frame k >= 1 (introduces frame k).
        sources: per frame k >= 1, the image frame it is generated from.
        dropped: frames hidden as context (context dropout).
        text_dropped: frames k whose target sees the empty prompt instead of its own.
    """

    images: list[np.ndarray]
    kinds: list[FrameKind]
    prompts: list[str]
    sources: list[int]
    dropped: set[int] = field(default_factory=set)
    text_dropped: set[int] = field(default_factory=set)

    @property
    def targets(self) -> list[int]:
        return list(range(1, len(self.images)))


def camera_prefix(tag: str) -> str:
    return f"[###CAMERA: {tag or CAMERA_NONE}###] "


def mask_image(mask: np.ndarray) -> np.ndarray:
    return np.repeat((np.asarray(mask, dtype=bool) * 255).astype(np.uint8)[..., None], 3, axis=-1)


def unknown_verb(instruction: str, rng: np.random.Generator) -> str:
    """The instruction with its leading verb phrase (the words before the first article, or the first
    word) replaced by one to three ``[UNK]`` tokens.

    The embedded model's tokenizer knows only its training corpus' words, so a user's own verb ("erase",
    "get rid of") reaches it as one or more unknown tokens; seeing that in training teaches it to read the
    edit from the rest of the sentence ("the red circle" + nothing = remove, "... blue" = recolour).

    >>> unknown_verb("take away the red circle", np.random.default_rng(1))
    '[UNK] [UNK] the red circle'
    """
    words = instruction.split()
    cut = next((i for i, w in enumerate(words) if w.lower() in ("a", "an", "the")), 1) or 1
    return " ".join(["[UNK]"] * int(rng.integers(1, 4)) + words[cut:])


def compose(record: SessionRecord, rng: np.random.Generator, config: CompositionConfig = CompositionConfig()
            ) -> ComposedSession:
    """Turn a session record into a training sample's frames, prompts and dropout decisions."""
    has_roe = all(t.roe_src is not None and t.roe_tgt is not None for t in record.turns)
    use_roe = has_roe and rng.random() < config.roe_prob
    images, kinds, prompts, sources, dropped, text_dropped = [record.frames[0]], [FrameKind.IMAGE], [], [], set(), set()
    src = 0
    for i, turn in enumerate(record.turns):
        prefix = camera_prefix(turn.camera) if config.camera_tags else ""
        instruction = turn.instruction
        if config.word_drop and rng.random() < config.word_drop:
            instruction = unknown_verb(instruction, rng)
        if i > 0 and rng.random() < config.drop_current_frame:
            dropped.add(src)
        entries = []
        if use_roe:
            entries += [(FrameKind.CURRENT_MASK, mask_image(turn.roe_src), config.drop_current_roe),
                        (FrameKind.NEXT_MASK, mask_image(turn.roe_tgt), config.drop_next_roe)]
        entries.append((FrameKind.IMAGE, record.frames[i + 1], 0.0))
        for kind, pixels, p_drop in entries:
            index = len(images)
            images.append(pixels)
            kinds.append(kind)
            prompts.append(frame_prompt(instruction, src=src, index=index, kind=kind, camera_prefix=prefix))
            sources.append(src)
            if p_drop and rng.random() < p_drop:
                dropped.add(index)
            if rng.random() < config.text_drop:
                text_dropped.add(index)
        src = len(images) - 1
    return ComposedSession(images, kinds, prompts, sources, dropped, text_dropped)


def without_dropped(session: ComposedSession, target: int) -> ComposedSession:
    """The full-attention layout's view of one target: dropped context frames are removed and the
    prompts re-numbered, then frames after ``target`` are cut."""
    keep = [k for k in range(target + 1) if k == 0 or k == target or k == session.sources[target - 1]
            or k not in session.dropped]
    remap = {old: new for new, old in enumerate(keep)}
    images = [session.images[k] for k in keep]
    kinds = [session.kinds[k] for k in keep]
    prompts, sources = [], []
    for new, old in enumerate(keep[1:], start=1):
        src = session.sources[old - 1]
        while src not in remap:  # its source was dropped: fall back to the latest kept image before it
            src = session.sources[src - 1]
        sources.append(remap[src])
        prompts.append(_renumber(session.prompts[old - 1], session.sources[old - 1], old, remap[src], new))
    return ComposedSession(images, kinds, prompts, sources)


def _renumber(prompt: str, src: int, index: int, new_src: int, new_index: int) -> str:
    # Through placeholders, so that a new number equal to an old one is not replaced twice.
    marked = prompt.replace(f"<IMG{index}>", "\0I\0").replace(f"<IMG{src}>", "\0S\0")
    return marked.replace("\0I\0", f"<IMG{new_index}>").replace("\0S\0", f"<IMG{new_src}>")
