"""MSE-Bench harness: data formats, official file names, the judge protocol against a local stub VLM
(canned scores, malformed replies, stop at the first failure, Responses API), aggregation by hand, the CLI."""

from __future__ import annotations

import base64
import io
import json
import math
import re

import numpy as np
import pytest
from PIL import Image
from vincie_data_helpers import StubOpenAI
from vincie_train.eval.mse_bench import (PROMPT_TEMPLATE, JudgeSettings, VlmJudge, aggregate, judge_all,
                                         load_mse_bench, output_name, parse_reply, score_reply, write_csv)

CONTEXT = {
    0: ["add a hat", "make it red", "remove the dog", "turn it to night", "add snow"],
    1: ["b1", "b2 FAIL", "b3", "b4", "b5"],  # the judge fails turn 2
    2: ["c1 MALFORMED", "c2", "c3", "c4", "c5"],  # the first reply of turn 1 cannot be parsed
}


def make_bench(folder, n=3, size=(64, 48)):
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        Image.new("RGB", size, (40 * i, 100, 200)).save(folder / f"src{i}.png")
        rows.append({"image": f"src{i}.png", "index": i, "context": CONTEXT.get(i, [f"p{i}{k}" for k in range(5)]),
                     "operation": ["add"] * 5})
    (folder / "meta.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def make_predictions(folder, items, size=(32, 24)):
    folder.mkdir(parents=True, exist_ok=True)
    for item in items:
        for t in range(5):
            Image.new("RGB", size, (item.index * 10, t * 40, 0)).save(folder / output_name(item.index, t))
    return folder


def reply(pf, c):
    return json.dumps({"reason": "ok", "prompt_following": pf, "consistency": c})


def canned_judge(body) -> str:
    """Scores from the request: which item (by its prompts) and which turn (number of prompts shown)."""
    if "messages" in body:
        content = body["messages"][0]["content"]
        text = content[0]["text"]
    else:
        content = body["input"][0]["content"]
        text = content[0]["text"]
    shown = re.search(r"The (\d+) instructions:", text)
    k = int(shown.group(1))
    if "FAIL" in text and k == 2:
        return reply(3, 9)
    if "c1 MALFORMED" in text and k == 1 and not canned_judge.seen_malformed:
        canned_judge.seen_malformed = True
        return "I think the edit is good."
    if "c2" in text and k == 2:  # a fenced Python-dict reply: parsed by ast.literal_eval
        return "```json\n{'reason': 'fine', 'prompt_following': 7, 'consistency': 8}\n```"
    return reply(8, 9)


canned_judge.seen_malformed = False


@pytest.fixture()
def bench(tmp_path):
    items = load_mse_bench(make_bench(tmp_path / "bench"))
    return items, make_predictions(tmp_path / "preds", items)


def settings(stub, **kw):
    return JudgeSettings(api_base=stub.url, api_model="stub-vlm", api_key="test", retry_delay=0.0, **kw)


# ---------------------------------------------------------------------------------------------- data
def test_local_copy_formats(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    items = load_mse_bench(make_bench(tmp_path / "a"))
    assert [i.index for i in items] == [0, 1, 2] and items[1].context[1] == "b2 FAIL"
    assert items[0].extra["operation"] == ["add"] * 5 and items[0].source().size == (64, 48)
    # Parquet rows with the image as HF datasets stores it ({"bytes", "path"}), index not starting at 0.
    buf = io.BytesIO()
    Image.new("RGB", (20, 10), "red").save(buf, format="JPEG")
    (tmp_path / "b").mkdir()
    pq.write_table(pa.Table.from_pylist([{"image": {"bytes": buf.getvalue(), "path": None}, "index": 17,
                                          "context": ["x"] * 5}]), tmp_path / "b" / "train-00000.parquet")
    [item] = load_mse_bench(tmp_path / "b")
    assert item.index == 17 and item.source().size == (20, 10)
    # The official meta.yaml (img_paths) with images beside it; and compute_score.py's {index}.jpg fallback.
    (tmp_path / "c").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "c" / "5.jpg")
    (tmp_path / "c" / "meta.yaml").write_text("- {index: 5, img_paths: [/somewhere/else/5.jpg], context: [a, b, c, d, e]}\n")
    assert load_mse_bench(tmp_path / "c")[0].image == tmp_path / "c" / "5.jpg"
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "meta.json").write_text(json.dumps([{"index": 1, "context": ["a"] * 5, "image": "none.png"}]))
    with pytest.raises(FileNotFoundError, match="source image of item 1 not found"):
        load_mse_bench(tmp_path / "d")


def test_generation_writes_official_names_and_resumes(tmp_path):
    from vincie_sdk import Session, VincieModel
    from vincie_sdk.config import TINY
    from vincie_train.eval.mse_bench import generate_sessions

    items = load_mse_bench(make_bench(tmp_path / "bench", n=2))
    model = VincieModel.from_random(TINY, seed=0)
    out = generate_sessions(items, model, tmp_path / "images", steps=1)
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(f"{i}_turn{t}_rep0_seed{i}.png" for i in (0, 1) for t in range(5))
    # Seed = index, one session per item, 5 edits: the file of turn 2 (t = 1) of item 1 is reproduced.
    s = Session(model, items[1].source(), seed=1, steps=1)
    s.edit(items[1].context[0])
    assert np.array_equal(np.asarray(s.edit(items[1].context[1])), np.asarray(Image.open(out / "1_turn1_rep0_seed1.png")))
    before = (out / "0_turn4_rep0_seed0.png").stat().st_mtime_ns
    generate_sessions(items, model, out, steps=1)
    assert (out / "0_turn4_rep0_seed0.png").stat().st_mtime_ns == before


# ---------------------------------------------------------------------------------------------- the judge
def test_parse_reply_like_the_official_code():
    assert parse_reply('```json\n{"prompt_following": 7, "consistency": 8}\n```') == {"prompt_following": 7,
                                                                                      "consistency": 8}
    assert parse_reply("{'prompt_following': 7, 'consistency': 8}")["consistency"] == 8  # literal_eval
    assert parse_reply('{"a": true, "b": null}') == {"a": True, "b": None}  # json.loads
    assert parse_reply("no json here") is None and parse_reply(None) is None
    assert score_reply(reply(7, 7)) == {"reason": "ok", "prompt_following": 7, "consistency": 7, "all": 1}
    assert score_reply(reply(7, 6))["all"] == 0  # strictly greater than the threshold
    assert score_reply(reply("7", 8)) is None and score_reply('{"prompt_following": 7}') is None


def test_judge_protocol_against_a_stub_vlm(bench):
    items, preds = bench
    canned_judge.seen_malformed = False
    with StubOpenAI(responder=canned_judge) as stub:
        results = judge_all(items, preds, VlmJudge(settings(stub)), workers=3)
    assert list(results[0]) == [f"turn{k}" for k in range(1, 6)]
    assert results[0]["turn5"] == {"reason": "ok", "prompt_following": 8, "consistency": 9, "all": 1}
    # A failure at turn 2 stops the session: turns 3..5 are never asked for.
    assert list(results[1]) == ["turn1", "turn2"] and results[1]["turn2"]["all"] == 0
    # The malformed reply was retried; the fenced Python dict parsed.
    assert results[2]["turn2"]["prompt_following"] == 7 and len(results[2]) == 5
    assert len(stub.requests) == 5 + 2 + 6

    requests = {}
    for body in stub.requests:
        text = body["messages"][0]["content"][0]["text"]
        requests.setdefault(text, body)
    # What turn 3 of item 0 was shown: its first three prompts as the str() of a dict, source + 3 outputs.
    shown = {"turn1": "add a hat", "turn2": "make it red", "turn3": "remove the dog"}
    text = PROMPT_TEMPLATE.format(editing_prompt=str(shown), num_prompts=3, num_images=4)
    body = requests[text]
    assert body["model"] == "stub-vlm"
    urls = [part["image_url"]["url"] for part in body["messages"][0]["content"][1:]]
    assert len(urls) == 4 and all(u.startswith("data:image/jpeg;base64,") for u in urls)
    images = [Image.open(io.BytesIO(base64.b64decode(u.split(",", 1)[1]))) for u in urls]
    assert images[0].format == "PNG" and images[0].size == (32, 24)  # the 64x48 source at the turn-1 size
    assert base64.b64decode(urls[3].split(",", 1)[1]) == (preds / "0_turn2_rep0_seed0.png").read_bytes()
    assert "turn-3" in text and text.startswith("You are judging a multi-turn image editing session")


def test_attempts_exhausted_is_an_error_that_is_retried_next_time(bench, tmp_path):
    items, preds = bench
    cache = tmp_path / "cache"
    with StubOpenAI(default="nonsense") as stub:
        stub.script = [500, 500]  # HTTP errors count as failed calls, retried inside one attempt
        results = judge_all(items[:1], preds, VlmJudge(settings(stub, attempts=3)), cache_dir=cache)
    assert results[0] == {"error": "Failed to get valid response after 3 attempts at turn 0"}
    assert len(stub.requests) == 2 + 3
    with pytest.raises(ValueError, match="1 examples have no judgement"):
        aggregate(list(results.values()))
    with StubOpenAI(default=reply(9, 9)) as stub:
        results = judge_all(items[:1], preds, VlmJudge(settings(stub)), cache_dir=cache)
        assert len(results[0]) == 5 and len(stub.requests) == 5
        judge_all(items[:1], preds, VlmJudge(settings(stub)), cache_dir=cache)
        assert len(stub.requests) == 5  # cached
    assert json.loads((cache / "0.json").read_text()) == results[0]


def test_responses_api_flag(bench):
    items, preds = bench
    with StubOpenAI(default=reply(2, 2)) as stub:
        results = judge_all(items[:1], preds, VlmJudge(settings(stub, api="responses")))
    assert results[0] == {"turn1": {"reason": "ok", "prompt_following": 2, "consistency": 2, "all": 0}}
    assert stub.paths == ["/v1/responses"]
    [message] = stub.requests[0]["input"]
    assert message["role"] == "user" and message["content"][0]["type"] == "input_text"
    assert [p["type"] for p in message["content"][1:]] == ["input_image", "input_image"]
    assert message["content"][1]["image_url"].startswith("data:image/jpeg;base64,")


def test_missing_predictions_are_named(bench, tmp_path):
    items, preds = bench
    (preds / output_name(2, 3)).unlink()
    with StubOpenAI() as stub, pytest.raises(FileNotFoundError, match="1 output images missing"):
        judge_all(items, preds, VlmJudge(settings(stub)))


# ---------------------------------------------------------------------------------------------- aggregation
def test_aggregation_matches_hand_computed_numbers(tmp_path):
    def t(pf, c):
        return {"prompt_following": pf, "consistency": c, "all": int(pf > 6 and c > 6)}

    results = [
        {"turn1": t(8, 9), "turn2": t(7, 7), "turn3": t(2, 8)},  # fails at 3
        {"turn1": t(5, 9)},                                      # fails at 1
        {"turn1": t(10, 10), "turn2": t(9, 8), "turn3": t(7, 9), "turn4": t(8, 8), "turn5": t(9, 9)},
        {"turn1": t(9, 7), "turn2": t(4, 4)},                    # fails at 2
    ]
    s = aggregate(results)
    rows = {r["turn"]: r for r in s["turns"]}
    assert s["n_examples"] == 4 and [r["valid"] for r in s["turns"]] == [4, 3, 2, 1, 1]
    assert rows["turn1"]["success_rate"] == 3 / 4
    assert rows["turn2"]["success_rate"] == 2 / 4 and rows["turn3"]["success_rate"] == 1 / 4
    assert rows["turn5"]["success_rate"] == 1 / 4
    assert rows["turn1"]["prompt_following"] == (8 + 5 + 10 + 9) / 4
    assert rows["turn2"]["consistency"] == (7 + 8 + 4) / 4
    assert rows["turn3"]["overall"] == pytest.approx((math.sqrt(16) + math.sqrt(63)) / 4)
    assert rows["turn4"]["prompt_following"] == 8 / 4
    path = write_csv(s, tmp_path / "r.csv")
    lines = path.read_text().splitlines()
    assert lines[0] == "Turn,Success Rate,Prompt Following,Consistency,Overall"
    assert lines[1] == f"turn1,0.7500,8.0000,8.7500,{(math.sqrt(72) + math.sqrt(45) + 10 + math.sqrt(63)) / 4:.4f}"
    assert lines[5] == "turn5,0.2500,2.2500,2.2500,2.2500"


# ---------------------------------------------------------------------------------------------- CLI
def test_cli_generates_judges_and_writes_reports(tmp_path, monkeypatch, capsys):
    from vincie_sdk.cli import main

    make_bench(tmp_path / "bench", n=2)
    out = tmp_path / "out"
    monkeypatch.setenv("JUDGE_KEY", "k")
    with StubOpenAI(default=reply(8, 8)) as stub:
        rc = main(["eval", "mse-bench", "--data", str(tmp_path / "bench"), "--out", str(out), "-m", "random:tiny",
                   "--steps", "1", "--api-base", stub.url, "--api-model", "stub", "--api-key-env", "JUDGE_KEY",
                   "--workers", "2", "-q"])
    assert rc == 0, capsys.readouterr().err
    assert len(list((out / "images").glob("*_turn*_rep0_seed*.png"))) == 10
    assert sorted(p.name for p in (out / "results").iterdir()) == ["0.json", "1.json"]
    assert (out / "mse_bench.csv").read_text().splitlines()[1] == "turn1,1.0000,8.0000,8.0000,8.0000"
    report = json.loads((out / "mse_bench.json").read_text())
    assert report["n_examples"] == 2 and report["settings"]["model"] == "random:tiny"
    assert len(json.loads((out / "results.json").read_text())) == 2
    assert "| turn5 | 2 | 1.0000 |" in capsys.readouterr().out
    # Another system's PNGs, and the mutually exclusive options.
    assert main(["eval", "mse-bench", "--data", str(tmp_path / "bench"), "--out", str(tmp_path / "o2"),
                 "--no-judge", "--predictions", str(out / "images"), "-m", "random:tiny"]) == 2
    assert "one of the two" in capsys.readouterr().err


def test_prompt_template_file(tmp_path):
    from vincie_train.eval.mse_bench import load_prompt_template

    good = tmp_path / "judge.txt"
    good.write_text("Rate {num_prompts} prompts {editing_prompt} over {num_images} images.")
    assert load_prompt_template(good).startswith("Rate")
    (tmp_path / "bad.txt").write_text("no placeholders")
    with pytest.raises(ValueError, match="lacks the placeholder"):
        load_prompt_template(tmp_path / "bad.txt")
