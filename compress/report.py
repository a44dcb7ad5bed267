"""`enclave compress report`: one row per artifact, measured the same way on this machine.

Size on disk, parameters and sparsity, perplexity on held-out text, the task score on the
tune test split (through `enclave eval`, the same command tune uses), decode tokens/s and
time to first token; printed, written as Markdown and JSON, and plotted (size vs perplexity).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from compress.config import EvalSettings
from compress.io import logical_parameters
from compress.text import perplexity, read_source
from enclave.atomic import atomic_write_bytes
from enclave.checkpoint import quantization_config
from enclave.errors import EnclaveError
from enclave.generate import load
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
    out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=SPEED_NEW_TOKENS, min_new_tokens=SPEED_NEW_TOKENS, **kw)
    total = time.perf_counter() - t0
    new = out.size(1) - ids.size(1)
    return {"ttft_seconds": ttft, "decode_tokens_per_second": (new - 1) / max(total - ttft, 1e-9)}


def task_score(path: Path, data: str) -> dict:
    """The tune test split's scores, through `enclave eval` (compress does not import tune)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "eval.json"
        cmd = [sys.executable, "-m", "enclave", "eval", str(path), "--data", data, "--json", str(out), "--no-record"]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise EnclaveError(f"`enclave eval {path}` failed: {proc.stderr.strip().splitlines()[-1:]}")
        scores = json.loads(out.read_text())["metrics"]
    return {"task_exact_match": scores["exact_match"], "task_token_f1": scores["token_f1"]}


def _size(root: Path) -> int:
    """Bytes on disk of the model files (adapters shipped beside a vLLM model not counted)."""
    return sum(f.stat().st_size for f in root.rglob("*") if f.is_file() and f.name != MANIFEST and "adapters" not in f.relative_to(root).parts)


def measure_onnx(root: Path, settings: EvalSettings) -> dict:
    """The report's columns for an ONNX artifact, run with onnxruntime (perplexity) and
    onnxruntime-genai (speed)."""
    from transformers import AutoTokenizer

    from enclave.ort import Generator, LogitsSession, genai_config, perplexity as ort_perplexity

    manifest = require_valid(root)
    tokenizer = AutoTokenizer.from_pretrained(root, local_files_only=True)
    text = read_source(settings.heldout)
    ids = tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
    context = genai_config(root)["model"]["context_length"]  # the KV cache and rotary tables end there
    gen = Generator(root)
    prompt = ids[: min(SPEED_PROMPT_TOKENS, context // 2)]
    gen.greedy(prompt, 4, stop_at_eos=False)  # warm-up
    new, ttft, rest = gen.greedy(prompt, min(SPEED_NEW_TOKENS, context // 4), stop_at_eos=False)
    return {
        "artifact": str(root), "name": manifest.name, "kind": f"onnx {manifest.metrics.get('precision', '')}".strip(),
        "engine": "ort-genai", "size_bytes": _size(root), "parameters": manifest.metrics.get("parameters"),
        "perplexity": ort_perplexity(LogitsSession(root), ids[: settings.max_tokens + 1], window=min(512, context)),
        "ttft_seconds": ttft, "decode_tokens_per_second": (len(new) - 1) / max(rest, 1e-9),
    }  # fmt: skip


def measure(path: str, settings: EvalSettings, task_data: str | None) -> dict:
    """Every column of the report for one artifact (or plain checkpoint)."""
    root = Path(path).expanduser()
    if (root / MANIFEST).is_file() and read_manifest(root).kind == "onnx":
        row = measure_onnx(root, settings)
        return {**row, **task_score(root, task_data)} if task_data else row
    resolved = resolve_model(path)
    model, tokenizer = load(resolved)
    # Sparsity of the transformer's linear layers (lm_head is tied to the embeddings and never pruned);
    # GPTQ layers hold packed integers, not nn.Linear weights, and are left out.
    linears = [m.weight for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and not n.endswith("lm_head")]
    quantized = bool(quantization_config(resolved.path))
    row = {
        "artifact": str(resolved.path), "name": resolved.manifest.name if resolved.manifest else resolved.path.name,
        "kind": resolved.manifest.kind if resolved.manifest else "checkpoint", "engine": "torch" + (" gptqmodel" if quantized else ""),
        "size_bytes": _size(resolved.path), "parameters": logical_parameters(model),
        "perplexity": perplexity(model, tokenizer, settings.heldout, settings.max_tokens),
        **speed(model, tokenizer, read_source(settings.heldout)),
    }  # fmt: skip
    if linears:
        row["sparsity"] = sum(int((w == 0).sum()) for w in linears) / sum(w.numel() for w in linears)
    if task_data:
        row.update(task_score(resolved.path, task_data))
    return row


def report(paths: list[str], settings: EvalSettings, out_dir: Path, task_data: str | None = "builtin:clinical_legal") -> list[dict]:
    """Measure each artifact, print the table, write report.md, report.json and report.png."""
    from tqdm import tqdm

    rows = []
    for path in tqdm(paths, desc="measure", unit="artifact"):
        rows.append(measure(path, settings, task_data))
        if (Path(rows[-1]["artifact"]) / MANIFEST).is_file():
            update_metrics(Path(rows[-1]["artifact"]), {"report": {k: v for k, v in rows[-1].items() if k not in ("artifact", "name", "kind")}})
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out_dir / "report.json", json.dumps({"heldout": settings.heldout, "rows": rows}, indent=2).encode())
    atomic_write_bytes(out_dir / "report.md", markdown(rows, settings).encode())
    plot(rows, out_dir / "report.png")
    print_table(rows)
    return rows


COLUMNS = [("name", "artifact", "{}"), ("kind", "kind", "{}"), ("engine", "engine", "{}"), ("size_bytes", "MB", "{:.1f}"),
           ("parameters", "params M", "{:.1f}"), ("sparsity", "sparsity", "{:.1%}"), ("perplexity", "perplexity", "{:.2f}"),
           ("task_exact_match", "task EM", "{:.1f}"), ("task_token_f1", "task F1", "{:.1f}"),
           ("decode_tokens_per_second", "tok/s", "{:.1f}"), ("ttft_seconds", "TTFT s", "{:.3f}")]  # fmt: skip
TEXT_COLUMNS = ("artifact", "kind", "engine")
# The terminal table fits 120 columns: no engine column (report.md has it), shorter titles.
SHORT_TITLES = {"perplexity": "ppl", "task EM": "EM", "task F1": "F1"}


def _cell(row: dict, key: str, fmt: str) -> str:
    if row.get(key) is None:
        return "-"
    value = row[key] / 1e6 if key in ("size_bytes", "parameters") else row[key]
    return fmt.format(value)


def print_table(rows: list[dict]) -> None:
    from rich.table import Table

    from enclave.ui import console

    columns = [c for c in COLUMNS if c[0] != "engine"]
    table = Table(title="Compression report (this machine; engines in report.md)")
    for _, title, _ in columns:
        table.add_column(SHORT_TITLES.get(title, title), justify="left" if title in TEXT_COLUMNS else "right", no_wrap=True,
                         overflow="ellipsis", min_width=None if title in TEXT_COLUMNS else len(SHORT_TITLES.get(title, title)))  # fmt: skip
    for row in rows:
        table.add_row(*[_cell(row, k, f) for k, _, f in columns])
    console().print(table)


def markdown(rows: list[dict], settings: EvalSettings) -> str:
    lines = ["# Compression report", "", f"Perplexity on `{settings.heldout}` (first {settings.max_tokens} tokens); task scores on the "
             "tune test split (through `enclave eval`, which runs ONNX artifacts with ONNX Runtime); speed: greedy decoding with each artifact's engine, "
             "128-token prompt, 64 new tokens, on this machine.", "",
             "| " + " | ".join(t for _, t, _ in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]  # fmt: skip
    lines += ["| " + " | ".join(_cell(r, k, f) for k, _, f in COLUMNS) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    for r in rows:
        ax.scatter(r["size_bytes"] / 1e6, r["perplexity"])
        ax.annotate(r["name"], (r["size_bytes"] / 1e6, r["perplexity"]), textcoords="offset points", xytext=(5, 5), fontsize=8)
    ax.set_xlabel("size on disk (MB)")
    ax.set_ylabel("held-out perplexity (lower is better)")
    ax.set_title("Compression trade-off")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
