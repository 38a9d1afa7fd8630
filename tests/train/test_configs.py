"""Every shipped training config parses into its dataclass, and `--set` overrides reach nested sections."""
from pathlib import Path

import pytest
import yaml

from vincie_train.autoencoder import AutoencoderTrainConfig
from vincie_train.cli import _apply_overrides
from vincie_train.lora import LoraTrainConfig
from vincie_train.pretrain import TrainConfig

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "train" / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_shipped_config_parses(path):
    raw = yaml.safe_load(path.read_text())
    stage = raw.pop("stage", None)
    if path.name.startswith("lora_"):
        config = LoraTrainConfig.from_dict(raw)
    elif stage == "autoencoder":
        raw.pop("out_dir", None)
        config = AutoencoderTrainConfig(**raw)  # as `vincie train` builds it
    else:
        assert stage == "pretrain", f"{path.name}: stage {stage!r}"
        config = TrainConfig.from_dict(raw)
    assert config is not None


def test_embedded_curriculum_stages_continue_one_run():
    stage1, stage2, stage3, stage4 = (TrainConfig.from_dict({k: v for k, v in yaml.safe_load(
        (CONFIGS[0].parent / name).read_text()).items() if k != "stage"})
        for name in ("shapes_pretrain.yaml", "shapes_pretrain_stage2.yaml", "shapes_pretrain_stage3.yaml",
                     "shapes_pretrain_stage4_recall.yaml"))
    assert stage1.out_dir == stage2.out_dir and stage1.preset == stage2.preset
    # A resumed or initialised stage must place the prompts as the model learned them.
    assert {s.prompt_position for s in (stage1, stage2, stage3, stage4)} == {"frame"}
    # Stage 1's samples hold one turn, where a target's own prompt is every image prompt it could read.
    assert stage1.data.max_turns == 1 and {s.target_prompts for s in (stage2, stage3, stage4)} == {"own"}
    assert stage1.max_steps < stage2.stop_step < stage2.max_steps
    # Stage 2 widens stage 1's local edits with backgrounds: every ShapesBench edit kind.
    assert set(stage1.data.categories) < set(stage2.data.categories)
    from vincie_train.synth.instructions import EDIT_TYPES
    assert set(stage2.data.categories) == set(stage3.data.categories) == set(EDIT_TYPES)
    # Stage 3 starts from stage 2's exported model, on other data, within what the 3-hour budget leaves.
    assert stage3.init == f"{stage2.out_dir}/model" and stage3.out_dir != stage2.out_dir
    assert stage3.data.max_turns == 5 and set(stage3.data.shards).isdisjoint(stage2.data.shards)
    assert stage2.max_minutes <= 180 and stage3.max_minutes <= 180 - 104.4
    # Stage 4 (recall) continues stage 3's model on sessions of the same kinds where things come back.
    assert stage4.init == f"{stage3.out_dir}/model" and stage4.out_dir not in (stage2.out_dir, stage3.out_dir)
    assert set(stage4.data.categories) == set(EDIT_TYPES) and stage4.data.max_turns == 5
    assert set(stage4.data.shards).isdisjoint(stage2.data.shards + stage3.data.shards)


def test_dotted_override_reaches_nested_section():
    raw = _apply_overrides({"data": {"max_turns": 4}, "lr": 1e-3}, ["data.max_turns=2", "lr=0.0005"])
    assert raw == {"data": {"max_turns": 2}, "lr": 0.0005}
    with pytest.raises(ValueError, match="is not a section"):
        _apply_overrides({"lr": 1e-3}, ["lr.x=1"])
