"""Fixtures for in-process node tests: ComfyUI imported as a library (no server), the pack loaded the way
ComfyUI loads a custom node, and a tiny random checkpoint in a temporary ``vincie`` model folder.

ComfyUI is found at ``VINCIE_COMFYUI_DIR`` (default ``$VINCIE_CACHE/comfyui-0.3.75``; prepare it with
``scripts/comfyui_env.sh``); tests that need it are skipped when it is absent.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("VINCIE_CACHE", Path.home() / ".cache" / "comfyui-vincie")).expanduser()
COMFY_DIR = Path(os.environ.get("VINCIE_COMFYUI_DIR", CACHE / "comfyui-0.3.75")).expanduser()
TINY_NAME = "tiny-random"


def load_package(name: str, root: Path = REPO):
    """Import ``root/__init__.py`` as package ``name``, as ComfyUI does with a custom-node folder."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, root / "__init__.py", submodule_search_locations=[str(root)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """The test models are tiny: on a shared CPU, several OpenMP threads mostly wait for each other."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def comfy():
    """ComfyUI's modules, imported in-process with ``--cpu``."""
    if not (COMFY_DIR / "comfy" / "model_management.py").is_file():
        pytest.skip(f"ComfyUI not found at {COMFY_DIR}: run scripts/comfyui_env.sh or set VINCIE_COMFYUI_DIR")
    if str(COMFY_DIR) not in sys.path:
        sys.path.insert(0, str(COMFY_DIR))
    argv = sys.argv
    sys.argv = [argv[0], "--cpu"]
    try:
        import comfy.options

        comfy.options.enable_args_parsing()
        import comfy.model_management
        import comfy.utils
        import folder_paths  # noqa: F401
    finally:
        sys.argv = argv
    return comfy


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A ``vincie`` model folder holding a tiny random checkpoint named ``tiny-random``."""
    from vincie_sdk import VincieModel
    from vincie_sdk.config import TINY

    root = tmp_path_factory.mktemp("models") / "vincie"
    VincieModel.from_random(TINY, seed=0).save_pretrained(root / TINY_NAME)
    return root


@pytest.fixture(scope="session")
def pack(comfy, tiny_checkpoint):
    """The pack's package (loaded like ComfyUI loads it), with the tiny checkpoint's folder registered."""
    import folder_paths

    package = load_package("comfyui_vincie_pack")
    folder_paths.add_model_folder_path("vincie", str(tiny_checkpoint))
    return package


@pytest.fixture(scope="session")
def model(pack):
    return pack.nodes.loader.VincieModelLoader.execute(TINY_NAME, "auto", "gpu").args[0]


@pytest.fixture()
def progress_calls(comfy):
    """Every ComfyUI progress-bar update of the test, as (value, total)."""
    import comfy.utils

    calls = []

    def hook(value, total, preview=None, node_id=None):
        calls.append((value, total))

    comfy.utils.set_progress_bar_global_hook(hook)
    yield calls
    comfy.utils.set_progress_bar_global_hook(None)
