"""Tuning speed: Enclave's training loop against a plain PEFT + transformers ``Trainer`` loop on
the same model, data and settings (BENCHMARKS.md, "Tuning speed").

Both sides: SmolLM2-135M-Instruct in fp32, the demo recipe's LoRA (r 16, alpha 32, dropout
0.05, all seven projections), its tokenized training split (answer-only labels), batch 16,
AdamW at 2e-3 with cosine decay and 5 warm-up steps, length-grouped batches, the same number of
optimizer steps, 2 threads. Throughput counts the examples' real (unpadded) tokens over the time
spent in optimizer steps; the mean answer-token loss over the run shows both learn the same way;
peak memory is each side's own process (one subprocess each).

Run: python -m tests.bench.tune_speed [--steps 16] [--out bench-results]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.bench.compress_quality import save
from tests.bench.workload import peak_rss_mb

RECIPE = Path(__file__).resolve().parents[2] / "tune" / "recipes" / "clinical_legal.yaml"


def setup(steps: int):
    import torch

    from enclave.config import load_config
    from tune.config import TuneConfig
    from tune.data.prepare import prepare
    from tune.train.model import load_base

    torch.set_num_threads(2)
    cfg = load_config(
        TuneConfig,
        RECIPE,
        [
            f"train.max_steps={steps}",
            f"train.eval_every={steps}",
            f"train.checkpoint_every={steps}",
            "train.patience=null",
        ],
    )
    _, model, tokenizer = load_base(cfg.base_model)
    data = prepare(cfg.data, tokenizer, model.config.max_position_embeddings)
    torch.manual_seed(cfg.train.seed)
    return cfg, model, tokenizer, data.examples["train"], data.examples["validation"]


def enclave_side(steps: int) -> dict:
    from tune.train import distributed
    from tune.train.loop import train
    from tune.train.model import apply_adapter

    cfg, model, tokenizer, train_set, val_set = setup(steps)
    model = apply_adapter(model, cfg.lora)
    with tempfile.TemporaryDirectory() as tmp:
        result = train(model, train_set, val_set, tokenizer.pad_token_id, cfg.train, Path(tmp), distributed.Ranks())
    return {
        "steps": result.steps,
        "tokens_per_second": result.tokens_per_second,
        "seconds": result.seconds,
        "mean_loss": sum(r["loss"] for r in result.history) / len(result.history),
        "peak_rss_mb": peak_rss_mb(),
    }


def trainer_side(steps: int) -> dict:
    import peft
    import torch
    import transformers
    from transformers import DataCollatorForSeq2Seq, Trainer, TrainerCallback, TrainingArguments

    cfg, model, tokenizer, train_set, _ = setup(steps)
    lora = cfg.lora
    model = peft.get_peft_model(
        model,
        peft.LoraConfig(
            r=lora.r,
            lora_alpha=lora.alpha,
            lora_dropout=lora.dropout,
            target_modules=list(lora.target_modules),
            task_type="CAUSAL_LM",
        ),
    )
    rows = [{"input_ids": e.input_ids, "labels": e.labels} for e in train_set]

    class Clock(TrainerCallback):
        seconds, started = 0.0, 0.0

        def on_step_begin(self, args, state, control, **kw):
            Clock.started = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            Clock.seconds += time.perf_counter() - Clock.started

    tokens = {"n": 0}
    collator = DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100)

    def collate(features):
        tokens["n"] += sum(len(f["input_ids"]) for f in features)
        return collator(features)

    t = cfg.train
    with tempfile.TemporaryDirectory() as tmp:
        args = TrainingArguments(
            output_dir=tmp,
            per_device_train_batch_size=t.batch_size,
            max_steps=steps,
            learning_rate=t.lr,
            lr_scheduler_type="cosine",
            warmup_steps=t.warmup_steps,
            optim="adamw_torch",
            weight_decay=t.weight_decay,
            train_sampling_strategy="group_by_length",
            report_to=[],
            save_strategy="no",
            logging_steps=steps,
            dataloader_num_workers=0,
            seed=t.seed,
            use_cpu=True,
            disable_tqdm=True,
            remove_unused_columns=False,
        )
        trainer = Trainer(model=model, args=args, train_dataset=rows, data_collator=collate, callbacks=[Clock()])
        out = trainer.train()
    return {
        "steps": steps,
        "tokens_per_second": tokens["n"] / Clock.seconds,
        "seconds": Clock.seconds,
        "mean_loss": out.training_loss,
        "peak_rss_mb": peak_rss_mb(),
        "versions": f"transformers {transformers.__version__}, peft {peft.__version__}, torch {torch.__version__}",
    }


SIDES = {"enclave": enclave_side, "trainer": trainer_side}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--out", type=Path, default=Path("bench-results"))
    parser.add_argument("--side", choices=SIDES, help=argparse.SUPPRESS)  # one side, in its own process
    args = parser.parse_args()
    if args.side:
        print(json.dumps(SIDES[args.side](args.steps)))
        return
    results = {}
    for side in SIDES:
        print(f"tuning bench: {side} ({args.steps} steps)", flush=True)
        done = subprocess.run(
            [sys.executable, "-m", "tests.bench.tune_speed", "--side", side, "--steps", str(args.steps)],
            check=True,
            capture_output=True,
            text=True,
        )
        results[side] = json.loads(done.stdout.strip().splitlines()[-1])
    ratio = results["enclave"]["tokens_per_second"] / results["trainer"]["tokens_per_second"]
    save(
        args.out,
        "tune_speed",
        {
            "recipe": str(RECIPE.name),
            "steps": args.steps,
            "sides": results,
            "bar": {"value": ratio, "threshold": 1.0, "met": ratio >= 1.0},
        },
    )
    for side, r in results.items():
        print(
            f"{side:8} {r['tokens_per_second']:7.1f} tokens/s  "
            f"peak {r['peak_rss_mb'] / 1024:.2f} GB  mean loss {r['mean_loss']:.3f}"
        )
    print(f"Enclave / Trainer: {ratio:.2f}x (bar >= 1.0): {'met' if ratio >= 1.0 else 'MISSED'}")


if __name__ == "__main__":
    main()
