"""Text in: held-out text for perplexity and calibration sequences for data-aware methods.

compress never imports tune; it reads the same JSONL forms (instruction/output or messages)
itself, as plain text.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import torch

from enclave.errors import EnclaveError


def read_source(source: str) -> str:
    """All text of a .txt or .jsonl file, or builtin:NAME (compress/data/NAME.txt or tune's data set)."""
    if source.startswith("builtin:"):
        name = source.split(":", 1)[1]
        for package, folder, suffix in (("compress", "data", ".txt"), ("tune", "datasets", ".jsonl")):
            candidate = resources.files(package) / folder / f"{name}{suffix}"
            if candidate.is_file():
                return _from_file(Path(str(candidate)))
        raise EnclaveError(f"no built-in text {name!r}", fix="use builtin:clinical_legal, builtin:psf_license, builtin:legal_texts, builtin:heldout_apache2 or a file path")
    path = Path(source).expanduser()
    if not path.is_file():
        raise EnclaveError(f"text source {source!r} is not a file", fix="give a .txt or .jsonl file, or builtin:NAME")
    return _from_file(path)


def _from_file(path: Path) -> str:
    text = path.read_text(encoding="utf-8")
    if path.suffix != ".jsonl":
        return text
    parts = []
    for line in text.splitlines():
        if line.strip():
            rec = json.loads(line)
            if "messages" in rec:
                parts += [m.get("content", "") for m in rec["messages"]]
            else:
                parts += [rec.get("instruction", ""), rec.get("input", ""), rec.get("output", "")]
    return "\n".join(p for p in parts if p)


def calibration_batches(tokenizer, source: str | list[str], samples: int, seq_len: int) -> torch.Tensor:
    """``samples`` sequences of ``seq_len`` consecutive tokens, shape (samples, seq_len).

    Args:
        source: one text source (see ``read_source``) or several, joined in order.

    Raises:
        EnclaveError: the text is shorter than samples x seq_len tokens (says how much is needed).
    """
    text = "\n".join(read_source(s) for s in ([source] if isinstance(source, str) else source))
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt", verbose=False)["input_ids"][0]
    need = samples * seq_len
    if len(ids) < need:
        raise EnclaveError(
            f"calibration text {source!r} has {len(ids):,} tokens; {samples} samples x {seq_len} tokens need {need:,}",
            fix=f"give more text, or lower calibration.samples (at most {len(ids) // seq_len}) or calibration.seq_len",
        )
    return ids[:need].reshape(samples, seq_len)


@torch.no_grad()
def perplexity(model, tokenizer, source: str, max_tokens: int = 2048, window: int = 512) -> float:
    """exp(mean NLL) over the first ``max_tokens`` tokens, in non-overlapping windows."""
    ids = tokenizer(read_source(source), add_special_tokens=False, return_tensors="pt", verbose=False)["input_ids"][0][: max_tokens + 1]
    total, count = 0.0, 0
    for i in range(0, len(ids) - 1, window):
        chunk = ids[i : i + window + 1].unsqueeze(0)
        if chunk.size(1) < 2:
            break
        logits = model(input_ids=chunk[:, :-1]).logits
        total += torch.nn.functional.cross_entropy(logits[0].float(), chunk[0, 1:], reduction="sum").item()
        count += chunk.size(1) - 1
    return float(torch.exp(torch.tensor(total / max(count, 1))))
