"""VINCIE in-context multi-turn image editing: the SDK.

Example:
    >>> from vincie_sdk import VincieModel, Session
    >>> model = VincieModel.from_pretrained("vincie-shapes")   # doctest: +SKIP
    >>> s = Session(model, "scene.png", seed=1)                 # doctest: +SKIP
    >>> s.edit("Add a red circle at the top left")              # doctest: +SKIP
"""

from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["VincieModel", "Session", "Frame", "FrameKind", "VincieConfig", "PRESETS", "get_preset"]

# Imports are lazy so that `import vincie_sdk` (e.g. by ComfyUI at start-up) costs nothing until used.
_LAZY = {
    "VincieModel": ".model",
    "Session": ".session",
    "Frame": ".session",
    "FrameKind": ".prompts",
    "VincieConfig": ".config",
    "PRESETS": ".config",
    "get_preset": ".config",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module 'vincie_sdk' has no attribute {name!r}")
