"""GPTQModel behind one function: quantize a checkpoint directory into a GPTQ-format one.

GPTQ: Frantar et al., "GPTQ: Accurate Post-Training Quantization for Generative Pre-trained
Transformers" (ICLR 2023, arXiv:2210.17323). GPTQModel (github.com/ModelCloud/GPTQModel) is the
maintained successor of AutoGPTQ and quantizes on CPU; its checkpoints carry
``quantization_config`` (``quant_method: gptq``) that transformers, GPTQModel and vLLM load.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import sys
from pathlib import Path

from compress.quantize.config import QuantizeSettings
from enclave.deps import require, require_gptqmodel
from enclave.log import quiet

log = logging.getLogger(__name__)
# Keys GPTQModel writes into the checkpoint that describe the quantizing machine, not the model.
_MACHINE_KEYS = ("offload_to_disk_path", "offload_to_disk")


def gptqmodel():
    """Import GPTQModel, its per-layer tables quieted."""
    gptqmodel = require_gptqmodel("the quantize step")
    quiet("logbar")  # GPTQModel's logger is set to INFO on import and prints a table per layer
    return gptqmodel


def quantize_config(settings: QuantizeSettings, scratch: Path):
    """The GPTQModel config for these settings (``scratch``: where it may offload layers)."""
    gm = gptqmodel()
    common = dict(
        bits=settings.bits, group_size=settings.group_size, sym=settings.sym, offload_to_disk_path=str(scratch)
    )
    if settings.method == "rtn":
        from gptqmodel.quantization.config import RTNConfig

        return RTNConfig(**common)
    return gm.QuantizeConfig(
        **common,
        desc_act=settings.act_order,
        act_group_aware=settings.group_aware and not settings.act_order,
        damp_percent=settings.damping,
        mse=settings.clip_search,
    )


def quantize(
    source: Path, settings: QuantizeSettings, calibration: list[list[int]] | None, out: Path, scratch: Path
) -> dict:
    """Quantize the checkpoint at ``source`` into ``out`` (an empty directory); return per-layer losses.

    The model is loaded in fp32 (GPTQModel's CPU default is bf16, which costs accuracy here).
    """
    torch = require("torch", "torch")
    gm = gptqmodel()
    source, out, scratch = source.resolve(), out.resolve(), scratch.resolve()
    # GPTQModel writes per-module logs to ./logs: keep them in the scratch directory, not the user's.
    with contextlib.chdir(scratch), _progress_on_terminals_only(scratch / "gptqmodel.out"):
        model = gm.GPTQModel.load(str(source), quantize_config(settings, scratch), device="cpu", dtype=torch.float32)
        data = (
            None
            if calibration is None
            else [{"input_ids": ids, "attention_mask": [1] * len(ids)} for ids in calibration]
        )
        model.quantize(data, batch_size=settings.batch_size)
        model.save(str(out))
    _clean(source, out)
    return _losses(out / "quant_log.csv")


@contextlib.contextmanager
def _progress_on_terminals_only(capture: Path):
    """GPTQModel redraws progress bars in place; into a log file or a pipe they become megabytes of
    text. Without a terminal its output goes to ``capture`` (shown if it fails) and a heartbeat
    line is logged instead."""
    if sys.stdout.isatty():
        yield
        return
    log.info("GPTQModel is quantizing layer by layer (its progress bars show on a terminal; a few minutes on 2 cores)")
    with open(capture, "w", encoding="utf-8") as fh, contextlib.redirect_stdout(fh), contextlib.redirect_stderr(fh):
        try:
            yield
        except Exception:
            fh.flush()
            tail = capture.read_text(encoding="utf-8", errors="replace")[-2000:]
            log.error("GPTQModel output before the failure:\n%s", tail)
            raise


def _clean(source: Path, out: Path) -> None:
    """Keep the source's generation settings (GPTQModel rewrites them) and drop machine-local paths."""
    if (source / "generation_config.json").is_file():
        shutil.copyfile(source / "generation_config.json", out / "generation_config.json")
    for name, key in (("config.json", "quantization_config"), ("quantize_config.json", None)):
        path = out / name
        if not path.is_file():
            continue
        data = json.loads(path.read_text())
        qc = data.get(key, {}) if key else data
        for k in _MACHINE_KEYS:
            qc.get("meta", {}).pop(k, None)
            qc.pop(k, None)
        path.write_text(json.dumps(data, indent=2) + "\n")


def _losses(log_csv: Path) -> dict:
    """{"LAYER.MODULE": loss} from GPTQModel's quant_log.csv (empty for rtn)."""
    if not log_csv.is_file():
        return {}
    lines = log_csv.read_text().splitlines()
    header = lines[0].split(",") if lines else []
    if not {"layer", "module", "loss"} <= set(header):
        return {}
    rows = [dict(zip(header, line.split(","))) for line in lines[1:] if line]
    out = {}
    for r in rows:
        try:
            out[f"{r['layer']}.{r['module']}"] = float(r["loss"])
        except ValueError:
            continue
    return out
