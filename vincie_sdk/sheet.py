"""Contact sheets: rows of images with captions, for looking at sessions and results."""

from __future__ import annotations

import textwrap
from typing import Sequence

from PIL import Image, ImageDraw, ImageFont


def contact_sheet(rows: Sequence[Sequence[tuple[Image.Image, str]]], *, cell: int = 160,
                  caption_lines: int = 4, title: str | None = None) -> Image.Image:
    """Lay out ``rows`` of (image, caption) pairs; every image is scaled to fit a ``cell`` square.

    Example:
        >>> sheet = contact_sheet([[(Image.new("RGB", (64, 64)), "source")]])
        >>> sheet.size[0] >= 160
        True
    """
    font = ImageFont.load_default()
    line_h = 12
    pad = 6
    cap_h = caption_lines * line_h + pad
    title_h = 2 * line_h if title else 0
    ncols = max((len(r) for r in rows), default=1)
    width = ncols * (cell + pad) + pad
    height = title_h + len(rows) * (cell + cap_h + pad) + pad
    sheet = Image.new("RGB", (width, height), (250, 250, 250))
    draw = ImageDraw.Draw(sheet)
    if title:
        draw.text((pad, pad), title, fill=(0, 0, 0), font=font)
    chars = max(8, cell // 6)
    for r, row in enumerate(rows):
        y = title_h + pad + r * (cell + cap_h + pad)
        for c, (img, caption) in enumerate(row):
            x = pad + c * (cell + pad)
            scale = cell / max(img.size)
            # Nearest keeps small synthetic images crisp when enlarged.
            shown = img.convert("RGB").resize((max(1, round(img.size[0] * scale)), max(1, round(img.size[1] * scale))),
                                              Image.NEAREST if scale >= 1 else Image.BICUBIC)
            sheet.paste(shown, (x + (cell - shown.size[0]) // 2, y + (cell - shown.size[1]) // 2))
            lines = textwrap.wrap(caption or "", chars)[:caption_lines]
            for k, line in enumerate(lines):
                draw.text((x, y + cell + 2 + k * line_h), line, fill=(20, 20, 20), font=font)
    return sheet
