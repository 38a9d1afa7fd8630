"""Driving a real ComfyUI 0.3.75 over HTTP for the end-to-end tests (the ``server`` fixture in conftest.py
starts it once per test session, headless on the CPU, with a temporary ``--base-directory`` whose
``custom_nodes/comfyui-vincie`` links to this repository).

Model: the shipped workflows name the embedded model ``vincie-shapes``. When it is installed
(``vincie_sdk/weights/vincie-shapes/``) they run exactly as shipped; until then the tests substitute a
tiny random checkpoint (``models/vincie/tiny-random``, built here) and 2 sampling steps. Set
``VINCIE_E2E_MODEL=tiny-random`` to force the substitution.

Prepare ComfyUI with ``scripts/comfyui_env.sh``; it is found at ``VINCIE_COMFYUI_DIR`` (default
``$VINCIE_CACHE/comfyui-0.3.75``), and the tests are skipped with that reason when it is absent.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("VINCIE_CACHE", Path.home() / ".cache" / "comfyui-vincie")).expanduser()
COMFY_DIR = Path(os.environ.get("VINCIE_COMFYUI_DIR", CACHE / "comfyui-0.3.75")).expanduser()
EMBEDDED = "vincie-shapes"
TINY_NAME = "tiny-random"
TINY_STEPS = 2
WORKFLOWS = REPO / "workflows"
WORKFLOW_NAMES = sorted(p.stem for p in WORKFLOWS.glob("*.json"))


def embedded_installed() -> bool:
    return (REPO / "vincie_sdk" / "weights" / EMBEDDED / "config.json").is_file()


@dataclass
class Server:
    url: str
    base: Path
    log_path: Path
    process: subprocess.Popen
    model_name: str
    object_info: dict = field(default_factory=dict)

    def get(self, path: str, **kw):
        return requests.get(self.url + path, timeout=30, **kw)

    def post(self, path: str, payload: dict):
        return requests.post(self.url + path, json=payload, timeout=30)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def for_test(self, api: dict, steps: int = TINY_STEPS) -> dict:
        """The workflow as this server runs it: as shipped with the embedded model, else the tiny checkpoint."""
        api = copy.deepcopy(api)
        if self.model_name == EMBEDDED:
            return api
        for node in api.values():
            if node["class_type"] == "VincieModelLoader":
                node["inputs"]["checkpoint"] = self.model_name
            if "steps" in node["inputs"] and node["class_type"].startswith("Vincie"):
                node["inputs"]["steps"] = steps
        return api

    def queue(self, api: dict, client_id: str = "vincie-tests") -> str:
        r = self.post("/prompt", {"prompt": api, "client_id": client_id})
        if r.status_code != 200:
            raise AssertionError(f"/prompt refused the workflow ({r.status_code}): {r.text[:2000]}")
        return r.json()["prompt_id"]

    def wait(self, prompt_id: str, timeout: float = 120) -> dict:
        """Poll /history until the prompt finished; returns its history entry."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            entry = self.get(f"/history/{prompt_id}").json().get(prompt_id)
            if entry and entry.get("status", {}).get("completed") is not None:
                return entry
            time.sleep(0.1)
        raise TimeoutError(f"prompt {prompt_id} did not finish in {timeout} s")

    def run(self, api: dict, timeout: float = 120) -> dict:
        return self.wait(self.queue(api), timeout)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def prepare_base(base: Path) -> None:
    """custom_nodes/ with this pack linked in, the tiny checkpoint, and settings that skip the tutorial."""
    from vincie_sdk import VincieModel
    from vincie_sdk.config import TINY

    (base / "custom_nodes").mkdir(parents=True)
    (base / "custom_nodes" / "comfyui-vincie").symlink_to(REPO, target_is_directory=True)
    VincieModel.from_random(TINY, seed=0).save_pretrained(base / "models" / "vincie" / TINY_NAME)
    settings = base / "user" / "default" / "comfy.settings.json"
    settings.parent.mkdir(parents=True)
    settings.write_text(json.dumps({"Comfy.TutorialCompleted": True}))


def load_workflow(name: str, api: bool) -> dict:
    return json.loads((WORKFLOWS / ("api" if api else "") / f"{name}.json").read_text())


def start_server(base: Path) -> Server:
    """Start ComfyUI on a free port with ``base`` as its base directory; returns once HTTP answers."""
    port = free_port()
    log_path = base / "server.log"
    # One torch thread unless told otherwise: the test models are tiny, and on a shared CPU several
    # OpenMP threads wait for each other (seen: 100x slower sampling steps).
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            [sys.executable, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port), "--base-directory",
             str(base), "--disable-auto-launch", "--disable-api-nodes", "--database-url", "sqlite:///:memory:"],
            cwd=COMFY_DIR, env=env, stdout=log, stderr=subprocess.STDOUT)
    model_name = EMBEDDED if embedded_installed() and os.environ.get("VINCIE_E2E_MODEL") != TINY_NAME else TINY_NAME
    srv = Server(f"http://127.0.0.1:{port}", base, log_path, process, model_name)
    deadline = time.monotonic() + 120
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"ComfyUI exited with {process.returncode}:\n{srv.log()[-4000:]}")
        try:
            if srv.get("/system_stats").ok:
                break
        except requests.ConnectionError:
            pass
        if time.monotonic() > deadline:
            srv.stop()
            raise RuntimeError(f"ComfyUI did not answer within 120 s:\n{srv.log()[-4000:]}")
        time.sleep(0.25)
    srv.object_info = srv.get("/object_info").json()
    return srv
