"""``vincie data ...``: the synthetic video world and the video -> session pipeline on the command line.

Registered into the SDK's ``vincie`` console script through the ``vincie.commands`` entry point
(``register``), and runnable alone as ``python -m vincie_train.cli data ...``.

Example:
    vincie data synth --out synth/ --videos 100 --seed 0
    vincie data build --videos synth/ --out shards/ --annotator synthetic --masker synthetic
    vincie data show shards/shard-00000.tar -o sheet.png
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path


def _setup_logging(args: argparse.Namespace) -> None:
    # The SDK's CLI may have configured logging already; only add a handler when nobody did.
    if not logging.getLogger().handlers:
        level = logging.DEBUG if getattr(args, "verbose", 0) > 1 else logging.INFO if args.verbose else logging.WARNING
        logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")


def _fail(message: str) -> int:
    print(f"vincie data: error: {message}", file=sys.stderr)
    return 2


def cmd_synth(args: argparse.Namespace) -> int:
    from .synth.dynamics import WorldConfig
    from .synth.video import synth_dataset

    _setup_logging(args)
    try:
        config = WorldConfig(size=args.size, max_objects=args.max_objects)
        paths = synth_dataset(
            args.out,
            args.videos,
            seed=args.seed,
            fps=args.fps,
            seconds=(args.min_seconds, args.max_seconds),
            config=config,
            lossless=not args.lossy,
            progress=not args.no_progress,
            revert_prob=args.revert_prob,
            **({"types": tuple(t.strip() for t in args.types.split(",") if t.strip())} if args.types else {}),
        )
    except (ValueError, OSError) as exc:
        return _fail(str(exc))
    print(f"wrote {len(paths)} videos (+ .json sidecars) to {args.out}")
    return 0


def _annotator(args: argparse.Namespace):
    from .data.annotate import make_annotator

    if args.back_phrasing and args.annotator != "synthetic":
        raise ValueError("--back-phrasing needs the synthetic annotator (it reads the scenes of the sidecars)")
    if args.annotator == "openai":
        return make_annotator(
            "openai",
            model=args.openai_model,
            base_url=args.openai_base_url,
            api_key=os.environ.get(args.openai_api_key_env) if args.openai_api_key_env else None,
            max_retries=args.max_retries,
            timeout=args.timeout,
            json_mode=args.json_mode,
        )
    if args.annotator == "hf":
        return make_annotator("hf", model_dir=args.hf_model, device=args.device, max_retries=args.max_retries)
    return make_annotator(args.annotator, **({"back_prob": args.back_phrasing} if args.back_phrasing else {}))


def _masker(args: argparse.Namespace):
    from .data.masks import make_masker

    name = args.masker or ("synthetic" if args.annotator == "synthetic" else "diff")
    if name == "grounded-sam2":
        if not args.gdino or not args.sam2_checkpoint:
            raise ValueError("masker 'grounded-sam2' needs --gdino DIR and --sam2-checkpoint FILE (local weights)")
        return make_masker(
            name,
            gdino_dir=args.gdino,
            sam2_checkpoint=args.sam2_checkpoint,
            sam2_config=args.sam2_config,
            device=args.device,
            box_threshold=args.box_threshold,
            text_threshold=args.text_threshold,
        )
    return make_masker(name)


def cmd_build(args: argparse.Namespace) -> int:
    from .data.build import BuildConfig, build_shards, parse_shard_spec
    from .data.sampling import SamplingConfig
    from .data.shots import ShotConfig

    _setup_logging(args)
    try:
        shard = parse_shard_spec(args.shard)
        config = BuildConfig(
            videos_per_shard=args.videos_per_shard,
            max_side=args.max_side,
            seed=args.seed,
            sampling=SamplingConfig(
                args.sampling, args.interval, args.min_frames, args.max_frames, args.max_session_frames,
                still_frames=args.still_frames,
            ),
            shots=ShotConfig(detector=args.shot_detector, min_seconds=args.min_shot_seconds),
        )
        annotator, masker = _annotator(args), _masker(args)
        summary = build_shards(args.videos, args.out, annotator, masker, config, shard, progress=not args.no_progress)
    except (ValueError, FileNotFoundError, ImportError) as exc:
        return _fail(str(exc))
    print(json.dumps(summary, indent=1))
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    from .data.show import render_contact_sheet

    _setup_logging(args)
    try:
        sheet = render_contact_sheet(args.shard, args.max_sessions, args.max_frames)
        sheet.save(args.output)
    except (ValueError, FileNotFoundError, OSError) as exc:
        return _fail(str(exc))
    print(f"wrote {args.output} ({sheet.width}x{sheet.height})")
    return 0


def _add_synth(sub) -> None:
    p = sub.add_parser(
        "synth",
        help="render synthetic shapes-world videos with exact JSON sidecars",
        description="Render procedural videos (mp4 via PyAV) of the shapes world with per-frame scene "
        "state sidecars. Video i depends only on (--seed, i).",
    )
    p.add_argument("--out", required=True, help="output folder (video_XXXXX.mp4 + video_XXXXX.json)")
    p.add_argument("--videos", type=int, required=True, help="number of videos")
    p.add_argument("--seed", type=int, default=0, help="dataset seed (default 0)")
    p.add_argument("--size", type=int, default=64, help="frame side in pixels (default 64)")
    p.add_argument("--fps", type=float, default=10.0, help="frames per second (default 10)")
    p.add_argument("--min-seconds", type=float, default=2.0, help="shortest video (default 2)")
    p.add_argument("--max-seconds", type=float, default=8.0, help="longest video (default 8)")
    p.add_argument("--max-objects", type=int, default=4, help="objects per scene at most (default 4)")
    p.add_argument("--types", default=None,
                   help="comma-separated change types of the events (default: all of add, remove, move, recolor, "
                   "resize, background, lighting, camera_pan, camera_zoom)")
    p.add_argument("--revert-prob", type=float, default=0.0,
                   help="chance that an event undoes the latest change of one thing (an object comes back, moves "
                   "back, takes its old colour or size; the old background returns), when possible (default 0)")
    p.add_argument("--lossy", action="store_true", help="libx264 yuv420p (plays everywhere) instead of lossless RGB")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    p.set_defaults(func=cmd_synth)


def _add_build(sub) -> None:
    p = sub.add_parser(
        "build",
        help="turn videos into session shards (tar of PNG + JSON)",
        description="Decode, split shots, filter, sample frames (equal-interval + fixed-count), annotate "
        "transitions and segment regions of editing; write resumable tar shards. See docs/data.md.",
    )
    p.add_argument("--videos", required=True, help="folder of videos (searched recursively)")
    p.add_argument("--out", required=True, help="output folder for shard-XXXXX.tar and summaries")
    p.add_argument("--annotator", choices=("synthetic", "openai", "hf"), default="synthetic",
                   help="transition annotator (default synthetic: exact, needs the sidecars)")
    p.add_argument("--masker", choices=("synthetic", "diff", "grounded-sam2"), default=None,
                   help="RoE masker (default: synthetic with the synthetic annotator, else diff)")
    p.add_argument("--shard", default="0/1", help="I/N: build shard groups j with j %% N == I (default 0/1)")
    p.add_argument("--videos-per-shard", type=int, default=8, help="videos per output shard (default 8)")
    p.add_argument("--max-side", type=int, default=256, help="shrink frames to this longer side (default 256)")
    p.add_argument("--seed", type=int, default=0, help="seed of the sampling choices (default 0)")
    g = p.add_argument_group("frame sampling")
    g.add_argument("--sampling", choices=("hybrid", "interval", "fixed", "rests"), default="hybrid",
                   help="hybrid (default; the paper's interval + fixed-count), interval, fixed, or rests: one "
                   "frame per pause, so every turn is one change (footage that pauses between changes)")
    g.add_argument("--interval", type=float, default=3.0, help="seconds between equal-interval frames (default 3)")
    g.add_argument("--min-frames", type=int, default=2, help="fixed-count sampling: at least (default 2)")
    g.add_argument("--max-frames", type=int, default=6, help="fixed-count sampling: at most (default 6)")
    g.add_argument("--max-session-frames", type=int, default=20, help="split longer interval sessions (default 20)")
    g.add_argument("--still-frames", action="store_true",
                   help="move each sampled frame to the nearest frame at rest (none caught mid-motion or mid-fade)")
    p.add_argument("--back-phrasing", type=float, default=0.0, metavar="P",
                   help="synthetic annotator: phrase a turn that undoes an earlier change by reference ('move the "
                   "red circle back') with probability P, also keeping the explicit phrasing for sessions cut "
                   "before the state it restores (default 0: always explicit)")
    g = p.add_argument_group("shots and filters")
    g.add_argument("--shot-detector", choices=("histogram", "scenedetect"), default="histogram")
    g.add_argument("--min-shot-seconds", type=float, default=1.0, help="reject shorter shots (default 1)")
    g = p.add_argument_group("openai annotator")
    g.add_argument("--openai-base-url", default=None, help="e.g. http://localhost:8000/v1 (default: OpenAI)")
    g.add_argument("--openai-model", default=None, help="model name on the endpoint")
    g.add_argument("--openai-api-key-env", default="OPENAI_API_KEY", help="env variable holding the key")
    g.add_argument("--json-mode", action="store_true", help="request response_format json_object")
    g.add_argument("--timeout", type=float, default=60.0, help="seconds per request (default 60)")
    g.add_argument("--max-retries", type=int, default=2, help="extra attempts per turn (default 2)")
    g = p.add_argument_group("hf annotator / models")
    g.add_argument("--hf-model", default=None, help="local transformers VLM folder")
    g.add_argument("--device", default="cpu", help="torch device for local models (default cpu)")
    g = p.add_argument_group("grounded-sam2 masker")
    g.add_argument("--gdino", default=None, help="local GroundingDINO folder (transformers format)")
    g.add_argument("--sam2-checkpoint", default=None, help="local SAM 2 checkpoint (.pt)")
    g.add_argument("--sam2-config", default="configs/sam2.1/sam2.1_hiera_t.yaml", help="SAM 2 config name")
    g.add_argument("--box-threshold", type=float, default=0.3)
    g.add_argument("--text-threshold", type=float, default=0.25)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    p.set_defaults(func=cmd_build)


def _add_show(sub) -> None:
    p = sub.add_parser(
        "show",
        help="render sessions of a shard as a contact sheet PNG",
        description="Draw frames, source/target RoE masks and instructions of the first sessions of a shard.",
    )
    p.add_argument("shard", help="a shard-XXXXX.tar file (or a folder of shards)")
    p.add_argument("-o", "--output", required=True, help="output PNG")
    p.add_argument("--max-sessions", type=int, default=8, help="sessions to draw (default 8)")
    p.add_argument("--max-frames", type=int, default=8, help="frames per session to draw (default 8)")
    p.add_argument("-v", "--verbose", action="count", default=0, help="more logging")
    p.set_defaults(func=cmd_show)


def cmd_train(args: argparse.Namespace) -> int:
    """``vincie train CONFIG``: pretraining (default) or the autoencoder stage (``stage: autoencoder``)."""
    import yaml

    from .pretrain import TrainConfig, train

    path = Path(args.config)
    if not path.is_file():
        raise FileNotFoundError(f"train config not found: {path}")
    raw = _apply_overrides(yaml.safe_load(path.read_text()) or {}, args.set)
    stage = raw.pop("stage", "pretrain")
    if stage == "autoencoder":
        from .autoencoder import AutoencoderTrainConfig, train_autoencoder

        out = raw.pop("out_dir", "runs/vae")
        train_autoencoder(AutoencoderTrainConfig(**raw), out)
        return 0
    if stage != "pretrain":
        raise ValueError(f"{path}: stage={stage!r}; use 'pretrain' or 'autoencoder'")
    model_dir = train(TrainConfig.from_dict(raw), progress=not args.quiet)
    print(f"model (EMA weights) written to {model_dir}")
    return 0


def _add_train(subparsers) -> None:
    p = subparsers.add_parser(
        "train", help="pretrain on video sessions (NIP + CSP + NSP), or train the autoencoder",
        description=("Run or resume the training described by a YAML config (see train/configs/). "
                     "Killing a run and starting it again resumes from its last checkpoint exactly. "
                     "Example: vincie train train/configs/shapes_pretrain.yaml --set max_minutes=60"),
    )
    p.add_argument("config", help="YAML config (keys of vincie_train.pretrain.TrainConfig, or stage: autoencoder)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key (YAML value); dotted keys reach sections, e.g. data.max_turns=2")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train)


def cmd_pairs(args: argparse.Namespace) -> int:
    from .data.edits import synth_edits

    _setup_logging(args)
    path = synth_edits(args.out, args.n, seed=args.seed, turns=args.turns, size=args.size, split=args.phrasings)
    print(f"wrote {args.n} synthetic {'pairs' if args.turns == 1 else f'{args.turns}-turn sequences'} to {path}")
    return 0


def _add_pairs(sub) -> None:
    p = sub.add_parser(
        "pairs", help="render synthetic edits (source, instruction, target) for LoRA fine-tuning",
        description="Render edits of the shapes world into the edit folder format (pairs.jsonl + images/, "
                    "see docs/lora.md). Edit i depends only on (--seed, i); the random streams are salted, so "
                    "no edit is a pretraining video or a ShapesBench item.")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--n", type=int, required=True, help="number of edits")
    p.add_argument("--turns", type=int, default=1, help="turns per edit: 1 = pairs, more = sequences (default 1)")
    p.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    p.add_argument("--size", type=int, default=64, help="image side in pixels (default 64)")
    p.add_argument("--phrasings", choices=("train", "eval", "all"), default="train",
                   help="instruction wordings (default train; eval ones are ShapesBench's held-out phrasings)")
    p.add_argument("-v", "--verbose", action="count", default=0, help="more logging")
    p.set_defaults(func=cmd_pairs)


def _apply_overrides(raw: dict, overrides: list[str] | None) -> dict:
    """``KEY=VALUE`` (YAML value); dotted keys reach nested sections, e.g. ``lora.r=16``."""
    import yaml

    for override in overrides or []:
        key, sep, value = override.partition("=")
        if not sep or not key:
            raise ValueError(f"--set {override!r}: use KEY=VALUE")
        node = raw
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ValueError(f"--set {override!r}: {part!r} is not a section")
        node[leaf] = yaml.safe_load(value)
    return raw


def cmd_train_lora(args: argparse.Namespace) -> int:
    """``vincie train-lora CONFIG``: LoRA fine-tuning of a model's DiT on editing data."""
    import yaml

    from .lora import LoraTrainConfig, train_lora

    path = Path(args.config)
    if not path.is_file():
        raise FileNotFoundError(f"train-lora config not found: {path}")
    raw = _apply_overrides(yaml.safe_load(path.read_text()) or {}, args.set)
    _setup_logging(args)
    adapter = train_lora(LoraTrainConfig.from_dict(raw), progress=not args.quiet)
    print(f"LoRA adapter written to {adapter} (apply it with: vincie edit IMAGE -p ... --lora {adapter}:1.0)")
    return 0


def _add_train_lora(subparsers) -> None:
    p = subparsers.add_parser(
        "train-lora", help="LoRA fine-tuning of the DiT on edit pairs / multi-turn sequences",
        description=("Run or resume the LoRA fine-tuning described by a YAML config (see train/configs/lora_*.yaml "
                     "and docs/lora.md); re-running resumes from the last checkpoint exactly. "
                     "Example: vincie train-lora train/configs/lora_shapes_pairs.yaml --set max_steps=200"))
    p.add_argument("config", help="YAML config (keys of vincie_train.lora.LoraTrainConfig)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a config key (YAML value; dotted keys for sections, e.g. lora.r=16)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.add_argument("-v", "--verbose", action="count", default=0, help="more logging")
    p.set_defaults(func=cmd_train_lora)


def register(subparsers) -> None:
    """Add the ``data``, ``train`` and ``train-lora`` commands (and ``eval`` when available) to ``vincie``'s
    subparsers."""
    _add_train(subparsers)
    _add_train_lora(subparsers)
    try:
        from .eval.cli import register_eval
    except ImportError:  # evaluation extras missing: the other commands still work
        register_eval = None
    if register_eval is not None:
        register_eval(subparsers)
    data = subparsers.add_parser(
        "data", help="synthetic videos and the video -> session data pipeline",
        description="Synthetic video world and video -> session shards (see docs/data.md).",
    )
    sub = data.add_subparsers(dest="data_command", metavar="{synth,build,show,pairs}")
    sub.required = True
    _add_synth(sub)
    _add_build(sub)
    _add_show(sub)
    _add_pairs(sub)


def main(argv: list[str] | None = None) -> int:
    """Standalone entry: ``python -m vincie_train.cli data ...``."""
    parser = argparse.ArgumentParser(prog="vincie", description="VINCIE training-side commands")
    sub = parser.add_subparsers(dest="command", metavar="{data}")
    sub.required = True
    register(sub)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
