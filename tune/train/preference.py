"""Preference tuning from rated pairs: DPO with TRL's DPOTrainer (TRL's loss and trainer, not a
hand-written one) on the adapter being tuned.

The model comes in as a PEFT model (the adapter after the usual training, or the one continued
from): TRL keeps a frozen copy of it as the reference ("ref") and trains the rest; the copy is
dropped before the adapter is written. Pairs are TRL's conversational form (the prompt with the
recipe's system prompt, the chosen and rejected answers), templated by the base's chat template.
One process only; nothing leaves the machine (no trackers, telemetry off).
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

from enclave.errors import EnclaveError
from tune.config import TuneConfig

log = logging.getLogger(__name__)


def pairs(cfg: TuneConfig, records) -> list[dict]:
    """TRL's conversational preference rows of the preference records."""
    system = [{"role": "system", "content": cfg.data.system_prompt}] if cfg.data.system_prompt else []
    return [
        {"prompt": system + r.messages[:-1], "chosen": r.messages[-1:], "rejected": list(r.rejected)}
        for r in records
        if r.rejected
    ]


def dpo(cfg: TuneConfig, model, tokenizer, rows: list[dict], work: Path, world: int = 1) -> dict:
    """Train ``model`` (a PEFT model) with DPO on ``rows``; returns the metrics for the manifest.

    Raises:
        EnclaveError: no pairs, or several processes.
    """
    if not rows:
        raise EnclaveError(
            "preference.method=dpo: the training split has no preference records",
            fix="add records with prompt, chosen and rejected (`enclave feedback export` writes them), "
            "or set preference.method=none",
        )
    if world > 1:
        raise EnclaveError("preference tuning runs in one process", fix="run it without torchrun")
    for var in ("HF_HUB_DISABLE_TELEMETRY", "DO_NOT_TRACK", "WANDB_DISABLED"):
        os.environ.setdefault(var, "1")
    import datasets
    import transformers
    from trl import DPOConfig, DPOTrainer

    datasets.disable_progress_bars()
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
    p = cfg.preference
    args = DPOConfig(
        output_dir=str(work / "dpo"),
        beta=p.beta,
        loss_type="sigmoid",
        max_length=cfg.data.max_length,
        per_device_train_batch_size=p.batch_size,
        max_steps=p.steps,
        learning_rate=p.lr,
        lr_scheduler_type="constant",
        bf16=False,
        activation_checkpointing=False,
        use_cpu=True,
        report_to="none",
        disable_tqdm=True,
        logging_steps=1,
        save_strategy="no",
        dataloader_num_workers=0,
        seed=cfg.train.seed,
    )
    history: list[dict] = []

    class Progress(transformers.TrainerCallback):
        def __init__(self) -> None:
            from tqdm import tqdm

            self.bar = tqdm(total=p.steps, desc="dpo", unit="step", dynamic_ncols=True)

        def on_log(self, _args, state, _control, logs=None, **_kw):
            if logs and "loss" in logs:
                history.append({"step": state.global_step, **{k: float(v) for k, v in logs.items()}})
                self.bar.n = state.global_step
                self.bar.set_postfix(loss=f"{logs['loss']:.3f}", acc=f"{logs.get('rewards/accuracies', 0):.2f}")
                self.bar.refresh()

    progress = Progress()
    trainer = DPOTrainer(
        model=model,
        args=args,
        train_dataset=datasets.Dataset.from_list(rows),
        processing_class=tokenizer,
        callbacks=[progress],
    )
    trainer.remove_callback(transformers.PrinterCallback)
    trainer.train()
    progress.bar.close()
    if "ref" in getattr(model, "peft_config", {}):
        model.delete_adapter("ref")  # TRL's frozen reference copy: not part of the adapter
    model.set_adapter("default")
    last = history[-1] if history else {}
    return {
        "pairs": len(rows),
        "steps": p.steps,
        "beta": p.beta,
        "first_loss": history[0]["loss"] if history else None,
        "final_loss": last.get("loss"),
        "final_reward_accuracy": last.get("rewards/accuracies"),
        "final_reward_margin": last.get("rewards/margins"),
    }
