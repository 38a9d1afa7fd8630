"""Contact sheet of the shipped workflows' outputs (docs/images/workflows-vincie-shapes.png).

The end-to-end tests save what each workflow produced when VINCIE_E2E_OUTPUTS is set; this lays those
images out, one row per workflow:

    VINCIE_E2E_OUTPUTS=outputs/e2e ./scripts/test.sh tests/e2e/test_server.py -k workflow_runs
    ~/.cache/comfyui-vincie/venv/bin/python scripts/workflow_sheet.py outputs/e2e docs/images/workflows-vincie-shapes.png
"""

from __future__ import annotations

import sys
from pathlib import Path

from PIL import Image

from vincie_sdk.sheet import contact_sheet

# (workflow, [(file, caption), ...]) in the order of docs/comfyui.md's table.
ROWS = [
    ("multi_turn_editing", [("node12_0", "multi-turn: source")] + [(f"node12_{k}", f"turn {k}") for k in range(1, 6)]),
    ("story_generation", [("node7_0", "story: source")] + [(f"node7_{k}", f"line {k}") for k in range(1, 6)]),
    ("mask_controlled_editing", [("node12_0", "edit in the user mask"), ("node15_0", "predicted region (CSP)")]),
    ("drag_editing", [("node11_0", "drag: edited image"), ("node13_0", "the moved mask")]),
    ("multi_concept_composition", [("node9_0", "composition")]),
]


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    folder, out = Path(argv[0]), Path(argv[1])
    rows = []
    for workflow, cells in ROWS:
        row = []
        for name, caption in cells:
            path = folder / workflow / f"{name}.png"
            if not path.exists():
                print(f"missing {path}: run the end-to-end tests with VINCIE_E2E_OUTPUTS={folder}", file=sys.stderr)
                return 1
            row.append((Image.open(path), caption))
        rows.append(row)
    sheet = contact_sheet(rows, cell=128, caption_lines=1)
    tmp = out.with_name(out.name + ".tmp.png")
    sheet.save(tmp)
    tmp.replace(out)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
