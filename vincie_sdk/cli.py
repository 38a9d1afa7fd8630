"""The ``vincie`` command line: ``edit``, ``parity``, ``convert``, ``bench`` (+ plugins).

Subcommands that live outside the SDK (``data``, ``train``, ``train-lora``, ``eval``) register
through the ``vincie.commands`` entry-point group, so the SDK never imports the training code.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from importlib.metadata import entry_points
from pathlib import Path

log = logging.getLogger("vincie")

DEFAULT_MODEL = "vincie-shapes"


class CLIError(Exception):
    """A user-facing error: printed as one line, exit code 2."""


# ----------------------------------------------------------------------------------------------
# edit
# ----------------------------------------------------------------------------------------------

def _load_model(args):
    from .config import get_preset
    from .model import VincieModel

    name = args.model
    if name.startswith("random:"):
        preset = get_preset(name.split(":", 1)[1])
        print(f"note: using a randomly initialised '{preset.name}' model built on the spot; it exercises the "
              "whole pipeline but does not edit meaningfully", file=sys.stderr)
        return VincieModel.from_random(preset, seed=0, device=args.device)
    return VincieModel.from_pretrained(name, device=args.device, dtype=args.dtype,
                                       text_encoder_offload=getattr(args, "text_encoder_offload", False),
                                       allow_download=getattr(args, "allow_download", False))


def apply_loras(model, specs: list[str] | None) -> None:
    """``--lora PATH[:STRENGTH]`` options, applied in order (stacked)."""
    from .lora import parse_lora_arg

    for spec in specs or []:
        path, strength = parse_lora_arg(spec)
        name = model.load_lora(path, strength)
        log.info("LoRA %s applied with strength %g", name, strength)


def cmd_edit(args) -> int:
    from tqdm import tqdm

    from .loading import atomic_path
    from .session import Session
    from .sheet import contact_sheet

    prompts = args.prompt or []
    if not prompts:
        raise CLIError("give at least one instruction with -p/--prompt")
    for i, p in enumerate(prompts):
        if not p.strip():
            raise CLIError(f"instruction {i + 1} is empty")
    model = _load_model(args)
    apply_loras(model, args.lora)
    session = Session(model, args.image, seed=args.seed, resolution=args.resolution, steps=args.steps,
                      cfg_scale=args.cfg, exact_official=args.exact_official,
                      camera_prefix=args.camera_prefix, negative_prompt=args.negative_prompt)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    steps = args.steps or model.config.sampler.steps
    bar = tqdm(total=len(prompts) * steps, desc="editing", unit="step", disable=args.quiet)
    for k, prompt in enumerate(prompts):
        bar.set_postfix_str(f"turn {k + 1}/{len(prompts)}")
        image = session.edit(prompt, callback=lambda i, n: bar.update(1))
        with atomic_path(out / f"turn{k + 1}.png") as tmp:
            image.save(tmp, format="PNG")
    bar.close()
    rows = [[(session.images[0], "source")] + [(img, f"{k + 1}: {p}") for k, (img, p) in
                                                enumerate(zip(session.images[1:], session.prompts))]]
    with atomic_path(out / "sheet.png") as tmp:
        contact_sheet(rows, title=f"model {model.config.name}, seed {args.seed}").save(tmp, format="PNG")
    session.save(out / "session.vincie")
    print(f"wrote {len(prompts)} turns, sheet.png and session.vincie to {out}")
    return 0


# ----------------------------------------------------------------------------------------------
# parity
# ----------------------------------------------------------------------------------------------

def cmd_parity(args) -> int:
    from .config import get_preset
    from .parity import check_fixture, check_manifest

    failed = False
    for manifest in args.manifest or []:
        missing, unexpected, shapes = check_manifest(manifest, get_preset(args.preset))
        ok = not (missing or unexpected or shapes)
        failed |= not ok
        print(f"{'OK  ' if ok else 'FAIL'} {manifest} vs preset {args.preset}: {len(missing)} missing, "
              f"{len(unexpected)} unexpected, {len(shapes)} shape mismatches")
        for item in (missing + unexpected + shapes)[:20]:
            print(f"      {item}")
    for folder in args.dirs:
        print(f"{folder}:")
        for r in check_fixture(folder):
            failed |= not r.ok
            print(f"  {'OK  ' if r.ok else 'FAIL'} {r.name:<36} max abs err {r.max_abs_error:.2e}  "
                  f"(tolerance {r.tolerance:.0e}, mean |ref| {r.scale:.3g})")
    if not args.dirs and not args.manifest:
        raise CLIError("give fixture folders and/or --manifest FILE")
    return 1 if failed else 0


# ----------------------------------------------------------------------------------------------
# convert
# ----------------------------------------------------------------------------------------------

def cmd_convert(args) -> int:
    import torch

    from .loading import check_state_dict, read_state_dict, resolve_dtype, save_safetensors, write_json
    from .model import official_config
    from .models.dit import VincieTransformer
    from .models.vae import CausalVAE, convert_official_state_dict

    src = Path(args.source)
    out = Path(args.output) if args.output else src
    if not (src / "dit.pth").is_file():
        raise CLIError(f"{src} has no dit.pth: expected an official VINCIE checkpoint folder")
    dtype = resolve_dtype(args.dtype, "cpu")
    dit_sd = read_state_dict(src / "dit.pth", "official DiT checkpoint")
    config = official_config(dit_sd, src.name)
    with torch.device("meta"):
        check_state_dict(VincieTransformer(config.dit), dit_sd, f"{src}/dit.pth")
        vae_sd = convert_official_state_dict(read_state_dict(src / "vae.pth", "official VAE checkpoint"))
        check_state_dict(CausalVAE(config.vae), vae_sd, f"{src}/vae.pth")
    out.mkdir(parents=True, exist_ok=True)
    save_safetensors({k: v.to(dtype) if v.is_floating_point() else v for k, v in dit_sd.items()}, out / "dit.safetensors")
    save_safetensors(vae_sd, out / "vae.safetensors")
    te_src, te_out = src / config.text.subfolder, out / config.text.subfolder
    if te_src.exists() and not te_out.exists():
        os.symlink(te_src.resolve(), te_out, target_is_directory=True)
    write_json(config.to_dict(), out / "config.json")
    print(f"wrote {out}/dit.safetensors ({dtype}), vae.safetensors, config.json ({config.name})")
    return 0


# ----------------------------------------------------------------------------------------------
# bench
# ----------------------------------------------------------------------------------------------

def cmd_bench(args) -> int:
    import torch

    from .bench import format_table, run_bench
    from .config import get_preset
    from .model import VincieModel

    torch.set_num_threads(args.threads) if args.threads else None
    if args.model:
        model = VincieModel.from_pretrained(args.model, device=args.device, dtype=args.dtype)
    else:
        model = VincieModel.from_random(get_preset(args.preset), device=args.device)
    steps = args.steps or model.config.sampler.steps
    rows = run_bench(model, turns=args.turns, steps=steps, seed=args.seed)
    table = format_table(rows, model.config, steps)
    print(table)
    if args.out:
        Path(args.out).write_text(table + "\n")
    return 0


# ----------------------------------------------------------------------------------------------
# parser
# ----------------------------------------------------------------------------------------------

def _add_runtime(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="cuda" if _cuda() else "cpu", help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    p.add_argument("--dtype", default="auto", help="DiT dtype: auto (bf16 on CUDA, fp32 on CPU), float32, bfloat16, float16")


def _cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:  # torch missing is reported when a command needs it
        return False


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vincie", description="VINCIE in-context multi-turn image editing")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug information")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("edit", help="multi-turn edit of an image", description=(
        "Edit IMAGE turn by turn; writes turn<k>.png, sheet.png and session.vincie to --output. "
        "Example: vincie edit scene.png -p 'add a red circle at the top left' -p 'make it blue' -o out/"))
    p.add_argument("image", help="source image file")
    p.add_argument("-p", "--prompt", action="append", help="an instruction; repeat for more turns")
    p.add_argument("-m", "--model", default=DEFAULT_MODEL,
                   help=f"checkpoint folder, '{DEFAULT_MODEL}' (embedded) or random:PRESET (default: %(default)s)")
    p.add_argument("-o", "--output", default="outputs/edit", help="output folder (default: %(default)s)")
    p.add_argument("--steps", type=int, help="sampling steps (default: the model's)")
    p.add_argument("--cfg", type=float, help="guidance scale (default: the model's)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--resolution", type=int, help="working area is RESOLUTION^2 pixels (default: the model's)")
    p.add_argument("--negative-prompt", help="default: the model's")
    p.add_argument("--camera-prefix", help="e.g. '[###CAMERA: None###] '")
    p.add_argument("--exact-official", action="store_true", help="reproduce the official script's per-turn round trip")
    p.add_argument("--text-encoder-offload", action="store_true", help="keep the text encoder on the CPU between uses")
    p.add_argument("--allow-download", action="store_true", help="allow a hub id as --model (needs internet)")
    p.add_argument("--lora", action="append", metavar="PATH[:STRENGTH]",
                   help="apply a LoRA adapter (folder or .safetensors) with a strength (default 1); repeat to stack")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    _add_runtime(p)
    p.set_defaults(func=cmd_edit)

    p = sub.add_parser("parity", help="check the model code against official outputs", description=(
        "Reproduce every tensor of official fixture folders (DiT: meta.json + dit.safetensors + session_io."
        "safetensors; VAE: meta.json + vae.safetensors + vae_io.safetensors) and print the max abs error; "
        "exit 1 above tolerance. --manifest compares a preset's keys/shapes with a manifest JSON."))
    p.add_argument("dirs", nargs="*", help="fixture folders")
    p.add_argument("--manifest", action="append", help="key/shape manifest JSON (repeatable)")
    p.add_argument("--preset", default="vincie-3b", help="preset for --manifest (default: %(default)s)")
    p.set_defaults(func=cmd_parity)

    p = sub.add_parser("convert", help="official .pth checkpoint → safetensors folder", description=(
        "Convert an official release folder (dit.pth, vae.pth, llm14b/) to this project's format: "
        "dit.safetensors, vae.safetensors, config.json (the text encoder folder is linked, not copied)."))
    p.add_argument("source", help="official checkpoint folder")
    p.add_argument("-o", "--output", help="output folder (default: the source folder)")
    p.add_argument("--dtype", default="float32", help="DiT weight dtype to store (default: %(default)s)")
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("bench", help="per-turn latency: official round trip vs fast path", description=(
        "Times each turn of a multi-turn session in 'official' mode (re-encode everything, separate guidance "
        "passes) and the default fast mode on a randomly initialised preset (or --model)."))
    p.add_argument("--preset", default="small", help="random-weight preset to time (default: %(default)s)")
    p.add_argument("--model", help="time a real checkpoint instead")
    p.add_argument("--turns", type=int, default=5)
    p.add_argument("--steps", type=int, help="sampling steps (default: the preset's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--out", help="also write the table to this file")
    _add_runtime(p)
    p.set_defaults(func=cmd_bench)

    for ep in entry_points(group="vincie.commands"):
        try:
            ep.load()(sub)
        except Exception as e:  # a broken plugin must not take the core commands down
            log.warning("could not load subcommands %r: %s", ep.name, e)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except (CLIError, FileNotFoundError, ValueError) as e:
        print(f"vincie {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
