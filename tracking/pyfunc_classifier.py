"""The code of every registered model: an MLflow pyfunc around a fine-tuned Hugging Face folder.

MLflow copies this file into each model it logs ("models from code") and runs it when the model
is loaded, by `mlflow.pyfunc.load_model` or `mlflow models serve`, so it imports nothing from
this project: only MLflow, pandas, torch and transformers. The folder it wraps is the run's
final model exactly as training saved it (the artifact `hf_model`), which is also what the
Try-inference worker loads directly.

Input: a frame with a `text` column (and `text_pair` for pair tasks), or a list of strings.
Output per text: `label`, `score` (its probability) and `probabilities` (one per label, in the
order of the model's label names); a regression model returns `value` instead.
"""

from __future__ import annotations

import mlflow
import pandas as pd
import torch
from mlflow.pyfunc import PythonModel
from transformers import AutoModelForSequenceClassification, AutoTokenizer

BATCH_SIZE = 32


class TextClassifier(PythonModel):
    """Sequence classification (or regression) with the training's max length and labels."""

    def load_context(self, context) -> None:
        folder = context.artifacts["hf_model"]
        self.model = AutoModelForSequenceClassification.from_pretrained(
            folder, use_safetensors=True, trust_remote_code=False
        ).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=False)
        config = context.model_config or {}
        self.max_length = int(config.get("max_length") or 512)

    # No type hints: MLflow would try to derive a schema from them; the signature is explicit.
    def predict(self, context, model_input, params=None):
        frame = (
            model_input
            if isinstance(model_input, pd.DataFrame)
            else pd.DataFrame({"text": list(model_input)})
        )
        texts = [str(t) for t in frame["text"]]
        pairs = [str(p) for p in frame["text_pair"]] if "text_pair" in frame.columns else None
        rows = []
        for start in range(0, len(texts), BATCH_SIZE):
            batch = self.tokenizer(
                texts[start : start + BATCH_SIZE],
                pairs[start : start + BATCH_SIZE] if pairs is not None else None,
                truncation=True,
                max_length=self.max_length,
                padding=True,
                return_tensors="pt",
            )
            with torch.inference_mode():
                rows.append(self.model(**batch).logits.float())
        logits = torch.cat(rows) if rows else torch.empty(0, self.model.config.num_labels)
        if self.model.config.problem_type == "regression":
            return pd.DataFrame({"value": logits[:, 0].tolist()})
        probabilities = logits.softmax(dim=-1)
        best = probabilities.argmax(dim=-1).tolist()
        names = self.model.config.id2label
        return pd.DataFrame(
            {
                "label": [names[i] for i in best],
                "score": [float(probabilities[row, i]) for row, i in enumerate(best)],
                "probabilities": probabilities.tolist(),
            }
        )


mlflow.models.set_model(TextClassifier())
