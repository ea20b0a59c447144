"""Evaluate a trained model folder on a snapshot's eval split: the verdict on one configuration.

Unlike the capped epoch-end evaluation inside training, this scores every eval row, so configs
trained on the same snapshot are compared on exactly the same rows. Next to the metrics go the
baseline they must beat (the eval split's majority-class share) and whether the model collapsed
(one class predicted for every row: an accuracy near the baseline that means nothing was learned).
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.metrics import confusion_matrix, f1_score, precision_score, recall_score

from orchestration.ml.batching import by_length
from orchestration.ml.models import load_trained, resolve_device
from orchestration.ml.training import EVAL_BATCH_SIZE, read_snapshot
from orchestration.types import EvalMetrics


def trained_max_length(model, tokenizer) -> int:
    """The tokens per text the model was trained with: training records it in the tokenizer
    (`model_max_length`); never more than the model's positions (older folders record no
    length, and some tokenizers say "unlimited")."""
    limit = getattr(model.config, "max_position_embeddings", None) or tokenizer.model_max_length
    return min(tokenizer.model_max_length, limit)


@torch.inference_mode()
def predict_logits(
    model,
    tokenizer,
    texts: list[str],
    pairs: list[str] | None,
    max_length: int | None,
    batch_size: int,
) -> np.ndarray:
    """Logits for every text, in the order given. Rows are batched shortest first, each batch
    padded to its longest row, so little is padding; `max_length` None: the trained length."""
    if not texts:
        return np.zeros((0, model.config.num_labels))
    device = next(model.parameters()).device
    length = max_length or trained_max_length(model, tokenizer)
    features = tokenizer(texts, pairs, truncation=True, max_length=length)
    rows = [{key: values[i] for key, values in features.items()} for i in range(len(texts))]
    order = by_length([len(row["input_ids"]) for row in rows])
    logits = np.zeros((len(rows), model.config.num_labels), dtype=np.float32)
    for start in range(0, len(rows), batch_size):
        chosen = order[start : start + batch_size]
        batch = tokenizer.pad([rows[i] for i in chosen], return_tensors="pt").to(device)
        logits[chosen] = model(**batch).logits.float().cpu().numpy()
    return logits


def evaluate(
    model_dir: str,
    snapshot_path: str,
    max_length: int | None = None,
    batch_size: int = EVAL_BATCH_SIZE,
    device: str = "auto",
) -> EvalMetrics:
    """Score `model_dir` on the snapshot's eval split (classification or regression metrics);
    `max_length` None: the length the model was trained with."""
    model, tokenizer = load_trained(model_dir, resolve_device(device))
    snapshot, _train, rows = read_snapshot(snapshot_path)
    pairs = rows.get("text_pair")
    logits = predict_logits(
        model, tokenizer, list(rows["text"]), list(pairs) if pairs else None, max_length, batch_size
    )
    if snapshot.schema_.task_type == "regression":
        errors = logits[:, 0] - np.asarray(rows["label"], dtype=np.float64)
        mse = float(np.mean(errors**2))
        return EvalMetrics(mse=mse, loss=mse, num_samples=len(errors))

    labels = np.asarray(rows["label"], dtype=np.int64)
    id2label = model.config.id2label
    assert id2label is not None  # a sequence classifier's config always names its labels
    # Label ids in order (the config reads its keys back as ints; sort numerically regardless).
    names = [label for _, label in sorted(id2label.items(), key=lambda item: int(item[0]))]
    classes = list(range(len(names)))
    loss = torch.nn.functional.cross_entropy(torch.from_numpy(logits), torch.from_numpy(labels))
    predicted = logits.argmax(axis=-1)
    # What a model that learned nothing but the label balance scores: always the commonest label.
    majority = float(np.bincount(labels, minlength=len(classes)).max() / len(labels))
    macro = {"labels": classes, "average": "macro", "zero_division": 0}
    return EvalMetrics(
        accuracy=float(np.mean(predicted == labels)),
        macro_f1=float(f1_score(labels, predicted, **macro)),
        precision=float(precision_score(labels, predicted, **macro)),
        recall=float(recall_score(labels, predicted, **macro)),
        loss=float(loss),
        confusion_matrix=confusion_matrix(labels, predicted, labels=classes).tolist(),
        label_names=names,
        num_samples=len(labels),
        majority_baseline=majority,
        collapsed=len(labels) > 1 and len(np.unique(predicted)) == 1,
    )
