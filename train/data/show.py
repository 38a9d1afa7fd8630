"""Contact sheets of session shards: frames, RoE masks and instructions, to check data by eye.

Each session is a block of four rows under a header (key, video, timestamps, backends):

1. the frames I0 .. IK;
2. the source RoE of turn i over frame i (outside the mask dimmed);
3. the target RoE of turn i over frame i + 1;
4. the instruction of turn i, with its camera tag, under frame i.

Example:
    >>> render_contact_sheet("shards/shard-00000.tar", max_sessions=6).save("sheet.png")  # doctest: +SKIP
"""

from __future__ import annotations

import itertools
import os
import textwrap

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .format import SessionRecord, read_sessions

CELL = 128  # frame height on the sheet
GAP = 6
LABEL_W = 64
TEXT_H = 64
HEADER_H = 18
BG = (250, 250, 250)
INK = (20, 20, 20)


def _font(size: int = 11) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has one bitmap size only
        return ImageFont.load_default()


def _scaled(image: np.ndarray, height: int) -> Image.Image:
    h, w = image.shape[:2]
    width = max(1, int(round(w * height / h)))
    # Nearest keeps small synthetic frames crisp; real frames are usually shrunk, where Lanczos is better.
    resample = Image.Resampling.NEAREST if height >= h else Image.Resampling.LANCZOS
    return Image.fromarray(image).resize((width, height), resample)


def _overlay(frame: np.ndarray, mask: np.ndarray, tint: tuple[int, int, int]) -> np.ndarray:
    out = frame.astype(np.float32) * 0.3
    out[mask] = frame[mask] * 0.6 + np.asarray(tint, dtype=np.float32) * 0.4
    return out.clip(0, 255).astype(np.uint8)


def render_session(session: SessionRecord, max_frames: int = 8) -> Image.Image:
    """One session block (see the module docstring); at most ``max_frames`` frames are drawn."""
    frames = session.frames[:max_frames]
    turns = session.turns[: len(frames) - 1]
    cell_w = _scaled(frames[0], CELL).width
    font, small = _font(11), _font(10)
    prov = session.provenance
    stamps = ", ".join(f"{t:.1f}" for t in prov.get("timestamps", []))
    backends = f"{prov.get('annotator', '?')} + {prov.get('masker', '?')}"
    header = f"{session.key}  |  {prov.get('video', '?')} @ [{stamps}] s  |  {backends}"
    header_w = int(ImageDraw.Draw(Image.new("RGB", (1, 1))).textlength(header, font=font)) + 8
    width = max(LABEL_W + len(frames) * (cell_w + GAP), header_w)
    height = HEADER_H + 3 * (CELL + GAP) + TEXT_H
    sheet = Image.new("RGB", (width, height), BG)
    draw = ImageDraw.Draw(sheet)
    draw.text((4, 3), header, fill=INK, font=font)
    rows_y = [HEADER_H + r * (CELL + GAP) for r in range(3)]
    for label, y in zip(("frames", "RoE src", "RoE tgt"), rows_y):
        draw.text((4, y + CELL // 2 - 6), label, fill=INK, font=font)
    text_y = HEADER_H + 3 * (CELL + GAP)
    draw.text((4, text_y + 2), "instr.", fill=INK, font=font)
    chars = max(8, cell_w // 6)
    for i, frame in enumerate(frames):
        x = LABEL_W + i * (cell_w + GAP)
        sheet.paste(_scaled(frame, CELL), (x, rows_y[0]))
        if i < len(turns) and turns[i].roe_src is not None:
            sheet.paste(_scaled(_overlay(frame, turns[i].roe_src, (255, 40, 40)), CELL), (x, rows_y[1]))
        if 0 < i <= len(turns) and turns[i - 1].roe_tgt is not None:
            sheet.paste(_scaled(_overlay(frame, turns[i - 1].roe_tgt, (40, 200, 40)), CELL), (x, rows_y[2]))
        if i < len(turns):
            t = turns[i]
            text = f"T{i}: {t.instruction}" + (f" [cam: {t.camera}]" if t.camera != "None" else "")
            lines = textwrap.wrap(text, chars)[:5]
            draw.multiline_text((x, text_y + 2), "\n".join(lines), fill=INK, font=small, spacing=1)
    return sheet


def render_contact_sheet(shard: str | os.PathLike, max_sessions: int = 8, max_frames: int = 8) -> Image.Image:
    """A sheet of the first ``max_sessions`` sessions of a shard file (or of a shard directory)."""
    blocks = [render_session(s, max_frames) for s in itertools.islice(read_sessions(shard), max_sessions)]
    if not blocks:
        raise ValueError(f"show: {shard} holds no session to draw")
    width = max(b.width for b in blocks)
    sheet = Image.new("RGB", (width, sum(b.height + GAP for b in blocks)), (200, 200, 200))
    y = 0
    for b in blocks:
        sheet.paste(b, (0, y))
        y += b.height + GAP
    return sheet
