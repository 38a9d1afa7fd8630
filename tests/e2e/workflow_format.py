"""ComfyUI workflow formats: UI (what the frontend saves and loads) ↔ API (what ``POST /prompt`` takes).

Both conversions need the server's ``/object_info`` (the order of widget inputs, which INT widgets carry
an extra "control after generate" value, socket types and output names).

The shipped ``workflows/api/*.json`` are the source; the UI files are generated from them, and the
tests check that converting a UI file back gives its API twin. Regenerate the UI files after editing an
API file (a ComfyUI with this pack must be running):

    python tests/e2e/workflow_format.py --server http://127.0.0.1:8188 workflows/api/*.json
"""

from __future__ import annotations

import argparse
import json
import uuid
from pathlib import Path

# Frontend-only node types (no backend class): skipped when converting to API format.
VIRTUAL_NODES = {"Note", "MarkdownNote", "Reroute", "PrimitiveNode"}
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
MUTED_MODES = {2, 4}  # never / bypass


def _ordered_inputs(info: dict) -> list[tuple[str, list, bool]]:
    """(name, spec, optional) in the order the frontend builds sockets and widgets."""
    order = info.get("input_order") or {k: list(v) for k, v in info["input"].items()}
    out = []
    for section in ("required", "optional"):
        for name in order.get(section, []):
            out.append((name, info["input"][section][name], section == "optional"))
    return out


def _is_widget(spec: list) -> bool:
    kind = spec[0]
    return isinstance(kind, list) or kind in WIDGET_TYPES


def _has_control_widget(name: str, spec: list) -> bool:
    """The frontend adds a 'control after generate' value after such INT (and some COMBO) widgets."""
    opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
    control = opts.get("control_after_generate")
    if control is None and spec[0] == "INT":
        return name in ("seed", "noise_seed")
    return bool(control)


# ---------------------------------------------------------------------------------------------- UI -> API
def ui_to_api(ui: dict, object_info: dict) -> dict:
    """Convert a UI-format workflow to API format (muted, bypassed and frontend-only nodes are dropped)."""
    links = {link[0]: link for link in ui.get("links", [])}
    api = {}
    for node in ui["nodes"]:
        kind = node["type"]
        if kind in VIRTUAL_NODES or node.get("mode", 0) in MUTED_MODES:
            continue
        if kind not in object_info:
            raise KeyError(f"node {node['id']}: type {kind!r} is not registered on the server (missing node)")
        info = object_info[kind]
        linked = {i["name"]: links[i["link"]] for i in node.get("inputs", []) if i.get("link") is not None}
        values = list(node.get("widgets_values") or [])
        inputs = {}
        for name, spec, _ in _ordered_inputs(info):
            if _is_widget(spec):
                value = values.pop(0) if values else None
                if _has_control_widget(name, spec) and values:
                    values.pop(0)
                if name not in linked and value is not None:
                    inputs[name] = value
            if name in linked:
                link = linked[name]
                inputs[name] = [str(link[1]), link[2]]
        api[str(node["id"])] = {"class_type": kind, "inputs": inputs,
                                "_meta": {"title": node.get("title") or info.get("display_name") or kind}}
    return api


# ---------------------------------------------------------------------------------------------- API -> UI
def _depths(api: dict) -> dict[str, int]:
    depth: dict[str, int] = {}

    def visit(nid: str) -> int:
        if nid not in depth:
            parents = [v[0] for v in api[nid]["inputs"].values() if isinstance(v, list)]
            depth[nid] = 1 + max((visit(p) for p in parents), default=-1)
        return depth[nid]

    for nid in api:
        visit(nid)
    return depth


def _node_height(info: dict) -> int:
    sockets = sum(1 for _, spec, _ in _ordered_inputs(info) if not _is_widget(spec))
    height = 30 + 22 * max(sockets, len(info["output"]))
    for name, spec, _ in _ordered_inputs(info):
        if _is_widget(spec):
            opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
            height += 90 if opts.get("multiline") else 26
            height += 26 if _has_control_widget(name, spec) else 0
    return height


def api_to_ui(api: dict, object_info: dict, *, columns: int = 5, viewport: tuple[int, int] = (1400, 860)) -> dict:
    """A UI-format workflow laid out in columns by graph depth (wrapping after ``columns`` columns)."""
    depth = _depths(api)
    order = sorted(api, key=lambda k: (depth[k], int(k) if k.isdigit() else k))
    width, gap = 330, 40
    heights = {nid: _node_height(object_info[api[nid]["class_type"]]) for nid in api}
    band_height = max(sum(heights[n] + gap for n in api if depth[n] == d) for d in set(depth.values()))
    column_y: dict[int, int] = {}
    links, nodes, link_id = [], [], 0
    for index, nid in enumerate(order):
        node = api[nid]
        info = object_info[node["class_type"]]
        d = depth[nid]
        col, band = d % columns, d // columns
        y = column_y.get(d, 0)
        column_y[d] = y + heights[nid] + gap
        inputs, widgets = [], []
        for name, spec, _ in _ordered_inputs(info):
            value = node["inputs"].get(name)
            if _is_widget(spec):
                default = spec[1].get("default") if len(spec) > 1 and isinstance(spec[1], dict) else None
                widgets.append(default if value is None else value)
                if _has_control_widget(name, spec):
                    widgets.append("fixed")
            else:
                link = None
                if isinstance(value, list):
                    link_id += 1
                    link = link_id
                    target_slot = len(inputs)
                    links.append([link, int(value[0]), value[1], int(nid), target_slot, spec[0]])
                inputs.append({"name": name, "type": spec[0], "link": link})
        outs = [{"name": info["output_name"][i], "type": t, "links": [], "slot_index": i}
                for i, t in enumerate(info["output"])]
        nodes.append({
            "id": int(nid), "type": node["class_type"], "pos": [40 + col * (width + gap), 40 + band * band_height + y],
            "size": [width, heights[nid]], "flags": {}, "order": index, "mode": 0, "inputs": inputs, "outputs": outs,
            "title": node.get("_meta", {}).get("title") or info["display_name"],
            "properties": {"Node name for S&R": node["class_type"]}, "widgets_values": widgets,
        })
    by_id = {n["id"]: n for n in nodes}
    for link in links:
        by_id[link[1]]["outputs"][link[2]]["links"].append(link[0])
    right = max(n["pos"][0] + n["size"][0] for n in nodes) + 40
    bottom = max(n["pos"][1] + n["size"][1] for n in nodes) + 40
    scale = round(min(1.0, viewport[0] / right, viewport[1] / bottom), 3)
    return {
        "id": str(uuid.uuid5(uuid.NAMESPACE_URL, json.dumps(api, sort_keys=True))),
        "revision": 0, "last_node_id": max(int(n) for n in api), "last_link_id": link_id,
        "nodes": nodes, "links": links, "groups": [], "config": {},
        "extra": {"ds": {"scale": scale, "offset": [0, 0]}}, "version": 0.4,
    }


def main() -> None:
    import urllib.request

    parser = argparse.ArgumentParser(description="Write the UI-format twin of API-format workflows")
    parser.add_argument("--server", default="http://127.0.0.1:8188", help="a running ComfyUI with this pack")
    parser.add_argument("api_files", nargs="+", type=Path)
    args = parser.parse_args()
    with urllib.request.urlopen(f"{args.server}/object_info") as r:
        object_info = json.load(r)
    for path in args.api_files:
        api = json.loads(path.read_text())
        target = path.parent.parent / path.name
        target.write_text(json.dumps(api_to_ui(api, object_info), indent=2) + "\n")
        if ui_to_api(json.loads(target.read_text()), object_info) != api:
            raise SystemExit(f"{path}: converting {target} back does not give the API file")
        print(f"wrote {target}")


if __name__ == "__main__":
    main()
