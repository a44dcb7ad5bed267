"""Text in: held-out text for perplexity, and the text calibration and distillation may read.

compress never imports tune: data sets are read and split by the shared layer (``enclave.records``,
``enclave.splits``), so compress, tune and ``enclave eval`` agree on which records are test records.
A source is one of two kinds:

- a data set (a JSONL or CSV file, a directory of them, or builtin:NAME from tune/datasets): one
  split of it. Calibration and distillation read the train split; held-out reading, its test split.
- a text file (.txt or any other file, or builtin:NAME of the shipped texts, ``enclave.texts``): read whole. It has no
  test split, so it is either training text or evaluation text, never both: the held-out text is
  refused as a calibration or distillation source (``compress.settings``), and any paragraph or record
  of training text that shares 13 consecutive words with it is left out (the 13-gram overlap test
  of Brown et al. 2020, "Language Models are Few-Shot Learners", appendix C).
"""

from __future__ import annotations

import functools
import re
from dataclasses import asdict, dataclass

import torch

from enclave.errors import EnclaveError
from enclave.records import Record, builtin_datasets
from enclave.splits import load_split
from enclave.texts import HELDOUT, builtin_texts, text_file

OVERLAP_WORDS = 13
_WORD = re.compile(r"\w+", re.UNICODE)
_PARAGRAPH = re.compile(r"\n\s*\n")


@dataclass
class SourceRead:
    """What one source gave to calibration or distillation; the manifest records it."""

    source: str
    split: str | None
    """The data set split read; None for a text file, read whole."""
    records: int | None
    """Records of that split used (None for a text file)."""
    dropped_overlap: int
    """Paragraphs or records left out for sharing 13 words with the held-out text."""
    tokens: int = 0


@dataclass
class TextBatches:
    """Token sequences for calibration or distillation, and where they came from."""

    ids: torch.Tensor
    """(N, T) consecutive token ids."""
    read: list[SourceRead]

    def manifest(self) -> dict:
        """What goes into the artifact's settings: each source, its split, records and tokens."""
        return {"sources": [asdict(r) for r in self.read], "tokens_used": int(self.ids.numel())}


def _records(source: str, split: str, setting: str) -> list[Record]:
    name = source.split(":", 1)[1] if source.startswith("builtin:") else None
    if name is not None and name not in builtin_datasets():
        raise EnclaveError(
            f"{setting}: no built-in text or data set {name!r}",
            fix=f"data sets: {', '.join(builtin_datasets())}; texts: {', '.join(builtin_texts())}; or a path",
        )
    return load_split(source, split, setting=setting)


def read_source(source: str, split: str = "test") -> str:
    """The text of ``source``: a text file whole, or one split of a data set.

    Args:
        source: a .txt file, a JSONL/CSV data set (file or directory), or builtin:NAME.
        split: the data set split to read; the test split by default, since this reads held-out
            text (perplexity, the report). Ignored for a text file.

    Raises:
        EnclaveError: no such file or built-in; DataError: invalid records.
    """
    path = text_file(source)
    if path is not None:
        return path.read_text(encoding="utf-8")
    return "\n".join(r.text for r in _records(source, split, "text source"))


def _grams(text: str) -> set[tuple[str, ...]]:
    words = _WORD.findall(text.lower())
    return {tuple(words[i : i + OVERLAP_WORDS]) for i in range(len(words) - OVERLAP_WORDS + 1)}


@functools.cache
def _heldout_grams() -> frozenset:
    return frozenset(_grams(read_source(HELDOUT)))


def training_text(source: str, split: str, setting: str) -> tuple[str, SourceRead]:
    """The text calibration or distillation may read from ``source``, and what it was.

    Args:
        source: a data set (only ``split`` is read) or a text file (read whole).
        split: "train" or "validation"; never the test split the report scores.
        setting: the setting that named the source, for error messages (``calibration.source``).

    Returns:
        The text (paragraphs or records sharing 13 words with the held-out text left out) and its ``SourceRead``.
    """
    if split == "test":
        raise ValueError("training text never comes from the test split")
    path = text_file(source)
    units = (
        _PARAGRAPH.split(path.read_text(encoding="utf-8"))
        if path
        else [r.text for r in _records(source, split, setting)]
    )
    heldout = _heldout_grams()
    kept = [u for u in units if heldout.isdisjoint(_grams(u))]
    text = ("\n\n" if path else "\n").join(kept)
    return text, SourceRead(source, None if path else split, None if path else len(kept), len(units) - len(kept))


def training_ids(
    tokenizer, sources: str | list[str], split: str, setting: str
) -> tuple[torch.Tensor, list[SourceRead]]:
    """Token ids of every source's training text, in order, and what each gave (tokens included).

    Raises:
        EnclaveError: a source does not exist; DataError: invalid records.
    """
    parts, read = [], []
    for source in [sources] if isinstance(sources, str) else sources:
        text, info = training_text(source, split, setting)
        ids = tokenizer(text + "\n", add_special_tokens=False, return_tensors="pt", verbose=False)["input_ids"][0]
        info.tokens = len(ids)
        parts.append(ids)
        read.append(info)
    return torch.cat(parts), read


def calibration_batches(
    tokenizer, source: str | list[str], samples: int, seq_len: int, split: str = "train"
) -> TextBatches:
    """``samples`` sequences of ``seq_len`` consecutive tokens of training text, ids shape (samples, seq_len).

    Args:
        tokenizer: the model's tokenizer.
        source: one source (see ``training_text``) or several, joined in order.
        samples: how many sequences.
        seq_len: tokens per sequence.
        split: the data set split read (text files are read whole).

    Raises:
        EnclaveError: the text is shorter than samples x seq_len tokens (says how much is needed).
    """
    ids, read = training_ids(tokenizer, source, split, "calibration.source")
    need = samples * seq_len
    if len(ids) < need:
        raise EnclaveError(
            f"calibration text {source!r} has {len(ids):,} tokens; {samples} samples x {seq_len} tokens need {need:,}",
            fix=f"give more text (of a data set only the {split} split is read), or lower calibration.samples "
            f"(at most {len(ids) // seq_len}) or calibration.seq_len",
        )
    return TextBatches(ids[:need].reshape(samples, seq_len), read)


@torch.no_grad()
def perplexity(model, tokenizer, source: str, max_tokens: int = 2048, window: int = 512) -> float:
    """Held-out perplexity of ``source`` (a data set: its test split): the shared definition
    (``enclave.evaluation.perplexity.text_perplexity``) over the first ``max_tokens`` tokens."""
    from enclave.evaluation.lm import TorchLM
    from enclave.evaluation.perplexity import text_perplexity

    ids = tokenizer(read_source(source), add_special_tokens=False, verbose=False)["input_ids"]
    return text_perplexity(TorchLM(model), ids, window, max_tokens)
