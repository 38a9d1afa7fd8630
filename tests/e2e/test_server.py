"""The pack in a real ComfyUI 0.3.75 server, driven over HTTP like a script or CI job would."""

from __future__ import annotations

import asyncio
import io
import json
import re
import time

import pytest
from comfy_server import EMBEDDED, WORKFLOW_NAMES, Server, load_workflow
from PIL import Image
from workflow_format import ui_to_api

aiohttp = pytest.importorskip("aiohttp", reason="a ComfyUI requirement: run scripts/comfyui_env.sh")

NODE_IDS = {"VincieModelLoader", "VincieSessionBuilder", "VincieNIPSampler", "VincieMaskPredictor",
            "VincieMaskTransform", "VincieStoryChain", "VincieCompose", "VincieSessionToImages", "VincieUndo",
            "VincieLoraLoader"}

# Images each shipped workflow must produce: {output node id: number of images}, and which of those nodes
# show VINCIE frames (at the session's working size; the others show user masks at their own size).
EXPECTED_IMAGES = {
    "multi_turn_editing": {"12": 6, "13": 1},  # source + 5 turns; the final image
    "mask_controlled_editing": {"12": 1, "15": 1},  # edited image; predicted mask
    "drag_editing": {"11": 1, "13": 1},  # edited image; the moved user mask
    "story_generation": {"7": 6},  # source + 5 lines
    "multi_concept_composition": {"9": 1},
}
USER_MASK_OUTPUTS = {("drag_editing", "13")}


def fetch_images(server: Server, entry: dict) -> dict[str, list[Image.Image]]:
    out = {}
    for node_id, output in entry["outputs"].items():
        images = []
        for ref in output.get("images", []):
            r = server.get("/view", params={"filename": ref["filename"], "subfolder": ref["subfolder"],
                                            "type": ref["type"]})
            assert r.status_code == 200, f"/view {ref}: {r.status_code}"
            images.append(Image.open(io.BytesIO(r.content)).convert("RGB"))
        out[node_id] = images
    return out


def errors_of(entry: dict) -> list[dict]:
    return [m[1] for m in entry["status"]["messages"] if m[0] == "execution_error"]


def test_object_info_lists_every_node(server):
    vincie = {k: v for k, v in server.object_info.items() if v["category"] == "VINCIE"}
    assert set(vincie) == NODE_IDS
    assert all(v["description"] and v["display_name"].startswith("VINCIE ") for v in vincie.values())
    checkpoints = server.object_info["VincieModelLoader"]["input"]["required"]["checkpoint"][1]["options"]
    assert server.model_name in checkpoints
    assert "IMPORT FAILED" not in "\n".join(line for line in server.log().splitlines() if "vincie" in line.lower())


def test_workflows_are_offered_as_templates(server):
    templates = server.get("/workflow_templates").json()
    assert sorted(templates["comfyui-vincie"]) == WORKFLOW_NAMES
    r = server.get("/api/workflow_templates/comfyui-vincie/multi_turn_editing.json")
    assert r.status_code == 200 and r.json() == load_workflow("multi_turn_editing", api=False)


@pytest.mark.parametrize("name", WORKFLOW_NAMES)
def test_workflow_runs(server, name):
    api = ui_to_api(load_workflow(name, api=False), server.object_info)  # every node type must be registered
    assert api == load_workflow(name, api=True), f"workflows/api/{name}.json is not the API twin of {name}.json"
    if server.model_name != EMBEDDED:
        assert any(n["inputs"].get("checkpoint") == EMBEDDED for n in api.values()), "ship the embedded model"
    entry = server.run(server.for_test(api))
    assert entry["status"]["status_str"] == "success", errors_of(entry)
    images = fetch_images(server, entry)
    assert {k: len(v) for k, v in images.items()} == EXPECTED_IMAGES[name]
    sizes = {im.size for node_id, ims in images.items() if (name, node_id) not in USER_MASK_OUTPUTS for im in ims}
    assert len(sizes) == 1, f"all outputs are at the session's working size, got {sizes}"
    (w, h), = sizes
    assert w % 16 == 0 and h % 16 == 0


def test_masks_of_another_size_are_resized_with_a_note(server):
    # The drag workflow draws its masks at the scene's 256x256; the session works at the model's resolution.
    entry = server.run(server.for_test(load_workflow("drag_editing", api=True)))
    assert entry["status"]["status_str"] == "success", errors_of(entry)
    working = fetch_images(server, entry)["11"][0].size
    if working != (256, 256):
        assert "is 256x256, the session works at" in server.log()


def test_validation_error_names_the_node(server):
    api = server.for_test(load_workflow("multi_turn_editing", api=True))
    api["7"]["inputs"]["instruction"] = "   "
    r = server.post("/prompt", {"prompt": api})
    assert r.status_code == 400
    error = r.json()["node_errors"]["7"]
    assert error["class_type"] == "VincieNIPSampler"
    assert error["errors"][0]["type"] == "custom_validation_failed"
    assert "instruction is empty" in error["errors"][0]["details"]


def test_runtime_error_is_a_clear_node_error(server):
    api = server.for_test(load_workflow("story_generation", api=True))
    api["2"]["inputs"].update(width=2048, height=2)  # no latent block left at the working resolution
    entry = server.run(api)
    assert entry["status"]["status_str"] == "error"
    (error,) = errors_of(entry)
    assert error["node_id"] == "5" and error["node_type"] == "VincieSessionBuilder"
    assert error["exception_type"] == "ValueError"
    assert re.search(r"image: image 2048x2 at resolution \d+ leaves no \d+x\d+ block", error["exception_message"])


async def _messages(server: Server, api: dict, client_id: str, on_message=None, timeout: float = 120) -> list[dict]:
    """Queue ``api`` and collect its websocket messages until it succeeds, fails or is interrupted."""
    ws_url = server.url.replace("http", "ws") + f"/ws?clientId={client_id}"
    seen = []
    async with aiohttp.ClientSession() as http, http.ws_connect(ws_url) as ws:
        async with http.post(server.url + "/prompt", json={"prompt": api, "client_id": client_id}) as r:
            assert r.status == 200, await r.text()
            prompt_id = (await r.json())["prompt_id"]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            msg = await ws.receive(timeout=max(0.1, deadline - time.monotonic()))
            if msg.type != aiohttp.WSMsgType.TEXT:
                continue
            data = json.loads(msg.data)
            if data.get("data", {}).get("prompt_id") not in (None, prompt_id):
                continue
            data["t"] = time.monotonic()
            seen.append(data)
            if on_message is not None:
                await on_message(http, data)
            if data["type"] in ("execution_success", "execution_error", "execution_interrupted"):
                return seen
    raise TimeoutError(f"no end of execution within {timeout} s; got {[m['type'] for m in seen]}")


def test_progress_is_reported_every_sampling_step(server):
    api = server.for_test(load_workflow("multi_turn_editing", api=True))
    for node in api.values():
        if node["class_type"] == "VincieNIPSampler":
            node["inputs"].update(steps=3, seed=1234)  # a new seed: nothing cached from earlier runs
    seen = asyncio.run(_messages(server, api, "vincie-progress"))
    assert seen[-1]["type"] == "execution_success"
    progress = {}
    for m in seen:
        if m["type"] == "progress":
            progress.setdefault(m["data"]["node"], []).append((m["data"]["value"], m["data"]["max"]))
    for node_id in ("6", "7", "8", "9", "10"):
        assert progress[node_id] == [(1, 3), (2, 3), (3, 3)], progress


def test_interrupt_stops_a_long_run(server):
    api = server.for_test(load_workflow("story_generation", api=True))
    api["5"]["inputs"]["resolution"] = 256
    api["6"]["inputs"].update(steps=1000, instructions="add a circle\nmove it\nremove it")
    sent = {}

    async def interrupt_on_first_progress(http, data):
        if data["type"] == "progress" and "t" not in sent:
            sent["t"] = time.monotonic()
            async with http.post(server.url + "/interrupt", json={}) as r:
                assert r.status == 200

    try:
        seen = asyncio.run(_messages(server, api, "vincie-interrupt", interrupt_on_first_progress, timeout=60))
    finally:
        server.post("/interrupt", {})
    assert seen[-1]["type"] == "execution_interrupted", [m["type"] for m in seen][-5:]
    assert seen[-1]["data"]["node_type"] == "VincieStoryChain"
    steps_after = sum(1 for m in seen if m["type"] == "progress" and m["t"] > sent["t"])
    assert steps_after <= 2 and seen[-1]["t"] - sent["t"] < 10, (steps_after, seen[-1]["t"] - sent["t"])


def test_free_unloads_and_the_next_run_reloads(server):
    api = server.for_test(load_workflow("multi_concept_composition", api=True))
    assert server.run(api)["status"]["status_str"] == "success"
    r = server.post("/free", {"unload_models": True, "free_memory": True})
    assert r.status_code == 200
    api["8"]["inputs"]["seed"] = 99  # not cached
    time.sleep(1)  # /free wakes the prompt worker, which unloads between prompts
    before = server.log().count("Requested to load _Weights")
    assert server.run(api)["status"]["status_str"] == "success"
    assert server.log().count("Requested to load _Weights") > before
