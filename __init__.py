"""ComfyUI entry point of comfyui-vincie: registers the VINCIE nodes (V3 node API).

Clone this repository into ``ComfyUI/custom_nodes/`` and ``pip install -r requirements.txt``; see
docs/comfyui.md. Importing this file outside ComfyUI (no ``comfy_api``) exports nothing and fails nothing.
"""

from __future__ import annotations

import importlib.util
import logging
import sys
from pathlib import Path

__all__: list[str] = []

_HERE = Path(__file__).resolve().parent


def _ensure_sdk() -> None:
    """Make ``vincie_sdk`` importable: a pip-installed copy wins, else the one shipped in this folder."""
    if "vincie_sdk" in sys.modules or importlib.util.find_spec("vincie_sdk") is not None:
        return
    spec = importlib.util.spec_from_file_location("vincie_sdk", _HERE / "vincie_sdk" / "__init__.py",
                                                  submodule_search_locations=[str(_HERE / "vincie_sdk")])
    module = importlib.util.module_from_spec(spec)
    sys.modules["vincie_sdk"] = module
    spec.loader.exec_module(module)


try:
    from comfy_api.latest import ComfyExtension
except ImportError:  # not running inside ComfyUI
    ComfyExtension = None

if ComfyExtension is not None:
    _ensure_sdk()
    from .nodes import loader, lora, masks, sampling, session

    NODES = [*loader.NODES, *session.NODES, *sampling.NODES, *masks.NODES, *lora.NODES]

    class VincieExtension(ComfyExtension):
        async def get_node_list(self) -> list:
            return list(NODES)

    async def comfy_entrypoint() -> VincieExtension:
        return VincieExtension()

    __all__ = ["comfy_entrypoint"]
    logging.getLogger(__name__).debug("comfyui-vincie: %d nodes", len(NODES))
