"""The text side of a session: how each frame's prompt is written.

Convention (the official one, extended to masks): frame 0 is the source image; every later frame
``k`` is introduced by exactly one prompt, which gets turn id ``k - 1``. Official editing wraps the
instruction of the frame generated from frame ``src`` as
``"Based on <IMG{src}>, {instruction}. Output <IMG{k}>: "``. Region-of-editing masks (paper 3.3)
are frames too; their prompt says which task produced them (current / next region).

Example:
    >>> frame_prompt("Add a crown to the woman's head. ", src=1, index=2)
    "Based on <IMG1>, Add a crown to the woman's head. Output <IMG2>: "
"""

from __future__ import annotations

from enum import Enum


class FrameKind(str, Enum):
    IMAGE = "image"  # a picture: source, reference or next-image prediction (NIP)
    CURRENT_MASK = "current_mask"  # region that will change in the current image (CSP)
    NEXT_MASK = "next_mask"  # where the change will be in the next image (NSP)


# Fixed task phrases for the segmentation tasks (our convention; the released checkpoints were not
# trained with masks, so any fixed wording is as good for them).
TASK_PHRASES = {
    FrameKind.IMAGE: "Output",
    FrameKind.CURRENT_MASK: "Current region mask",
    FrameKind.NEXT_MASK: "Next region mask",
}


def clean_instruction(text: str) -> str:
    """Official normalisation: strip whitespace, then leading/trailing periods."""
    return text.strip().strip(".")


def frame_prompt(instruction: str, *, src: int, index: int, kind: FrameKind = FrameKind.IMAGE,
                 pad_img_placeholder: bool = True, camera_prefix: str = "") -> str:
    """The text that introduces frame ``index`` generated from frame ``src``.

    With ``pad_img_placeholder=False`` the (camera-prefixed) instruction is used verbatim, as the
    official code does in that mode.
    """
    text = camera_prefix + instruction
    if not pad_img_placeholder:
        return text
    return f"Based on <IMG{src}>, {clean_instruction(text)}. {TASK_PHRASES[FrameKind(kind)]} <IMG{index}>: "


def compose_prompts(instruction: str, n_refs: int) -> list[str]:
    """Multi-concept composition (official README): tags for references 1..n-1, then the instruction.

    Frame 0 is the first reference; prompt j < n-1 introduces reference j+1 as ``"<IMG{j+1}>: "``;
    the last prompt introduces the composed frame ``n``.
    """
    if n_refs < 1:
        raise ValueError("compose needs at least one reference image")
    tags = [f"<IMG{j + 1}>: " for j in range(n_refs - 1)]
    refs = [f"<IMG{j}>" for j in range(n_refs)]
    listed = refs[0] if n_refs == 1 else ", ".join(refs[:-1]) + ", and " + refs[-1]
    return tags + [f"Based on {listed}, {clean_instruction(instruction)}. Output <IMG{n_refs}>: "]
