"""`enclave compress report`: one row per artifact, measured the same way on this machine.

Size on disk, parameters and sparsity, perplexity on held-out text, the task scores on the data
set's test split overall and per group (the shared evaluation, ``enclave.evaluation``, in process:
the code tune and `enclave eval` score with), decode tokens/s and time to first token; printed,
written as Markdown and JSON, and plotted (size vs perplexity).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from compress.config import EvalSettings
from compress.io import logical_parameters
from compress.text import perplexity, read_source
from enclave.atomic import atomic_write_bytes
from enclave.evaluation.compare import gain_kept
from enclave.hf.checkpoint import quantization_config
from enclave.hf.loader import load
from enclave.manifest import MANIFEST, read_manifest, require_valid, update_metrics
from enclave.store import resolve_model

SPEED_PROMPT_TOKENS, SPEED_NEW_TOKENS = 128, 64


@torch.no_grad()
def speed(model, tokenizer, text: str) -> dict:
    """Greedy decode speed and time to first token for a 128-token prompt (transformers, fp32)."""
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"][:, :SPEED_PROMPT_TOKENS]
    mask = torch.ones_like(ids)
    kw = dict(do_sample=False, pad_token_id=tokenizer.pad_token_id, eos_token_id=None)
    model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=4, **kw)  # warm-up
    t0 = time.perf_counter()
    model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=1, min_new_tokens=1, **kw)
    ttft = time.perf_counter() - t0
    t0 = time.perf_counter()
    out = model.generate(
        input_ids=ids, attention_mask=mask, max_new_tokens=SPEED_NEW_TOKENS, min_new_tokens=SPEED_NEW_TOKENS, **kw
    )
    total = time.perf_counter() - t0
    new = out.size(1) - ids.size(1)
    return {"ttft_seconds": ttft, "decode_tokens_per_second": (new - 1) / max(total - ttft, 1e-9)}


def task_score(lm, tokenizer, data: str, label: str, max_new_tokens: int = 48, gap_threshold: float = 10.0) -> dict:
    """The data set's test split scored with the shared evaluation: overall, per group, and the gaps."""
    from enclave.chat import prompt_and_answer
    from enclave.evaluation.task import TaskItem, evaluate
    from enclave.splits import load_split

    items = [
        TaskItem(*prompt_and_answer(tokenizer, r.messages, where=r.source), r.answer, r.group)
        for r in load_split(data, "test")
    ]
    result = evaluate(
        lm,
        lambda ids: tokenizer.decode(ids, skip_special_tokens=True),
        items,
        label,
        max_new_tokens,
        {tokenizer.eos_token_id},
        gap_threshold,
    )
    return {
        "task_exact_match": result.metrics["exact_match"],
        "task_token_f1": result.metrics["token_f1"],
        "task_per_group": result.per_group,
        "task_gaps": result.gaps,
        "task_warnings": result.warnings,
    }


def _size(root: Path) -> int:
    """Bytes on disk of the model files (adapters shipped beside a vLLM model not counted)."""
    return sum(
        f.stat().st_size
        for f in root.rglob("*")
        if f.is_file() and f.name != MANIFEST and "adapters" not in f.relative_to(root).parts
    )


def measure_onnx(root: Path, settings: EvalSettings, task_data: str | None) -> dict:
    """The report's columns for an ONNX artifact, run with onnxruntime (perplexity) and
    onnxruntime-genai (speed, task answers)."""
    from transformers import AutoTokenizer

    from enclave.evaluation.lm import OnnxLM
    from enclave.evaluation.perplexity import text_perplexity
    from enclave.onnx_runtime import Generator, genai_config

    manifest = require_valid(root)
    tokenizer = AutoTokenizer.from_pretrained(root, local_files_only=True)
    text = read_source(settings.heldout)
    ids = tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
    context = genai_config(root)["model"]["context_length"]  # the KV cache and rotary tables end there
    gen = Generator(root)
    prompt = ids[: min(SPEED_PROMPT_TOKENS, context // 2)]
    gen.greedy(prompt, 4, stop_at_eos=False)  # warm-up
    new, ttft, rest = gen.greedy(prompt, min(SPEED_NEW_TOKENS, context // 4), stop_at_eos=False)
    lm = OnnxLM(root)
    row = {
        "artifact": str(root),
        "name": manifest.name,
        "kind": f"onnx {manifest.metrics.get('precision', '')}".strip(),
        "engine": "ort-genai",
        "size_bytes": _size(root),
        "parameters": manifest.metrics.get("parameters"),
        "perplexity": text_perplexity(lm, ids, window=min(512, context), max_tokens=settings.max_tokens),
        "ttft_seconds": ttft,
        "decode_tokens_per_second": (len(new) - 1) / max(rest, 1e-9),
    }
    if task_data:
        row.update(task_score(lm, tokenizer, task_data, manifest.name))
    return row


def measure(path: str, settings: EvalSettings, task_data: str | None) -> dict:
    """Every column of the report for one artifact (or plain checkpoint)."""
    root = Path(path).expanduser()
    if (root / MANIFEST).is_file() and read_manifest(root).kind == "onnx":
        return measure_onnx(root, settings, task_data)
    resolved = resolve_model(path)
    model, tokenizer = load(resolved)
    # Sparsity of the transformer's linear layers (lm_head is tied to the embeddings and never pruned);
    # GPTQ layers hold packed integers, not nn.Linear weights, and are left out.
    linears = [
        m.weight for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and not n.endswith("lm_head")
    ]
    quantized = bool(quantization_config(resolved.path))
    row = {
        "artifact": str(resolved.path),
        "name": resolved.manifest.name if resolved.manifest else resolved.path.name,
        "kind": resolved.manifest.kind if resolved.manifest else "checkpoint",
        "engine": "torch" + (" gptqmodel" if quantized else ""),
        "size_bytes": _size(resolved.path),
        "parameters": logical_parameters(model),
        "perplexity": perplexity(model, tokenizer, settings.heldout, settings.max_tokens),
        **speed(model, tokenizer, read_source(settings.heldout)),
    }
    if linears:
        row["sparsity"] = sum(int((w == 0).sum()) for w in linears) / sum(w.numel() for w in linears)
    if task_data:
        from enclave.evaluation.lm import TorchLM

        row.update(task_score(TorchLM(model, tokenizer.pad_token_id), tokenizer, task_data, row["name"]))
    return row


GAIN_METRICS = ("exact_match", "token_f1")


def add_gain_kept(rows: list[dict]) -> None:
    """The share of the tuning gain each artifact keeps (``gain_kept_exact_match``, ``..._token_f1``).

    The gain is measured from the first row (the base model a recipe starts from) to the first tuned
    row (kind ``merged``: an adapter merged into the base, or a fully tuned checkpoint); every row
    but the base gets a share. No tuned row, or no task scores: no shares.
    """
    tuned = next((i for i, r in enumerate(rows) if i and r.get("kind") == "merged"), None)
    if tuned is None:
        return
    for metric in GAIN_METRICS:
        base, best = rows[0].get(f"task_{metric}"), rows[tuned].get(f"task_{metric}")
        for row in rows[1:]:
            row[f"gain_kept_{metric}"] = gain_kept(base, best, row.get(f"task_{metric}"))


def report(
    paths: list[str], settings: EvalSettings, out_dir: Path, task_data: str | None = "builtin:clinical_legal"
) -> list[dict]:
    """Measure each artifact, print the table, write report.md, report.json and report.png.

    Each row is also recorded, under ``report``, in the metrics of the measured artifact's manifest
    (plain checkpoints without a manifest are measured but not changed).

    Args:
        paths: the models to measure, in row order: store names, checkpoint paths or artifact paths
            (ONNX artifacts run with ONNX Runtime, everything else with transformers).
        settings: the held-out text for perplexity and how many of its tokens to score.
        out_dir: the folder for the report files (created if missing).
        task_data: the data set whose test split is scored as the task, or None for no task scores.

    Returns:
        One dict per path, in order: the report's columns (size, parameters, perplexity, speed, task scores,
        share of the tuning gain kept) by key.

    Raises:
        EnclaveError: a path is not found or fails verification, or the held-out text or task data cannot
            be read.
    """
    from tqdm import tqdm

    rows = [measure(path, settings, task_data) for path in tqdm(paths, desc="measure", unit="artifact")]
    add_gain_kept(rows)
    for row in rows:
        if (Path(row["artifact"]) / MANIFEST).is_file():
            update_metrics(
                Path(row["artifact"]),
                {"report": {k: v for k, v in row.items() if k not in ("artifact", "name", "kind")}},
            )
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(
        out_dir / "report.json", json.dumps({"heldout": settings.heldout, "rows": rows}, indent=2).encode()
    )
    atomic_write_bytes(out_dir / "report.md", markdown(rows, settings).encode())
    plot(rows, out_dir / "report.png")
    print_table(rows)
    return rows


COLUMNS = [
    ("name", "artifact", "{}"),
    ("kind", "kind", "{}"),
    ("engine", "engine", "{}"),
    ("size_bytes", "MB", "{:.1f}"),
    ("parameters", "params M", "{:.1f}"),
    ("sparsity", "sparsity", "{:.1%}"),
    ("perplexity", "perplexity", "{:.2f}"),
    ("task_exact_match", "task EM", "{:.1f}"),
    ("task_token_f1", "task F1", "{:.1f}"),
    ("gain_kept_exact_match", "EM gain kept", "{:.0%}"),
    ("decode_tokens_per_second", "tok/s", "{:.1f}"),
    ("ttft_seconds", "TTFT s", "{:.3f}"),
]
TEXT_COLUMNS = ("artifact", "kind", "engine")
# The terminal table fits 120 columns: no engine column (report.md has it), shorter titles.
SHORT_TITLES = {"perplexity": "ppl", "task EM": "EM", "task F1": "F1", "EM gain kept": "kept"}


def _cell(row: dict, key: str, fmt: str) -> str:
    if row.get(key) is None:
        return "-"
    value = row[key] / 1e6 if key in ("size_bytes", "parameters") else row[key]
    return fmt.format(value)


def print_table(rows: list[dict]) -> None:
    """Print the rows as a table on the console (the Markdown columns without the engine)."""
    from rich.table import Table

    from enclave.ui import console

    columns = [c for c in COLUMNS if c[0] != "engine"]
    table = Table(title="Compression report (this machine; engines in report.md)")
    for _, title, _ in columns:
        table.add_column(
            SHORT_TITLES.get(title, title),
            justify="left" if title in TEXT_COLUMNS else "right",
            no_wrap=True,
            overflow="ellipsis",
            min_width=None if title in TEXT_COLUMNS else len(SHORT_TITLES.get(title, title)),
        )
    for row in rows:
        table.add_row(*[_cell(row, k, f) for k, _, f in columns])
    console().print(table)


def markdown(rows: list[dict], settings: EvalSettings) -> str:
    """The report as Markdown: how it was measured, one table row per artifact, then per-group task scores."""
    lines = [
        "# Compression report",
        "",
        f"Perplexity on `{settings.heldout}` (first {settings.max_tokens} tokens); task scores on the "
        "data set's test split (the shared evaluation, each artifact on its own engine: ONNX with ONNX Runtime); "
        "speed: greedy decoding with each artifact's engine, "
        "128-token prompt, 64 new tokens, on this machine. "
        "EM gain kept: (artifact EM - base EM) / (tuned EM - base EM), "
        "the share of what tuning gained on the test split that the artifact keeps "
        "(the base is the first row, the tuned "
        "model the first merged one).",
        "",
        "| " + " | ".join(t for _, t, _ in COLUMNS) + " |",
        "|" + "---|" * len(COLUMNS),
    ]
    lines += ["| " + " | ".join(_cell(r, k, f) for k, _, f in COLUMNS) + " |" for r in rows]
    lines += _groups(rows)
    return "\n".join(lines) + "\n"


def _groups(rows: list[dict]) -> list[str]:
    """Per-group task scores of every artifact (the fairness view tune's report has), and the largest gaps."""
    groups = sorted({g for r in rows for g in r.get("task_per_group") or {}})
    if not groups:
        return []
    lines = [
        "",
        "## Task scores by group (test split)",
        "",
        "| artifact | " + " | ".join(f"{g} EM | {g} F1" for g in groups) + " | largest EM gap | largest F1 gap |",
        "|---|" + "---:|" * (2 * len(groups) + 2),
    ]
    for r in rows:
        per, gaps = r.get("task_per_group") or {}, r.get("task_gaps") or {}
        cells = [f"{per[g]['exact_match']:.1f} | {per[g]['token_f1']:.1f}" if g in per else "- | -" for g in groups]
        gap = [f"{gaps[m]['gap']:.1f}" if m in gaps else "-" for m in ("exact_match", "token_f1")]
        lines.append(f"| {r['name']} | " + " | ".join(cells) + f" | {gap[0]} | {gap[1]} |")
    warnings = [w for r in rows for w in r.get("task_warnings") or []]
    return lines + ["", *[f"> warning: {w}" for w in warnings]] if warnings else lines


def plot(rows: list[dict], path: Path) -> None:
    """Plot size on disk against held-out perplexity, one labelled point per row, and save it to ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    for r in rows:
        ax.scatter(r["size_bytes"] / 1e6, r["perplexity"])
        ax.annotate(
            r["name"], (r["size_bytes"] / 1e6, r["perplexity"]), textcoords="offset points", xytext=(5, 5), fontsize=8
        )
    ax.set_xlabel("size on disk (MB)")
    ax.set_ylabel("held-out perplexity (lower is better)")
    ax.set_title("Compression trade-off")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
