"""Hugging Face checkpoint directories: what must be there, and what they hold.

Reads only JSON and safetensors headers, so it works without torch (a serving machine).
"""

from __future__ import annotations

import json
import struct
from dataclasses import asdict, dataclass
from pathlib import Path

from enclave.errors import EnclaveError

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")
# Files copied into the store when importing a checkpoint; anything else (pickles,
# Python files for trust_remote_code, READMEs) is left behind.
KEEP_FILES = (
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
    "model.safetensors.index.json",
)
_BYTES_PER_DTYPE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}


@dataclass(frozen=True)
class CheckpointInfo:
    """What `enclave models show` prints about a checkpoint."""

    architecture: str
    model_type: str
    parameters: int
    dtype: str
    size_bytes: int
    context_length: int | None
    layers: int | None
    hidden_size: int | None
    vocab_size: int | None

    def to_dict(self) -> dict:
        """The fields as a plain dict, for JSON output."""
        return asdict(self)


def safetensors_header(path: Path) -> dict:
    """The JSON header of a safetensors file (tensor names, dtypes, shapes)."""
    with open(path, "rb") as fh:
        (length,) = struct.unpack("<Q", fh.read(8))
        if length > 100 << 20:
            raise EnclaveError(f"{path}: safetensors header of {length} bytes is implausible (corrupt file)")
        return json.loads(fh.read(length))


def quantization_config(root: Path) -> dict:
    """The checkpoint's ``quantization_config`` (GPTQ and the like), or {} for plain weights."""
    config = Path(root) / "config.json"
    return (json.loads(config.read_text()).get("quantization_config") or {}) if config.is_file() else {}


def weight_files(root: Path) -> list[Path]:
    """The checkpoint's ``*.safetensors`` files directly under ``root``, sorted by path."""
    return sorted(Path(root).glob("*.safetensors"))


def check_checkpoint(root: Path) -> None:
    """Refuse a directory that is not a loadable HF checkpoint, listing what is missing.

    Raises:
        EnclaveError: missing config, safetensors weights or tokenizer; or pickle-only weights.
    """
    root = Path(root)
    if not root.is_dir():
        raise EnclaveError(f"{root} is not a directory", fix="pass a checkpoint directory or a .gguf file")
    missing = []
    if not (root / "config.json").is_file():
        missing.append("config.json (the model configuration)")
    if not weight_files(root):
        pickles = [p.name for p in root.iterdir() if p.suffix in PICKLE_SUFFIXES]
        if pickles:
            raise EnclaveError(
                f"{root} holds only pickle weights ({', '.join(pickles)}); Enclave never unpickles files",
                fix="convert them to safetensors on a trusted machine "
                "(model.save_pretrained(dir, safe_serialization=True))",
            )
        missing.append("*.safetensors (the weights)")
    if not any((root / name).is_file() for name in TOKENIZER_FILES):
        missing.append("tokenizer.json or tokenizer.model (the tokenizer)")
    if missing:
        raise EnclaveError(
            f"{root} is not a model checkpoint; missing: {'; '.join(missing)}",
            fix="point at a Hugging Face checkpoint directory (config.json, *.safetensors, tokenizer.json) "
            "or a .gguf file",
        )


def read_config(root: Path) -> dict:
    """The checkpoint's ``config.json`` as a dict.

    Raises:
        EnclaveError: the file is missing, unreadable or not valid JSON.
    """
    try:
        return json.loads((Path(root) / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise EnclaveError(f"{root}/config.json cannot be read: {exc}") from None


def check_supported(config: dict, where: str) -> str:
    """Return the model type, or refuse one Enclave does not support, listing the supported."""
    model_type = config.get("model_type", "")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise EnclaveError(
            f"{where}: model_type {model_type!r} is not supported",
            fix=f"supported architectures: {', '.join(SUPPORTED_MODEL_TYPES)}",
        )
    return model_type


def inspect(root: Path) -> CheckpointInfo:
    """Architecture, parameter count, dtype and size of a checkpoint, from headers only."""
    root = Path(root)
    config = read_config(root)
    params, dtypes = 0, {}
    for path in weight_files(root):
        for name, meta in safetensors_header(path).items():
            if name == "__metadata__":
                continue
            n = 1
            for dim in meta["shape"]:
                n *= dim
            params += n
            dtypes[meta["dtype"]] = dtypes.get(meta["dtype"], 0) + n
    text = config.get("text_config", config)
    return CheckpointInfo(
        architecture=(config.get("architectures") or ["?"])[0],
        model_type=config.get("model_type", "?"),
        parameters=params,
        dtype=max(dtypes, key=dtypes.get).lower() if dtypes else "?",
        size_bytes=sum(p.stat().st_size for p in root.rglob("*") if p.is_file()),
        context_length=text.get("max_position_embeddings"),
        layers=text.get("num_hidden_layers"),
        hidden_size=text.get("hidden_size"),
        vocab_size=text.get("vocab_size"),
    )
