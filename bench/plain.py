"""The baselines: the same training as a plain Hugging Face Trainer script.

No Temporal, no MLflow, no checkpoints, no evaluation during training: read the snapshot's rows,
tokenize, train with the hyper-parameters the product uses (orchestration.ml.training.train),
evaluate once on the eval split, save the model. Two scripts, as one would write them by hand:

- the default (overhead): what the product does, with stock Trainer means: the precision the
  product resolves `precision` to on this machine, dynamic padding, Hugging Face's own
  length-grouped sampler. The product's cost is measured against it, at the same precision.
- `--naive` (speed): the script most tutorials show: fp32, every row padded to `max_length`,
  batches drawn at random. The product's default path is measured against it.

    python -m bench.plain --snapshot DIR --config RUNCONFIG.json --out DIR --probe FILE [--naive]

Prints one JSON object with the time at the end of each phase (imports, model load, tokenize,
Trainer set-up and training, final evaluation, save). The training phase proper is timed by the
probe, the same way as in the product.
"""

import time

STARTED = time.time()  # before the heavy imports: a script pays for them on every run

import argparse
import json
import math
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from transformers import DataCollatorWithPadding, TrainingArguments

from bench.probe import ProbedTrainer, enable
from orchestration.ml.models import load_for_training, resolve_device
from orchestration.ml.precision import resolve_precision
from orchestration.types import RunConfig, Snapshot


def _rows(tokenizer, path: Path, max_length: int, pad_to_max: bool) -> list[dict]:
    table = pq.read_table(path).to_pydict()
    padding = "max_length" if pad_to_max else False
    features = tokenizer(table["text"], truncation=True, max_length=max_length, padding=padding)
    return [
        {**{k: v[i] for k, v in features.items()}, "labels": int(label)}
        for i, label in enumerate(table["label"])
    ]


def _accuracy(prediction) -> dict[str, float]:
    return {"accuracy": float(np.mean(prediction.predictions.argmax(-1) == prediction.label_ids))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--snapshot", required=True)
    parser.add_argument("--config", required=True, help="a RunConfig as JSON")
    parser.add_argument("--out", required=True)
    parser.add_argument("--probe", required=True, help="JSON-lines file for step timings")
    parser.add_argument("--naive", action="store_true", help="fp32, padded to max_length")
    args = parser.parse_args()
    marks = {"imports": time.time()}
    cfg = RunConfig.model_validate_json(Path(args.config).read_text())
    folder = Path(args.snapshot)
    snapshot = Snapshot.model_validate_json((folder / "snapshot.json").read_text())
    # The product's loader, so both sides train the same weights and the same seeded head;
    # underneath it is a plain from_pretrained.
    model, tokenizer, _ = load_for_training(cfg, snapshot.schema_)
    marks["load"] = time.time()
    train_set = _rows(tokenizer, folder / "train.parquet", cfg.max_length, args.naive)
    eval_set = _rows(tokenizer, folder / "eval.parquet", cfg.max_length, args.naive)
    device = resolve_device(cfg.device)
    precision = "fp32" if args.naive else resolve_precision(cfg.precision, device).precision
    marks["tokenize"] = time.time()

    batches = math.ceil(len(train_set) / cfg.batch_size)
    total_steps = cfg.max_steps or math.ceil(
        math.ceil(batches / cfg.gradient_accumulation_steps) * cfg.epochs
    )
    enable(args.probe)
    trainer = ProbedTrainer(
        model=model,
        args=TrainingArguments(
            output_dir=args.out,
            use_cpu=cfg.device == "cpu",
            per_device_train_batch_size=cfg.batch_size,
            per_device_eval_batch_size=cfg.batch_size,
            gradient_accumulation_steps=cfg.gradient_accumulation_steps,
            learning_rate=cfg.learning_rate,
            lr_scheduler_type=cfg.lr_scheduler_type,
            num_train_epochs=cfg.epochs,
            max_steps=cfg.max_steps or -1,
            warmup_steps=cfg.warmup_ratio,
            weight_decay=cfg.weight_decay,
            seed=cfg.seed,
            data_seed=cfg.data_seed,
            save_strategy="no",
            eval_strategy="no",
            logging_steps=max(1, min(50, total_steps // 100)),
            report_to=[],
            disable_tqdm=True,
            dataloader_num_workers=0,
            bf16=precision == "bf16",
            fp16=precision == "fp16",
            train_sampling_strategy="random" if args.naive else "group_by_length",
        ),
        train_dataset=train_set,
        eval_dataset=eval_set,
        data_collator=DataCollatorWithPadding(tokenizer),
        processing_class=tokenizer,
        compute_metrics=_accuracy,
    )
    trainer.train()
    marks["train"] = time.time()
    metrics = trainer.evaluate()
    marks["evaluate"] = time.time()
    trainer.save_model(str(Path(args.out) / "final"))
    marks["save"] = time.time()

    print(
        json.dumps(
            {
                "started": STARTED,
                "marks": marks,  # absolute times (time.time()) at the end of each phase
                "train_samples": len(train_set),
                "eval_samples": len(eval_set),
                "steps": trainer.state.global_step,
                "eval_accuracy": metrics.get("eval_accuracy"),
                "precision": precision,
            }
        )
    )


if __name__ == "__main__":
    main()
