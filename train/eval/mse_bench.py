"""MSE-Bench: generate VINCIE's 5-turn editing sessions and judge them with a VLM, with the official protocol.

The benchmark (HF dataset ``leigangqu/MSE-Bench``, 100 items) is read from a local copy: a folder with
``meta.jsonl``, ``meta.json``, ``*.parquet`` (what the dataset exports) or the official
``meta.yaml`` (``img_paths``), each row holding ``image`` (a file name, path, bytes or ``{"bytes",
"path"}``), ``index`` and ``context`` (the 5 turn prompts), plus optional ``operation``, ``summary``...

* :func:`generate_sessions` runs one :class:`vincie_sdk.Session` per item (seed = ``index``, as
  ``generate_distributed.py``) and writes the official names ``{index}_turn{t}_rep0_seed{index}.png``,
  ``t = 0..4`` being the outputs of edits 1..5.
* :func:`judge_all` scores every session with any OpenAI-compatible VLM exactly as
  ``evaluation/compute_score.py`` does: for turn k = 1..5 the judge sees prompts 1..k (the ``str()`` of
  ``{'turn1': ..., ...}``) and images [source, out_1..out_k] (the source resized with PIL's default filter
  to the turn-1 output's size and PNG-encoded, the outputs as their file bytes, all labelled
  ``data:image/jpeg;base64``); a reply is parsed by stripping ```json fences, then ``ast.literal_eval``,
  then ``json.loads``; up to 20 attempts per turn (each call itself tried 3 times with 1 s, 2 s back-off);
  a turn succeeds when ``prompt_following > 6`` and ``consistency > 6``; a session stops at its first
  failed turn. One JSON per example is cached, so an interrupted run resumes (examples whose judge failed
  are retried instead of being kept as errors).
* :func:`aggregate` (spec section 9): per turn, sums over the evaluated turns divided by the number of
  examples N (missing turns count 0): cumulative success rate, prompt following, consistency and
  overall = sqrt(pf * c); :func:`write_csv` writes ``Turn, Success Rate, Prompt Following, Consistency,
  Overall`` with the official formatting.

Example:
    >>> items = load_mse_bench("data/mse-bench")                                       # doctest: +SKIP
    >>> generate_sessions(items, model, "out/mse/images")                              # doctest: +SKIP
    >>> results = judge_all(items, "out/mse/images", VlmJudge(JudgeSettings(api_base="http://localhost:8000/v1",
    ...                                                                    api_model="Qwen2.5-VL-72B")),
    ...                     cache_dir="out/mse/results")                             # doctest: +SKIP
    >>> write_csv(aggregate(list(results.values())), "out/mse/mse_bench.csv")          # doctest: +SKIP
"""

from __future__ import annotations

import ast
import base64
import io
import json
import logging
import math
import os
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from PIL import Image

log = logging.getLogger(__name__)

N_TURNS = 5
CSV_COLUMNS = ("Turn", "Success Rate", "Prompt Following", "Consistency", "Overall")

# Our own wording of the judge instructions described in the official protocol (spec 9): judge only
# the last turn, with the earlier prompts and images as context; give a reason, then two 0-10 scores.
# Scores from a VLM judge depend on the exact wording: to reproduce the official numbers, pass the
# official prompt text with --prompt-template FILE (same {placeholders}).
PROMPT_TEMPLATE = """You are judging a multi-turn image editing session. The user gave a source image and an \
instruction; the editor returned an edited image; every later instruction was applied to the previous result.

Judge ONLY the last turn (turn-{num_prompts}). You receive {num_prompts} instructions and {num_images} images: \
the source image first, then the result of each turn in order. Use the earlier turns as context only.

The {num_prompts} instructions: {editing_prompt}

1) Explain briefly how the last result relates to the last instruction and to its input (the source image \
for turn 1, otherwise the previous result).
2) Score "prompt_following" from 0 to 10: 0 = the last instruction was not carried out at all, 10 = carried \
out perfectly.
3) Score "consistency" from 0 to 10: 0 = the last result has nothing to do with its input (complete \
over-editing), 10 = only what the instruction asks for changed.

Answer with JSON only: {{"reason": "...", "prompt_following": int, "consistency": int}}
"""


def load_prompt_template(path: str | os.PathLike | None) -> str:
    """The judge prompt: ours by default, or a file with the same {placeholders} (e.g. the official one)."""
    if path is None:
        return PROMPT_TEMPLATE
    text = Path(path).read_text(encoding="utf-8")
    for field in ("{editing_prompt}", "{num_prompts}", "{num_images}"):
        if field not in text:
            raise ValueError(f"prompt template {path} lacks the placeholder {field}")
    return text


# ----------------------------------------------------------------------------------------------
# The benchmark items
# ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class MseItem:
    """One benchmark session.

    Attributes:
        index: the item's ``index`` (its row number when absent); names its files and seeds its session.
        context: the turn prompts (5 in MSE-Bench).
        image: the source: a path, or encoded image bytes.
        extra: the other columns (``operation``, ``summary``, ``description_target``, ...).
    """

    index: int
    context: tuple[str, ...]
    image: Path | bytes
    extra: dict = field(default_factory=dict, compare=False)

    def source(self) -> Image.Image:
        img = Image.open(io.BytesIO(self.image) if isinstance(self.image, bytes) else self.image)
        return img.convert("RGB")


def output_name(index: int, turn: int) -> str:
    """Official file name of the output of edit ``turn + 1`` (``turn`` is 0-based, as in the official code)."""
    return f"{index}_turn{turn}_rep0_seed{index}.png"


def load_mse_bench(folder: str | os.PathLike) -> list[MseItem]:
    """Read a local copy of MSE-Bench (see the module docstring); items in file order."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(f"MSE-Bench data folder not found: {folder}")
    rows = _read_rows(folder)
    items = []
    for row_number, row in enumerate(rows):
        index = int(row.get("index", row_number))
        context = row.get("context")
        if not isinstance(context, (list, tuple)) or not context or not all(isinstance(c, str) for c in context):
            raise ValueError(f"{folder}: item {index} has no 'context' list of prompts")
        image = _source_value(folder, row, index)
        extra = {k: v for k, v in row.items() if k not in ("image", "img_paths", "index", "context")}
        items.append(MseItem(index, tuple(context), image, extra))
    if not items:
        raise ValueError(f"{folder}: no benchmark items")
    if len({len(i.context) for i in items}) != 1:
        raise ValueError(f"{folder}: items have different numbers of turns; MSE-Bench has {N_TURNS} per item")
    if len({i.index for i in items}) != len(items):
        raise ValueError(f"{folder}: duplicate 'index' values; they name the output files")
    return items


def _read_rows(folder: Path) -> list[dict]:
    for name in ("meta.jsonl", "meta.json", "meta.yaml"):
        path = folder / name
        if path.is_file():
            if name.endswith(".jsonl"):
                return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
            if name.endswith(".json"):
                data = json.loads(path.read_text())
            else:
                import yaml

                data = yaml.safe_load(path.read_text())
            return data if isinstance(data, list) else data.get("items", [])
    parquets = sorted(folder.glob("*.parquet")) or sorted(folder.glob("data/*.parquet"))
    if parquets:
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise ImportError("reading MSE-Bench parquet files needs pyarrow: pip install pyarrow") from None
        return [row for p in parquets for row in pq.read_table(p).to_pylist()]
    raise FileNotFoundError(f"{folder}: expected meta.jsonl, meta.json, meta.yaml or *.parquet (a local copy of "
                            "leigangqu/MSE-Bench; see docs/eval.md)")


def _source_value(folder: Path, row: dict, index: int) -> Path | bytes:
    value = row.get("image")
    if value is None and row.get("img_paths"):
        value = Path(row["img_paths"][0]).name  # official meta.yaml: images beside it, by base name
    if isinstance(value, dict):
        value = value.get("bytes") or value.get("path")
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    candidates = [folder / value, Path(value).expanduser(), folder / "images" / str(value)] if value else []
    candidates += [folder / f"{index}{ext}" for ext in (".jpg", ".png", ".jpeg")]  # compute_score.py's cache names
    for path in candidates:
        if path.is_file():
            return path
    raise FileNotFoundError(f"{folder}: source image of item {index} not found (image={value!r}; also tried "
                            f"{index}.jpg/.png)")


# ----------------------------------------------------------------------------------------------
# Generation
# ----------------------------------------------------------------------------------------------

def generate_sessions(items: list[MseItem], model, out_dir: str | os.PathLike, *, steps: int | None = None,
                      cfg_scale: float | None = None, resolution: int | None = None,
                      pad_img_placeholder: bool | None = None,
                      progress: Callable[[Iterable], Iterable] | None = None) -> Path:
    """Edit every item turn by turn (one Session each, seed = index) into ``out_dir`` with official names.

    Items whose outputs all exist are skipped (an interrupted run resumes); a partial item is redone.
    """
    from vincie_sdk import Session
    from vincie_sdk.loading import atomic_path

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for item in (progress(items) if progress else items):
        paths = [out / output_name(item.index, t) for t in range(len(item.context))]
        if all(p.is_file() for p in paths):
            continue
        session = Session(model, item.source(), seed=item.index, steps=steps, cfg_scale=cfg_scale,
                          resolution=resolution, pad_img_placeholder=pad_img_placeholder)
        for prompt, path in zip(item.context, paths):
            image = session.edit(prompt)
            with atomic_path(path) as tmp:
                image.save(tmp, format="PNG")
    return out


def prediction_paths(item: MseItem, folder: str | os.PathLike) -> list[Path]:
    """The item's output files in ``folder`` (official names, or the fallback without ``rep0_``)."""
    folder = Path(folder)
    paths = [folder / output_name(item.index, t) for t in range(len(item.context))]
    if not paths[0].is_file():
        paths = [p.with_name(p.name.replace("rep0_", "")) for p in paths]
    return paths


# ----------------------------------------------------------------------------------------------
# The judge
# ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class JudgeSettings:
    """The VLM endpoint and the protocol's constants (defaults: the official ones)."""

    api_base: str | None = None  # e.g. http://localhost:8000/v1; None = OpenAI
    api_model: str = "gpt-5-nano"
    api_key: str | None = None  # default: $OPENAI_API_KEY
    api: str = "chat"  # "chat" (Chat Completions) or "responses" (the official script's Responses API)
    attempts: int = 20  # replies per turn until one parses (official NUM_TRY)
    call_retries: int = 3  # tries of one API call, with back-off retry_delay, 2 * retry_delay, ...
    retry_delay: float = 1.0
    threshold: int = 6  # success: both scores strictly greater
    timeout: float = 120.0  # seconds per request
    prompt_template: str = PROMPT_TEMPLATE  # see load_prompt_template
    max_tokens: int | None = None  # Chat Completions only; None = the server's default


class VlmJudge:
    """Asks an OpenAI-compatible VLM; thread-safe (one client shared by the workers)."""

    def __init__(self, settings: JudgeSettings) -> None:
        import openai

        if settings.api not in ("chat", "responses"):
            raise ValueError(f"api={settings.api!r}; use 'chat' (Chat Completions) or 'responses' (Responses API)")
        key = settings.api_key or os.environ.get("OPENAI_API_KEY")
        if not key:
            raise ValueError("the judge needs an API key: set OPENAI_API_KEY (any non-empty value for a local "
                             "server) or pass --api-key-env NAME")
        self.settings = settings
        self.client = openai.OpenAI(base_url=settings.api_base, api_key=key, timeout=settings.timeout, max_retries=0)

    def ask(self, prompt: str, images_b64: list[str]) -> str | None:
        """One judgement request; None when every try failed (the official ``evaluate_with_gpt``)."""
        s = self.settings
        for attempt in range(s.call_retries):
            try:
                return self._request(prompt, images_b64)
            except Exception as e:  # network, HTTP and server errors alike, as the official script
                log.warning("judge request failed (try %d/%d): %s", attempt + 1, s.call_retries, e)
                if attempt < s.call_retries - 1:
                    time.sleep(s.retry_delay * 2**attempt)
        return None

    def _request(self, prompt: str, images_b64: list[str]) -> str:
        s = self.settings
        urls = [f"data:image/jpeg;base64,{b}" for b in images_b64]  # PNG bytes under a jpeg label, as official
        if s.api == "responses":
            content = [{"type": "input_text", "text": prompt}] + [{"type": "input_image", "image_url": u} for u in urls]
            response = self.client.responses.create(model=s.api_model,
                                                    input=[{"type": "message", "role": "user", "content": content}])
            return response.output_text
        content = [{"type": "text", "text": prompt}] + [{"type": "image_url", "image_url": {"url": u}} for u in urls]
        extra = {"max_tokens": s.max_tokens} if s.max_tokens else {}
        response = self.client.chat.completions.create(model=s.api_model,
                                                       messages=[{"role": "user", "content": content}], **extra)
        return response.choices[0].message.content


def parse_reply(reply: Any) -> Any:
    """The official ``parse_mixed_string``: strip ```json fences (as a character set, like ``str.strip``),
    then ``ast.literal_eval``, then ``json.loads``; None when neither parses."""
    if reply is None:
        return None
    if isinstance(reply, dict):
        return reply
    if isinstance(reply, float) and math.isnan(reply):
        return ""
    s = reply.strip("```json").strip("```")
    try:
        return ast.literal_eval(s)
    except (ValueError, SyntaxError, MemoryError, RecursionError, TypeError):
        pass
    try:
        return json.loads(s)
    except json.JSONDecodeError:
        return None


def score_reply(reply: Any, threshold: int = 6) -> dict | None:
    """Parsed scores plus ``all`` (1 iff both scores > threshold), or None if the reply is unusable
    (the official code retries on any exception while scoring)."""
    parsed = parse_reply(reply)
    try:
        pf, c = parsed["prompt_following"], parsed["consistency"]
        ok = int(pf > threshold and c > threshold)
        math.sqrt(pf * c)  # aggregation needs numbers (the official summary would crash on anything else)
    except Exception:
        return None
    return {**parsed, "all": ok}


def session_images_b64(source: Image.Image, outputs: list[Path]) -> list[str]:
    """[source resized to the turn-1 output's size (PIL default filter) as PNG, outputs as file bytes], base64."""
    size = Image.open(outputs[0]).size
    buf = io.BytesIO()
    source.resize(size).save(buf, format="PNG")
    return [base64.b64encode(buf.getvalue()).decode()] + [base64.b64encode(p.read_bytes()).decode() for p in outputs]


def judge_session(item: MseItem, outputs: list[Path], judge: VlmJudge) -> dict:
    """The official per-example evaluation: ``{"turn1": {..., "all": 0|1}, ...}`` up to the first failed turn,
    or ``{"error": ...}`` when a turn gets no usable reply in ``attempts`` tries."""
    s = judge.settings
    images = session_images_b64(item.source(), outputs)
    prompts = {f"turn{k + 1}": c for k, c in enumerate(item.context)}
    result: dict = {}
    for t in range(len(item.context)):
        shown = {f"turn{k + 1}": prompts[f"turn{k + 1}"] for k in range(t + 1)}
        text = s.prompt_template.format(editing_prompt=str(shown), num_prompts=len(shown),
                                        num_images=t + 2)
        scores = None
        for attempt in range(s.attempts):
            scores = score_reply(judge.ask(text, images[: t + 2]), s.threshold)
            if scores is not None:
                break
            log.info("item %d turn %d: unusable reply (attempt %d/%d)", item.index, t + 1, attempt + 1, s.attempts)
        if scores is None:
            return {"error": f"Failed to get valid response after {s.attempts} attempts at turn {t}"}
        result[f"turn{t + 1}"] = scores
        if scores["all"] == 0:
            break
    return result


def judge_all(items: list[MseItem], predictions: str | os.PathLike, judge: VlmJudge, *,
              cache_dir: str | os.PathLike | None = None, workers: int = 8,
              progress: Callable[[Iterable, int], Iterable] | None = None) -> dict[int, dict]:
    """Judge every item's outputs in ``predictions`` with ``workers`` threads; returns {index: result}.

    With ``cache_dir``, each result is written to ``{index}.json`` and reused on the next run (results
    holding an ``error`` are judged again).
    """
    missing = [str(p) for item in items for p in prediction_paths(item, predictions) if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} output images missing in {predictions} (e.g. {missing[:3]}); "
                                "expected {index}_turn{t}_rep0_seed{index}.png for t = 0..4 per item")
    cache = Path(cache_dir) if cache_dir else None
    if cache:
        cache.mkdir(parents=True, exist_ok=True)
    results: dict[int, dict] = {}
    todo = []
    for item in items:
        cached = cache / f"{item.index}.json" if cache else None
        if cached and cached.is_file():
            result = json.loads(cached.read_text())
            if "error" not in result:
                results[item.index] = result
                continue
        todo.append(item)

    def run(item: MseItem) -> tuple[int, dict]:
        result = judge_session(item, prediction_paths(item, predictions), judge)
        if cache:
            from vincie_sdk.loading import atomic_path

            with atomic_path(cache / f"{item.index}.json") as tmp:
                tmp.write_text(json.dumps(result, ensure_ascii=False, indent=4))
        return item.index, result

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        futures = [pool.submit(run, item) for item in todo]
        done = as_completed(futures)
        for future in (progress(done, len(futures)) if progress else done):
            index, result = future.result()
            results[index] = result
    return {item.index: results[item.index] for item in items}


# ----------------------------------------------------------------------------------------------
# Aggregation
# ----------------------------------------------------------------------------------------------

def aggregate(results: list[dict], n_turns: int = N_TURNS) -> dict:
    """Per-turn scores over N examples (spec section 9): sums over evaluated turns / N.

    Returns:
        ``{"n_examples": N, "n_turns": n, "turns": [{"turn": "turn1", "valid": int, "success_rate",
        "prompt_following", "consistency", "overall"}, ...]}``.
    Raises:
        ValueError: some results are judge errors (as the official summary's assertion); re-run to retry them.
    """
    errors = [r["error"] for r in results if "error" in r]
    if errors:
        raise ValueError(f"{len(errors)} examples have no judgement ({errors[0]}); run the judge again: cached "
                         "results are kept and only these are retried")
    n = len(results)
    if n == 0:
        raise ValueError("aggregate: no results")
    turns = []
    for k in range(1, n_turns + 1):
        evaluated = [r[f"turn{k}"] for r in results if f"turn{k}" in r]
        turns.append({
            "turn": f"turn{k}",
            "valid": len(evaluated),
            "success_rate": sum(e["all"] for e in evaluated) / n,
            "prompt_following": sum(e["prompt_following"] for e in evaluated) / n,
            "consistency": sum(e["consistency"] for e in evaluated) / n,
            "overall": sum(math.sqrt(e["prompt_following"] * e["consistency"]) for e in evaluated) / n,
        })
    return {"n_examples": n, "n_turns": n_turns, "turns": turns}


def write_csv(summary: dict, path: str | os.PathLike) -> Path:
    """The official CSV: ``Turn, Success Rate, Prompt Following, Consistency, Overall``, values ``%.4f``."""
    import csv

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(CSV_COLUMNS)
        for t in summary["turns"]:
            writer.writerow([t["turn"]] + [f"{t[k]:.4f}" for k in ("success_rate", "prompt_following", "consistency",
                                                                   "overall")])
    return path


def format_summary(summary: dict, title: str = "MSE-Bench") -> str:
    """A Markdown table of :func:`aggregate`'s output."""
    lines = [f"{title}: {summary['n_examples']} sessions x {summary['n_turns']} turns", "",
             "| turn | evaluated | success rate | prompt following | consistency | overall |",
             "|---|---:|---:|---:|---:|---:|"]
    for t in summary["turns"]:
        lines.append(f"| {t['turn']} | {t['valid']} | {t['success_rate']:.4f} | {t['prompt_following']:.4f} | "
                     f"{t['consistency']:.4f} | {t['overall']:.4f} |")
    return "\n".join(lines)
