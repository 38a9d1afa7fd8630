"""LoRA fine-tuning: edit-data readers, a few steps change only the adapter, the saved adapter reproduces the
training model, exact resume, and the CLI."""

from __future__ import annotations

import dataclasses
import json
from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image
from vincie_train.data.edits import read_edits, synth_edits, write_edit_folder
from vincie_train.data.format import SessionRecord, TurnRecord
from vincie_train.lora import AdapterParams, LoraSpec, LoraTrainConfig, inject_lora, train_lora
from vincie_train.pretrain import load_checkpoint

from vincie_sdk import VincieModel
from vincie_data_helpers import MICRO as TRAIN_MICRO
from vincie_sdk.lora import LoraAdapter

MICRO = dataclasses.replace(TRAIN_MICRO, name="micro-lora")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models; and multi-threaded CPU backward is not bit-reproducible
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    return synth_edits(tmp_path_factory.mktemp("pairs"), 12, seed=3, size=32).parent


@pytest.fixture(scope="module", params=["block_causal", "full"])
def base_dir(request, tmp_path_factory):
    cfg = MICRO.replace(dit=dataclasses.replace(MICRO.dit, attention=request.param))
    return VincieModel.from_random(cfg, seed=0).save_pretrained(tmp_path_factory.mktemp("base") / request.param)


def _config(tmp_path, base_dir, pairs, **kw):
    return LoraTrainConfig(out_dir=str(tmp_path / "run"), base=str(base_dir), lora=kw.pop("lora", LoraSpec(r=4, alpha=8)),
                           data=_data(pairs), batch_size=3, lr=1e-2,
                           warmup_steps=1, max_steps=kw.pop("max_steps", 4), checkpoint_minutes=1e9, log_every=1,
                           samples=kw.pop("samples", 0), sample_steps=2, **kw)


def _data(pairs):
    return LoraTrainConfig.from_dict({"data": {"sources": [str(pairs)], "max_turns": 2}}).data


def _losses(run):
    return [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]


# ---------------------------------------------------------------------------------------------- data
def test_synth_pairs_folder_reads_back(pairs):
    rows = [json.loads(line) for line in (pairs / "pairs.jsonl").read_text().splitlines()]
    assert len(rows) == 12 and set(rows[0]) == {"source", "instruction", "target", "camera", "category"}
    records = read_edits(pairs)
    assert len(records) == 12 and all(len(r.turns) == 1 and len(r.frames) == 2 for r in records)
    assert records[0].turns[0].instruction == rows[0]["instruction"]
    assert np.array_equal(records[0].frames[1], np.asarray(Image.open(pairs / rows[0]["target"])))
    assert records[0].turns[0].roe_src is None
    # Same (seed, i) -> same edit, whatever n is.
    again = read_edits(synth_edits(pairs.parent / "again", 2, seed=3, size=32))
    assert np.array_equal(again[1].frames[1], records[1].frames[1])


def _png(path, color, size=(20, 16)):
    Image.new("RGB", size, color).save(path)
    return path.name


def test_readers_magicbrush_omniedit_sequences_and_skips(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    # MagicBrush-style turns (img_id, turn_index, source_img, instruction, target_img), rows out of order.
    mb = tmp_path / "mb"
    mb.mkdir()
    names = [_png(mb / f"{k}.png", (40 * k, 0, 0)) for k in range(4)]
    rows = [{"img_id": 7, "turn_index": 2, "source_img": names[1], "instruction": "two", "target_img": names[2]},
            {"img_id": 7, "turn_index": 1, "source_img": names[0], "instruction": "one", "target_img": names[1]},
            {"img_id": 7, "turn_index": 3, "source_img": names[2], "instruction": "three", "target_img": names[3]},
            {"img_id": 8, "turn_index": 1, "source_img": names[0], "instruction": "x", "target_img": "nope.png"}]
    (mb / "turns.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + "{not json\n")
    stats = Counter()
    [session] = read_edits(mb, stats=stats)
    assert session.instructions == ["one", "two", "three"]
    assert [int(f[0, 0, 0]) for f in session.frames] == [0, 40, 80, 120]
    assert stats == Counter({"sessions": 1, "image_not_found": 1, "bad_json": 1})

    # OmniEdit-style parquet with image bytes (HF datasets' struct) and a list of instructions; one multi-input
    # row (X2I2 input_images with two images) is skipped; another file maps its own column names.
    def png_bytes(color, size=(24, 24)):
        import io

        buf = io.BytesIO()
        Image.new("RGB", size, color).save(buf, format="PNG")
        return buf.getvalue()

    om = tmp_path / "om"
    om.mkdir()
    table = pa.Table.from_pylist([
        {"src_img": {"bytes": png_bytes((1, 2, 3)), "path": None}, "edited_img": {"bytes": png_bytes((9, 9, 9), (48, 48)), "path": None},
         "edited_prompt_list": ["make it grey", "grey it"], "input_images": None, "output_image": None},
        {"src_img": None, "edited_img": None, "edited_prompt_list": ["x"], "input_images": ["a.png", "b.png"],
         "output_image": "c.png"}])
    pq.write_table(table, om / "part-0.parquet")
    (om / "custom.json").write_text(json.dumps([{"before": str(mb / names[0]), "after": str(mb / names[3]), "edit": "e"}]))
    stats = Counter()
    records = read_edits(om / "part-0.parquet", stats=stats)
    assert len(records) == 1 and records[0].instructions == ["make it grey"]
    assert records[0].frames[1].shape == (24, 24, 3)  # resized to the source's size
    assert stats["multi_input"] == 1
    [custom] = read_edits(om / "custom.json", columns={"source": "before", "target": "after", "instruction": "edit"})
    assert custom.instructions == ["e"]

    # Sequences (images + instructions) round-trip through write_edit_folder; shards are read as they are.
    seq = SessionRecord("s0", [np.full((8, 8, 3), k * 30, np.uint8) for k in range(3)],
                        [TurnRecord("a"), TurnRecord("b")])
    write_edit_folder([seq], tmp_path / "seq", "sequences")
    [back] = read_edits(tmp_path / "seq")
    assert back.instructions == ["a", "b"] and np.array_equal(back.frames[2], seq.frames[2])
    with pytest.raises(FileNotFoundError, match="no .jsonl"):
        read_edits(tmp_path / "seq" / "images")


# ---------------------------------------------------------------------------------------------- training
def test_a_few_steps_change_only_the_adapter_and_it_reproduces(tmp_path, base_dir, pairs):
    adapter_dir = train_lora(_config(tmp_path, base_dir, pairs, max_steps=4, samples=1), progress=False)
    run = tmp_path / "run"
    assert len(_losses(run)) == 4 and (run / "loss.png").is_file() and (run / "samples" / "step0000004.png").is_file()

    # The checkpoint holds the adapter only, and the base weights on disk are untouched by construction:
    state = load_checkpoint(run / "checkpoint.pt")
    assert set(state["modules"]) == {"lora"}
    assert all(".lora_A." in k or ".lora_B." in k for k in state["modules"]["lora"])

    # Rebuild the training model (peft layers) from the checkpoint: only LoRA tensors differ from the base.
    base = VincieModel.from_pretrained(base_dir)
    trained = VincieModel.from_pretrained(base_dir)
    inject_lora(trained.dit, LoraSpec(r=4, alpha=8))
    AdapterParams(trained.dit).load_state_dict(state["modules"]["lora"])
    base_sd = base.dit.state_dict()
    for k, v in trained.dit.state_dict().items():
        if ".lora_" in k:
            continue
        assert torch.equal(v, base_sd[k.replace(".base_layer", "")]), k
    assert any(float(v.abs().max()) > 0 for k, v in state["modules"]["lora"].items() if ".lora_B." in k)

    # The saved adapter, loaded into the plain base model through the SDK, computes what the training model does.
    adapter = LoraAdapter.load(adapter_dir)
    assert adapter.rank == 4 and adapter.base["name"] == base.config.name
    vid = torch.randn(2 * 8 * 8, base.config.dit.vid_in_channels)
    args = (vid, torch.tensor([[2, 8, 8]]), torch.randn(6, base.config.dit.txt_in_dim), torch.tensor([[6]]),
            torch.tensor([300.0]))
    with torch.no_grad():
        expected = trained.dit.eval()(*args)
        plain = base.dit(*args)
        base.load_lora(adapter_dir)
        torch.testing.assert_close(base.dit(*args), expected, rtol=1e-5, atol=1e-5)
    assert (plain - expected).abs().max() > 1e-4


def test_kill_and_resume_is_exact(tmp_path, base_dir, pairs):
    spec = LoraSpec(r=2, alpha=4, dropout=0.3, targets=("qkv", "mlp"), streams=("vid", "all"), blocks=(-1,))
    straight = _config(tmp_path / "a", base_dir, pairs, max_steps=6, lora=spec, ema_decay=0.9)
    train_lora(straight, progress=False)
    resumed = _config(tmp_path / "b", base_dir, pairs, max_steps=6, lora=spec, ema_decay=0.9)
    train_lora(resumed, progress=False, stop_after=3)
    assert len(_losses(tmp_path / "b" / "run")) == 3
    train_lora(resumed, progress=False)
    assert _losses(tmp_path / "a" / "run") == _losses(tmp_path / "b" / "run")
    a = LoraAdapter.load(tmp_path / "a" / "run" / "adapter")
    b = LoraAdapter.load(tmp_path / "b" / "run" / "adapter")
    assert sorted(a.weights) == ["blocks.1.attn.proj_qkv.all", "blocks.1.mlp.all.proj_in",
                                 "blocks.1.mlp.all.proj_in_gate", "blocks.1.mlp.all.proj_out"]
    assert all(torch.equal(a.weights[k][i], b.weights[k][i]) for k in a.weights for i in (0, 1))


def test_config_errors_and_cli(tmp_path, pairs, capsys):
    from vincie_sdk.cli import main

    with pytest.raises(ValueError, match="unknown keys \\['rank'\\]"):
        LoraTrainConfig.from_dict({"lora": {"rank": 4}})
    with pytest.raises(ValueError, match="data.sources is empty"):
        train_lora(LoraTrainConfig(out_dir=str(tmp_path / "x")), progress=False)
    assert main(["data", "pairs", "--out", str(tmp_path / "p"), "--n", "2", "--turns", "2", "--size", "32"]) == 0
    assert len(read_edits(tmp_path / "p")[0].turns) == 2
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"base: missing-model-folder\ndata:\n  sources: [{pairs}]\n")
    assert main(["train-lora", str(cfg), "--set", "lora.r=2", "--set", f"out_dir={tmp_path / 'r'}", "-q"]) == 2
    assert "model folder not found" in capsys.readouterr().err
