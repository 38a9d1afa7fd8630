"""The ``server`` fixture: one real ComfyUI per test session (see comfy_server.py)."""

from __future__ import annotations

import pytest
from comfy_server import COMFY_DIR, Server, prepare_base, start_server


@pytest.fixture(scope="session")
def server(tmp_path_factory) -> Server:
    if not (COMFY_DIR / "main.py").is_file():
        pytest.skip(f"ComfyUI 0.3.75 not found at {COMFY_DIR}: run scripts/comfyui_env.sh or set VINCIE_COMFYUI_DIR")
    base = tmp_path_factory.mktemp("comfyui")
    prepare_base(base)
    try:
        srv = start_server(base)
    except RuntimeError as e:
        pytest.fail(str(e))
    yield srv
    srv.stop()
