"""The ComfyUI frontend (served by the test server) loads the shipped multi-turn workflow in headless
Chromium: every node is registered and rendered, no "missing nodes" dialog, widget values intact; the
other shipped workflows load without missing nodes too.

The screenshot goes to ``$VINCIE_SCREENSHOT_DIR`` (default: the test's temporary folder);
docs/images/comfyui-multiturn.png is a copy of it.
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import pytest
from comfy_server import WORKFLOW_NAMES, load_workflow

pytest.importorskip("aiohttp", reason="a ComfyUI requirement: run scripts/comfyui_env.sh")
from cdp import Browser, find_chromium  # noqa: E402  (needs aiohttp)

MISSING_DIALOG = """[...document.querySelectorAll('[role=dialog]')].map(d => d.innerText)
    .filter(t => /missing nodes/i.test(t)).join('\\n')"""
UNREGISTERED = "app.graph._nodes.filter(n => !LiteGraph.registered_node_types[n.type] || n.has_errors).map(n => n.type)"
DISMISS_BANNER = """(() => {
    const tryIt = [...document.querySelectorAll('button')].find(b => b.textContent.trim() === 'Try it out');
    let box = tryIt && tryIt.parentElement;
    while (box && box.querySelectorAll('button').length < 2) box = box.parentElement;
    const buttons = box ? [...box.querySelectorAll('button')] : [];
    if (buttons.length > 1) buttons[buttons.length - 1].click();
    return buttons.length > 1;
})()"""


async def _load(page: Browser, workflow: dict, name: str) -> None:
    await page.eval(f"app.loadGraphData({json.dumps(workflow)}, true, true, {json.dumps(name)})")
    await asyncio.sleep(1.0)  # the missing-nodes dialog opens after the graph is configured


async def _check_multiturn(server, shot: Path) -> dict:
    workflow = load_workflow("multi_turn_editing", api=False)
    async with Browser(1400, 900) as page:
        await page.goto(server.url + "/")
        await page.wait_for("!!(window.app && app.graph && LiteGraph.registered_node_types['VincieNIPSampler'])", 90)
        await _load(page, workflow, "multi_turn_editing")
        result = {
            "nodes": await page.eval("app.graph._nodes.length"),
            "unregistered": await page.eval(UNREGISTERED),
            "dialog": await page.eval(MISSING_DIALOG),
            "widgets": await page.eval("Object.fromEntries(app.graph._nodes.map(n => "
                                       "[n.id, (n.widgets || []).map(w => w.value)]))"),
        }
        await page.eval("app.extensionManager.command.execute('Comfy.Canvas.FitView')")
        if await page.eval("!!app.ui.settings.getSettingValue('Comfy.Minimap.Visible')"):
            await page.eval("app.extensionManager.command.execute('Comfy.Canvas.ToggleMinimap')")
        await page.eval(DISMISS_BANNER)
        await asyncio.sleep(0.5)
        await page.screenshot(shot)
        result["others"] = {}
        for name in WORKFLOW_NAMES:
            await _load(page, load_workflow(name, api=False), name)
            result["others"][name] = (await page.eval(UNREGISTERED), await page.eval(MISSING_DIALOG))
        # The detector works: a workflow with an unknown node type does raise the dialog.
        broken = json.loads(json.dumps(workflow))
        broken["nodes"][0]["type"] = "VincieNoSuchNode"
        await _load(page, broken, "broken")
        result["control_dialog"] = await page.eval(MISSING_DIALOG)
        result["control_unregistered"] = await page.eval(UNREGISTERED)
    return result


def test_frontend_renders_the_multiturn_workflow(server, tmp_path):
    if find_chromium() is None:
        pytest.skip("Chromium not found: apt-get install -y chromium (or scripts/comfyui_env.sh --with-browser)")
    shot = Path(os.environ.get("VINCIE_SCREENSHOT_DIR", tmp_path)) / "comfyui-multiturn.png"
    result = asyncio.run(_check_multiturn(server, shot))
    workflow = load_workflow("multi_turn_editing", api=False)
    assert result["nodes"] == len(workflow["nodes"])
    assert result["unregistered"] == [] and result["dialog"] == ""
    for node in workflow["nodes"]:
        assert result["widgets"][str(node["id"])] == node["widgets_values"], (node["id"], node["type"])
    assert result["others"] == {name: ([], "") for name in WORKFLOW_NAMES}  # the other workflows load too
    assert "VincieNoSuchNode" in result["control_dialog"] and result["control_unregistered"] == ["VincieNoSuchNode"]
    assert shot.stat().st_size > 20_000
    print(f"screenshot: {shot}")
