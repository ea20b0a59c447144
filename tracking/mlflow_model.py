"""A trained model folder as an MLflow Model: what every registered version is.

Measured on this machine (tiny-bert, 8.7 MB folder), the two ways MLflow offers:
- the transformers flavor (`mlflow.transformers.log_model` of a text-classification pipeline)
  splits the folder into `model/` and `components/tokenizer/`, returns only the top label, and
  does not truncate to the training length unless told;
- a pyfunc around the folder (`tracking/pyfunc_classifier.py`, "models from code") keeps the
  folder byte for byte under `artifacts/hf_model/`, so the Try-inference worker loads it as
  before (no second copy, no second loader), and returns every label's probability.
Both load with `mlflow.pyfunc.load_model` and serve with `mlflow models serve`; the pyfunc is
what we log. It adds a few kilobytes (MLmodel, requirements, the code file, input example).

The requirements are the installed versions of torch and transformers, read at run time (a
local build tag like `+cpu` left out so the pin resolves on any index): with requirements
inferred, MLflow imports torchvision, which is not installed.
"""

from __future__ import annotations

import json
import os
import shutil
from importlib.metadata import version
from pathlib import Path

import pandas as pd
from mlflow.models import ModelSignature
from mlflow.types.schema import Array, ColSpec, Schema

# The artifact name of the Hugging Face folder inside the MLflow model, and where it lands.
HF_ARTIFACT = "hf_model"
CODE_FILE = Path(__file__).with_name("pyfunc_classifier.py")
EXAMPLE_TEXT = "An example text to classify."
# Hugging Face's "no limit known" value of model_max_length is far above any real one.
_UNSET_MAX_LENGTH = 1_000_000


def hf_folder(mlflow_model_dir: Path) -> Path:
    """The Hugging Face folder inside a downloaded MLflow model (or the folder itself, for a
    version registered before models were MLflow Models)."""
    inner = mlflow_model_dir / "artifacts" / HF_ARTIFACT
    wrapped = (mlflow_model_dir / "MLmodel").is_file() and inner.is_dir()
    return inner if wrapped else mlflow_model_dir


def training_max_length(model_dir: str, configured: int | None = None) -> int | None:
    """The longest input the model was trained on: the tokenizer's `model_max_length` as the
    final folder records it, capped by the configuration's `max_length` when known."""
    try:
        config = json.loads((Path(model_dir) / "tokenizer_config.json").read_text())
        recorded = int(config.get("model_max_length") or _UNSET_MAX_LENGTH)
    except (OSError, ValueError, TypeError):
        recorded = _UNSET_MAX_LENGTH
    found = [n for n in (recorded, configured) if n and n < _UNSET_MAX_LENGTH]
    return min(found) if found else None


def label_names(model_dir: str) -> list[str]:
    """The labels in class-index order ([] for a regression model)."""
    config = json.loads((Path(model_dir) / "config.json").read_text())
    if config.get("problem_type") == "regression":
        return []
    id2label = config.get("id2label") or {}
    return [id2label[k] for k in sorted(id2label, key=int)]


def pip_requirements() -> list[str]:
    return [f"{package}=={version(package).split('+')[0]}" for package in ("torch", "transformers")]


def signature(text_pair: bool, regression: bool) -> ModelSignature:
    inputs = [ColSpec("string", "text")]
    if text_pair:
        inputs.append(ColSpec("string", "text_pair"))
    outputs = (
        [ColSpec("double", "value")]
        if regression
        else [
            ColSpec("string", "label"),
            ColSpec("double", "score"),
            ColSpec(Array("double"), "probabilities"),
        ]
    )
    return ModelSignature(inputs=Schema(inputs), outputs=Schema(outputs))  # type: ignore[arg-type]


def save_pyfunc(
    model_dir: str, dest: str, max_length: int | None = None, text_pair: bool = False
) -> None:
    """Write the MLflow Model of `model_dir` into the (new) folder `dest`.

    `max_length`: the configuration's, used when the folder records none smaller. The label
    names, max length and task are in the MLmodel's metadata (shown on MLflow's model pages)
    and the model config (what the pyfunc truncates to).
    """
    import mlflow.pyfunc

    labels = label_names(model_dir)
    length = training_max_length(model_dir, max_length)
    example = pd.DataFrame({"text": [EXAMPLE_TEXT]})
    if text_pair:
        example["text_pair"] = [EXAMPLE_TEXT]
    staging = Path(dest).with_name(Path(dest).name + ".staging")
    # The artifact keeps its folder's name inside the model: stage it under a fixed one.
    # Hard links when the file system allows: no copy of the weights.
    shutil.copytree(model_dir, staging / HF_ARTIFACT, copy_function=_link_or_copy)
    try:
        mlflow.pyfunc.save_model(
            dest,
            python_model=str(CODE_FILE),
            artifacts={HF_ARTIFACT: str(staging / HF_ARTIFACT)},
            model_config={"max_length": length},
            signature=signature(text_pair, regression=not labels),
            input_example=example,
            pip_requirements=pip_requirements(),
            metadata={
                "task": "regression" if not labels else "classification",
                "label_names": labels,
                "max_length": length,
                "text_pair": text_pair,
            },
        )
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)
