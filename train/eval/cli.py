"""``vincie eval shapes|mse-bench|magicbrush``: ShapesBench, MSE-Bench (VLM judge) and MagicBrush metrics.

Registered by :func:`register_eval` (called from the training package's ``vincie.commands`` entry point).

Examples::

    vincie eval shapes --model vincie-shapes --json out/shapes.json --baselines
    vincie eval shapes --mode oracle --sessions 20          # the judge's sanity check: 1.0 everywhere
    vincie eval shapes --data bench/                        # write (or reuse) the items as JSON + PNG
    vincie eval shapes --data bench/ --predictions outs/    # judge another system's {id}_turn{k}.png
    vincie eval mse-bench --data mse-bench/ --model models/VINCIE-3B --out out/mse \
        --api-base http://localhost:8000/v1 --api-model Qwen2.5-VL-72B-Instruct --workers 16
    vincie eval magicbrush --gt MagicBrush/test/images --generated out/mb --clip models/clip-vit-base-patch32 \
        --dino models/dino-vits16
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

log = logging.getLogger(__name__)

MODES = ("model", "chain", "no-context", "copy", "oracle", "gt-history", "gt-source")
BASELINES = ("copy", "no-context")
LIVE_MODES = ("model", "chain", "no-context", "gt-history", "gt-source")  # the modes that run the model
# Teacher-forced diagnostics: every turn starts from the ground truth (with its true history, or from the
# true last image alone) and every turn is judged; see docs/shapes_bench.md, "Ground-truth history".
TEACHER_FORCED = {"gt-history": True, "gt-source": False}  # mode -> keeps the history in context


def register_eval(subparsers) -> None:
    """Add ``eval`` (with the ``shapes`` subcommand) to the ``vincie`` command's subparsers."""
    from .shapes_bench import DEFAULT_SEED, DEFAULT_SESSIONS, DEFAULT_TURNS

    p = subparsers.add_parser("eval", help="benchmarks (ShapesBench, MSE-Bench, MagicBrush)",
                              description="Benchmarks of editing models (see docs/eval.md and docs/shapes_bench.md).")
    sub = p.add_subparsers(dest="eval_command", metavar="{shapes,mse-bench,magicbrush}")
    sub.required = True

    s = sub.add_parser("shapes", help="ShapesBench: held-out 5-turn sessions of the shapes world", description=(
        "Runs held-out multi-turn editing sessions of the synthetic shapes world and scores every turn "
        "with a pixel judge (prompt following + consistency); a session stops at its first failed turn. "
        "Prints cumulative success per turn, per-category success, CSP/NSP mask IoU and seconds per turn."))
    s.add_argument("-m", "--model", default="vincie-shapes",
                   help="checkpoint folder, 'vincie-shapes' (embedded) or random:PRESET (default: %(default)s)")
    s.add_argument("--lora", action="append", metavar="PATH[:STRENGTH]", help="apply a LoRA adapter; repeat to stack")
    s.add_argument("--mode", choices=MODES, default=None,
                   help="model (whole history in context, the default), chain (chain of editing: each turn "
                        "predicts the current-region mask, then the next-region mask, then the image, paper "
                        "Table 3), no-context (each turn from the last image alone), copy (returns the input), "
                        "oracle (renders the ground truth); diagnostics that judge every turn from a perfect "
                        "past: gt-history (the true earlier images in context) and gt-source (the true last "
                        "image alone)")
    from .editors import HISTORIES

    s.add_argument("--history", choices=HISTORIES, default="true",
                   help="with --mode gt-history: what of the true past the context holds: all of it (true), "
                        "wordless earlier instructions (no-text), every earlier image replaced by the last true "
                        "one (last-image), or both (default: %(default)s)")
    s.add_argument("--sessions", type=int, default=None, help=f"number of sessions (default: {DEFAULT_SESSIONS}, "
                                                              "or all of --data)")
    s.add_argument("--seed", type=int, default=DEFAULT_SEED, help="benchmark seed (default: %(default)s)")
    s.add_argument("--turns", type=int, default=DEFAULT_TURNS, help="turns per session (default: %(default)s)")
    s.add_argument("--phrasings", choices=("eval", "train"), default="eval",
                   help="instruction wordings: eval (held out, the benchmark) or train (diagnostic: same scenes "
                        "and edits in the training wordings)")
    s.add_argument("--recall", type=float, default=0.0, metavar="P",
                   help="the recall variant: from turn 2 on, each turn is with probability P an undo of an earlier "
                        "change phrased by reference ('put the red circle back'), which only the history resolves "
                        "(default 0: the benchmark itself; docs/shapes_bench.md)")
    s.add_argument("--steps", type=int, help="sampling steps (default: the model's)")
    s.add_argument("--cfg", type=float, help="guidance scale (default: the model's)")
    s.add_argument("--sample-seed", type=int, default=1, help="the sessions' noise seed (default: %(default)s)")
    s.add_argument("--baselines", action="store_true", help="also run the copy and no-context baselines")
    s.add_argument("--no-masks", action="store_true", help="skip CSP/NSP mask prediction (3x fewer generations)")
    s.add_argument("--data", help="folder for the items: read items.json if present, else write it with the "
                                  "start and ground-truth PNGs")
    s.add_argument("--predictions", help="judge another system's {id}_turn{k}.png in this folder (no model)")
    s.add_argument("--json", help="write the results to this JSON file")
    s.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda if available)")
    s.add_argument("--dtype", default="auto", help="DiT dtype (default: %(default)s)")
    s.add_argument("--threads", type=int, help="torch CPU threads")
    s.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    s.set_defaults(func=cmd_eval_shapes)
    _add_mse_bench(sub)
    _add_magicbrush(sub)


def _add_model_args(s, default_model: str | None) -> None:
    s.add_argument("-m", "--model", default=default_model,
                   help="checkpoint folder, 'vincie-shapes' (embedded) or random:PRESET"
                        + (f" (default: {default_model})" if default_model else ""))
    s.add_argument("--lora", action="append", metavar="PATH[:STRENGTH]", help="apply a LoRA adapter; repeat to stack")
    s.add_argument("--steps", type=int, help="sampling steps (default: the model's)")
    s.add_argument("--cfg", type=float, help="guidance scale (default: the model's)")
    s.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda if available)")
    s.add_argument("--dtype", default="auto", help="DiT dtype (default: %(default)s)")
    s.add_argument("--threads", type=int, help="torch CPU threads")
    s.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


def _add_mse_bench(sub) -> None:
    s = sub.add_parser("mse-bench", help="MSE-Bench: 5-turn sessions judged by a VLM (official protocol)", description=(
        "Generate the 100 five-turn sessions of a local copy of MSE-Bench ({index}_turn{t}_rep0_seed{index}.png in "
        "OUT/images), or take another system's PNGs (--predictions), then judge every turn with an OpenAI-compatible "
        "VLM exactly as evaluation/compute_score.py (success: prompt following > 6 and consistency > 6; a session "
        "stops at its first failure). Writes OUT/results/{index}.json (resumable), OUT/results.json, "
        "OUT/mse_bench.csv and OUT/mse_bench.json. The API key comes from $OPENAI_API_KEY (see --api-key-env)."))
    s.add_argument("--data", required=True, help="local MSE-Bench folder: meta.jsonl/meta.json/meta.yaml/*.parquet "
                                                 "with image, index, context[5] (see docs/eval.md)")
    s.add_argument("--out", required=True, help="output folder")
    s.add_argument("--predictions", help="judge the PNGs in this folder (official names) instead of generating")
    _add_model_args(s, None)
    s.add_argument("--resolution", type=int, help="working area resolution^2 (default: the model's)")
    s.add_argument("--placeholders", choices=("model", "on", "off"), default="model",
                   help="'Based on <IMGi>, ... Output <IMGi+1>: ' prompt wrapping (default: the model's setting; "
                        "the shipped generate_distributed.yaml leaves it off)")
    s.add_argument("--limit", type=int, help="only the first N items")
    s.add_argument("--no-judge", action="store_true", help="generate only")
    g = s.add_argument_group("judge (any OpenAI-compatible VLM endpoint)")
    g.add_argument("--api-base", help="e.g. http://localhost:8000/v1 (default: OpenAI)")
    g.add_argument("--api-model", default="gpt-5-nano", help="judge model (default: %(default)s, the official one)")
    g.add_argument("--api-key-env", default="OPENAI_API_KEY", help="environment variable holding the key")
    g.add_argument("--api", choices=("chat", "responses"), default="chat",
                   help="Chat Completions (default) or the Responses API (what the official script calls)")
    g.add_argument("--workers", type=int, default=8, help="parallel requests (default: %(default)s)")
    g.add_argument("--prompt-template", metavar="FILE",
                   help="judge prompt with {editing_prompt} {num_prompts} {num_images} (default: ours; pass the "
                        "official wording to reproduce published numbers exactly)")
    g.add_argument("--attempts", type=int, default=20, help="replies per turn until one parses (default: %(default)s)")
    g.add_argument("--threshold", type=int, default=6, help="success: both scores > this (default: %(default)s)")
    g.add_argument("--timeout", type=float, default=120.0, help="seconds per request (default: %(default)s)")
    g.add_argument("--max-tokens", type=int, help="reply length limit (Chat Completions)")
    s.set_defaults(func=cmd_eval_mse_bench)


def _add_magicbrush(sub) -> None:
    s = sub.add_parser("magicbrush", help="MagicBrush metrics per turn: L1, L2, CLIP-I, CLIP-T, DINO", description=(
        "Score iterative multi-turn edits against MagicBrush's ground truth (GT/{id}/{id}-input.png, "
        "{id}-output{k}.png). Generated images: GEN/{id}/{id}_1.png, {id}_iter_{k}.png (or turn{k}.png); with "
        "--model they are generated first from edit_sessions.json. CLIP and DINO weights come from local "
        "transformers folders; without them those metrics are skipped with a note."))
    s.add_argument("--gt", required=True, help="ground-truth folder (MagicBrush test/images)")
    s.add_argument("--generated", required=True, help="generated images folder (written with --model)")
    s.add_argument("--clip", help="local CLIP folder (transformers CLIPModel + tokenizer) for CLIP-I and CLIP-T")
    s.add_argument("--dino", help="local DINO/DINOv2 ViT folder (transformers AutoModel) for DINO")
    s.add_argument("--edit-sessions", help="edit_sessions.json (default: found beside --gt)")
    s.add_argument("--captions", help="captions JSON for CLIP-T (default: local_captions.json beside --gt; "
                                      "else the instructions)")
    s.add_argument("--json", help="write the report to this JSON file")
    _add_model_args(s, None)
    s.add_argument("--seed", type=int, default=1, help="session seed when generating (default: %(default)s)")
    s.set_defaults(func=cmd_eval_magicbrush)


def _load_model(args):
    import torch

    from vincie_sdk.config import get_preset
    from vincie_sdk.model import VincieModel

    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.model.startswith("random:"):
        print(f"note: {args.model} is a randomly initialised model; it exercises the pipeline, it does not edit",
              file=sys.stderr)
        return VincieModel.from_random(get_preset(args.model.split(":", 1)[1]), seed=0, device=device)
    return VincieModel.from_pretrained(args.model, device=device, dtype=args.dtype)


def _items(args):
    from .shapes_bench import DEFAULT_SESSIONS, load_items, make_items, save_items

    if args.sessions is not None and args.sessions < 1:
        raise ValueError(f"--sessions {args.sessions}: must be >= 1")
    if args.data and (Path(args.data) / "items.json").is_file():
        items, meta = load_items(args.data)
        if args.sessions is not None and args.sessions > len(items):
            raise ValueError(f"--sessions {args.sessions}: {args.data} holds only {len(items)} items; "
                             "ask for fewer or write a new folder")
        return items[: args.sessions or len(items)], meta.get("seed")
    items = make_items(args.sessions or DEFAULT_SESSIONS, args.seed, args.turns, phrasings=args.phrasings,
                       recall=args.recall)
    if args.data:
        print(f"wrote {save_items(items, args.data, args.seed)} and {len(items)} sessions of PNGs", file=sys.stderr)
    return items, args.seed


def _editor(mode: str, args, model):
    from .editors import FolderEditor, ModelEditor, copy_editor, oracle_editor

    if mode == "copy":
        return copy_editor
    if mode == "oracle":
        return oracle_editor
    if mode == "predictions":
        return FolderEditor(args.predictions)
    context = TEACHER_FORCED[mode] if mode in TEACHER_FORCED else mode != "no-context"
    return ModelEditor(model, context=context, chain=(mode == "chain"), steps=args.steps,
                       cfg_scale=args.cfg, seed=args.sample_seed, masks=not args.no_masks,
                       history=getattr(args, "history", "true") if mode == "gt-history" else "true")


def _model_with_loras(args):
    from vincie_sdk.cli import apply_loras

    model = _load_model(args)
    apply_loras(model, getattr(args, "lora", None))
    return model


def _tqdm(args, desc: str):
    from tqdm import tqdm

    def wrap(it, total=None):
        return tqdm(it, total=total, desc=desc, unit="item", file=sys.stderr, disable=args.quiet)

    return wrap


def cmd_eval_mse_bench(args) -> int:
    """Handler of ``vincie eval mse-bench``."""
    import os

    from .mse_bench import (JudgeSettings, VlmJudge, aggregate, format_summary, generate_sessions, judge_all,
                            load_mse_bench, load_prompt_template, write_csv)

    if bool(args.predictions) == bool(args.model):
        raise ValueError("give --model M (generate the sessions, then judge them) or --predictions DIR (judge "
                         "existing PNGs), one of the two")
    items = load_mse_bench(args.data)[: args.limit]
    out = Path(args.out)
    predictions = Path(args.predictions) if args.predictions else out / "images"
    settings = {"data": args.data, "items": len(items), "predictions": str(predictions)}
    if args.model:
        model = _model_with_loras(args)
        placeholders = {"model": None, "on": True, "off": False}[args.placeholders]
        generate_sessions(items, model, predictions, steps=args.steps, cfg_scale=args.cfg, resolution=args.resolution,
                          pad_img_placeholder=placeholders, progress=_tqdm(args, "mse-bench generate"))
        settings.update(model=args.model, lora=args.lora, steps=args.steps or model.config.sampler.steps,
                        cfg=args.cfg if args.cfg is not None else model.config.sampler.cfg_scale,
                        placeholders=args.placeholders)
        print(f"wrote {len(items)} sessions to {predictions}", file=sys.stderr)
    if args.no_judge:
        return 0
    judge = VlmJudge(JudgeSettings(api_base=args.api_base, api_model=args.api_model,
                                   api_key=os.environ.get(args.api_key_env) or None, api=args.api,
                                   attempts=args.attempts, threshold=args.threshold, timeout=args.timeout,
                                   max_tokens=args.max_tokens,
                                   prompt_template=load_prompt_template(args.prompt_template)))
    results = judge_all(items, predictions, judge, cache_dir=out / "results", workers=args.workers,
                        progress=_tqdm(args, "mse-bench judge"))
    ordered = [results[i.index] for i in items]
    (out / "results.json").write_text(json.dumps(ordered, ensure_ascii=False, indent=4))
    summary = aggregate(ordered, n_turns=len(items[0].context))
    settings.update(api_model=args.api_model, api_base=args.api_base, api=args.api, threshold=args.threshold)
    write_csv(summary, out / "mse_bench.csv")
    (out / "mse_bench.json").write_text(json.dumps({"settings": settings, **summary}, indent=1))
    print(format_summary(summary, f"MSE-Bench ({args.model or args.predictions}, judge {args.api_model})"))
    print(f"wrote {out / 'mse_bench.csv'} and {out / 'mse_bench.json'}", file=sys.stderr)
    return 0


def cmd_eval_magicbrush(args) -> int:
    """Handler of ``vincie eval magicbrush``."""
    from .magicbrush import evaluate, format_report, generate_magicbrush, load_ground_truth, load_scorers

    sessions = load_ground_truth(args.gt, edit_sessions=args.edit_sessions, captions=args.captions)
    if args.model:
        generate_magicbrush(sessions, _model_with_loras(args), args.generated, seed=args.seed, steps=args.steps,
                            cfg_scale=args.cfg, progress=_tqdm(args, "magicbrush generate"))
    device = args.device or "cpu"
    clip, dino, notes = load_scorers(args.clip, args.dino, device)
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    report = evaluate(sessions, args.generated, clip=clip, dino=dino, progress=_tqdm(args, "magicbrush"))
    print(format_report(report, notes))
    if args.json:
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"gt": args.gt, "generated": args.generated, "notes": notes, **report}, indent=1))
        print(f"wrote {path}", file=sys.stderr)
    return 0


def cmd_eval_shapes(args) -> int:
    """Handler of ``vincie eval shapes``; returns the exit code."""
    from tqdm import tqdm

    from .shapes_bench import format_report, run_shapes_bench, summarize

    if args.predictions and args.mode:
        raise ValueError("--predictions judges a folder of outputs; drop --mode (it applies to live editors)")
    mode = "predictions" if args.predictions else (args.mode or "model")
    if args.history != "true" and mode != "gt-history":
        raise ValueError(f"--history {args.history} alters the true past of --mode gt-history; got --mode {mode}")
    items, seed = _items(args)
    modes = [mode] + ([b for b in BASELINES if b != mode] if args.baselines else [])
    model = _model_with_loras(args) if any(m in LIVE_MODES for m in modes) else None
    if model is not None:
        # One untimed turn, so lazy initialisation is not billed to the first session's seconds per turn.
        _editor("no-context", args, model)(items[0]).edit(items[0].instructions[0])

    results = {}
    for m in modes:
        def progress(it, m=m):
            return tqdm(it, desc=f"shapes {m}", unit="session", file=sys.stderr, disable=args.quiet)

        result = run_shapes_bench(items, _editor(m, args, model), masks=not args.no_masks, progress=progress,
                                  teacher_forced=m in TEACHER_FORCED)
        results[m] = summarize(result)

    summary = results.pop(mode)
    model_name = args.predictions if mode == "predictions" else (args.model if mode in LIVE_MODES else None)
    settings = {"seed": seed, "mode": mode, "model": model_name, "lora": args.lora if model is not None else None}
    if args.phrasings != "eval":
        settings["phrasings"] = args.phrasings
    if args.history != "true":
        settings["history"] = args.history
    if args.recall:
        settings["recall"] = args.recall
    if model is not None:
        settings.update(steps=args.steps or model.config.sampler.steps,
                        cfg=args.cfg if args.cfg is not None else model.config.sampler.cfg_scale)
    title = "ShapesBench " + ", ".join(f"{k} {v}" for k, v in settings.items() if v is not None)
    print(format_report(summary, title, results or None))
    if args.json:
        out = {**settings, **summary}
        if results:
            out["baselines"] = {k: {kk: vv for kk, vv in v.items() if kk != "sessions"} for k, v in results.items()}
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(out, indent=1))
        print(f"wrote {path}", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry (``python -m vincie_train.eval shapes ...``) until ``vincie eval`` is wired in."""
    parser = argparse.ArgumentParser(prog="vincie")
    register_eval(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["eval"] + (sys.argv[1:] if argv is None else argv))
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except (FileNotFoundError, ValueError) as e:
        print(f"vincie eval: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
