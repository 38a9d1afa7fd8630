"""``vincie eval shapes``: run ShapesBench on a model, a baseline, or a folder of predictions.

Registered by :func:`register_eval` (called from the training package's ``vincie.commands`` entry point).

Examples::

    vincie eval shapes --model vincie-shapes --json out/shapes.json --baselines
    vincie eval shapes --mode oracle --sessions 20          # the judge's sanity check: 1.0 everywhere
    vincie eval shapes --data bench/                        # write (or reuse) the items as JSON + PNG
    vincie eval shapes --data bench/ --predictions outs/    # judge another system's {id}_turn{k}.png
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

log = logging.getLogger(__name__)

MODES = ("model", "no-context", "copy", "oracle")
BASELINES = ("copy", "no-context")


def register_eval(subparsers) -> None:
    """Add ``eval`` (with the ``shapes`` subcommand) to the ``vincie`` command's subparsers."""
    from .shapes_bench import DEFAULT_SEED, DEFAULT_SESSIONS, DEFAULT_TURNS

    p = subparsers.add_parser("eval", help="benchmarks (ShapesBench)", description="Benchmarks of editing models.")
    sub = p.add_subparsers(dest="eval_command", metavar="{shapes}")
    sub.required = True

    s = sub.add_parser("shapes", help="ShapesBench: held-out 5-turn sessions of the shapes world", description=(
        "Runs held-out multi-turn editing sessions of the synthetic shapes world and scores every turn "
        "with a pixel judge (prompt following + consistency); a session stops at its first failed turn. "
        "Prints cumulative success per turn, per-category success, CSP/NSP mask IoU and seconds per turn."))
    s.add_argument("-m", "--model", default="vincie-shapes",
                   help="checkpoint folder, 'vincie-shapes' (embedded) or random:PRESET (default: %(default)s)")
    s.add_argument("--mode", choices=MODES, default=None,
                   help="model (whole history in context, the default), no-context (each turn from the last "
                        "image alone), copy (returns the input), oracle (renders the ground truth)")
    s.add_argument("--sessions", type=int, default=None, help=f"number of sessions (default: {DEFAULT_SESSIONS}, "
                                                              "or all of --data)")
    s.add_argument("--seed", type=int, default=DEFAULT_SEED, help="benchmark seed (default: %(default)s)")
    s.add_argument("--turns", type=int, default=DEFAULT_TURNS, help="turns per session (default: %(default)s)")
    s.add_argument("--phrasings", choices=("eval", "train"), default="eval",
                   help="instruction wordings: eval (held out, the benchmark) or train (diagnostic: same scenes "
                        "and edits in the training wordings)")
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
    items = make_items(args.sessions or DEFAULT_SESSIONS, args.seed, args.turns, phrasings=args.phrasings)
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
    return ModelEditor(model, context=(mode == "model"), steps=args.steps, cfg_scale=args.cfg,
                       seed=args.sample_seed, masks=not args.no_masks)


def cmd_eval_shapes(args) -> int:
    """Handler of ``vincie eval shapes``; returns the exit code."""
    from tqdm import tqdm

    from .shapes_bench import format_report, run_shapes_bench, summarize

    if args.predictions and args.mode:
        raise ValueError("--predictions judges a folder of outputs; drop --mode (it applies to live editors)")
    mode = "predictions" if args.predictions else (args.mode or "model")
    items, seed = _items(args)
    modes = [mode] + ([b for b in BASELINES if b != mode] if args.baselines else [])
    model = _load_model(args) if any(m in ("model", "no-context") for m in modes) else None
    if model is not None:
        # One untimed turn, so lazy initialisation is not billed to the first session's seconds per turn.
        _editor("no-context", args, model)(items[0]).edit(items[0].instructions[0])

    results = {}
    for m in modes:
        def progress(it, m=m):
            return tqdm(it, desc=f"shapes {m}", unit="session", file=sys.stderr, disable=args.quiet)

        result = run_shapes_bench(items, _editor(m, args, model), masks=not args.no_masks, progress=progress)
        results[m] = summarize(result)

    summary = results.pop(mode)
    model_name = {"predictions": args.predictions, "model": args.model, "no-context": args.model}.get(mode)
    settings = {"seed": seed, "mode": mode, "model": model_name}
    if args.phrasings != "eval":
        settings["phrasings"] = args.phrasings
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
