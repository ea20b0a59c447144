"""The bad-input catalogue: every case is answered within seconds by an error that
names the field and the fix, with no worker crash, no endless retry and nothing else lost.

Three levels, each tested where the input arrives:
- the edge: ExperimentRequest / InferenceRequest validation, and the CLI's exit code 2 before it
  ever connects to Temporal;
- data and models: one real experiment holding many bad configurations and one good one, on
  in-process workers; each bad one fails on its first attempt (non-retryable), the good one
  completes, and the workers then still serve predictions;
- inference through orchestration.client.predict.
Then the security checks that belong with hostile input: no remote code, no unsafe unpickling,
servers on loopback only.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from mlflow import MlflowClient
from pydantic import ValidationError
from temporalio.client import WorkflowFailureError

from harness.coherence import activity_attempts, activity_seconds
from harness.processes import settings_env
from harness.runs import HEARTBEAT_S, SHORT
from harness.temporal import training_histories, workers
from orchestration.client import experiment_result, predict, start_experiment
from orchestration.servers import free_port
from orchestration.settings import REPO_ROOT, Settings
from orchestration.types import (
    MAX_CLASSES,
    MAX_RUNS_PER_EXPERIMENT,
    ExperimentRequest,
    InferenceRequest,
    RunConfig,
)

GOOD_RUN = {"name": "a", "model": "tiny-bert"}


def experiment(*runs: dict, **fields) -> dict:
    return {"name": "bad", "runs": list(runs) or [GOOD_RUN], **fields}


def run(**fields) -> dict:
    return experiment({**GOOD_RUN, **fields})


# ---- the edge: the request itself ---------------------------------------------------------------

# (case, payload, what the error must say: the field, then the fix)
EDGE_CASES = [
    ("lr-wrong-type", run(learning_rate="fast"), ["runs.0.learning_rate", "valid number"]),
    ("lr-zero", run(learning_rate=0), ["runs.0.learning_rate", "greater than 0"]),
    ("lr-negative", run(learning_rate=-1e-3), ["runs.0.learning_rate", "greater than 0"]),
    ("epochs-zero", run(epochs=0), ["runs.0.epochs", "greater than 0"]),
    ("epochs-negative", run(epochs=-2), ["runs.0.epochs", "greater than 0"]),
    ("epochs-wrong-type", run(epochs="three"), ["runs.0.epochs", "valid number"]),
    ("batch-zero", run(batch_size=0), ["runs.0.batch_size", "greater than or equal to 1"]),
    ("batch-negative", run(batch_size=-16), ["runs.0.batch_size", "greater than or equal to 1"]),
    ("batch-fraction", run(batch_size=2.5), ["runs.0.batch_size", "valid integer"]),
    ("max-length-1", run(max_length=1), ["runs.0.max_length", "greater than or equal to 8"]),
    (
        "max-length-100000",
        run(max_length=100000),
        ["runs.0.max_length", "less than or equal to 8192"],
    ),
    ("seed-negative", run(seed=-1), ["runs.0.seed", "greater than or equal to 0"]),
    (
        "samples-zero",
        run(max_train_samples=0),
        ["runs.0.max_train_samples", "greater than or equal to 1"],
    ),
    ("unknown-field", run(learning_rat=1e-4), ["runs.0.learning_rat", "Extra inputs"]),
    ("name-traversal", run(name="../../etc"), ["runs.0.name", "use 1-48 letters"]),
    ("device-unknown", run(device="gpu"), ["runs.0.device", "auto, cpu, cuda, cuda:N, mps"]),
    (
        "precision-unknown",
        run(precision="fp8"),
        ["runs.0.precision", "'auto', 'fp32', 'bf16' or 'fp16'"],
    ),
    (
        "fp16-on-cpu",
        run(precision="fp16", device="cpu"),
        ["runs.0.precision", "fp16 needs a CUDA GPU", "use auto, bf16 or fp32"],
    ),
    (
        "duplicate-names",
        experiment(GOOD_RUN, GOOD_RUN),
        ["runs[1].name: duplicate configuration name 'a'", "give every configuration its own name"],
    ),
    (
        "1000-configurations",
        experiment(*({**GOOD_RUN, "name": f"r{i}"} for i in range(1000))),
        ["runs", f"at most {MAX_RUNS_PER_EXPERIMENT} items"],
    ),
    ("no-configurations", {"name": "bad", "runs": []}, ["runs", "at least 1 item"]),
    ("runs-wrong-type", {"name": "bad", "runs": {"a": 1}}, ["runs", "valid list"]),
    ("experiment-name-empty", experiment(name=""), ["name", "use 1-48 letters"]),
    (
        "heartbeat-too-short",
        experiment(heartbeat_timeout_s=1),
        ["heartbeat_timeout_s", "greater than or equal to 2"],
    ),
]


@pytest.mark.parametrize(
    "payload,expected", [c[1:] for c in EDGE_CASES], ids=[c[0] for c in EDGE_CASES]
)
def test_request_is_refused_at_the_edge(payload, expected):
    started = time.perf_counter()
    with pytest.raises(ValidationError) as refused:
        ExperimentRequest.model_validate(payload)
    assert time.perf_counter() - started < 2
    message = str(refused.value)
    for part in expected:
        assert part in message, message


# (case, file content, what stderr must say)
CLI_CASES = [
    ("lr-zero", json.dumps(run(learning_rate=0)), ["runs.0.learning_rate", "greater than 0"]),
    (
        "duplicate-names",
        json.dumps(experiment(GOOD_RUN, GOOD_RUN)),
        ["duplicate configuration name 'a'", "give every configuration its own name"],
    ),
    (
        "1000-configurations",
        json.dumps(experiment(*({**GOOD_RUN, "name": f"r{i}"} for i in range(1000)))),
        ["runs", f"at most {MAX_RUNS_PER_EXPERIMENT} items"],
    ),
    (
        "max-length-100000",
        json.dumps(run(max_length=100000)),
        ["runs.0.max_length", "less than or equal to 8192"],
    ),
    ("not-json", "name: bad\nruns: []\n", ["--config", "is not JSON", "ExperimentRequest"]),
    (
        "nan-learning-rate",
        json.dumps(run(learning_rate=float("nan"))),
        ["runs.0.learning_rate", "finite number"],
    ),
    (
        "nul-in-dataset",
        json.dumps(run(dataset="reviews\x00.csv")),
        ["runs.0.dataset", "control character (U+0000)"],
    ),
]


def test_cli_refuses_bad_configs_before_connecting(tmp_path):
    """Exit code 2 and a message naming the field, in seconds, all cases side by side. Nothing
    listens at TEMPORAL_ADDRESS: a CLI that tried to connect would fail differently."""
    env = {**settings_env(_nowhere(tmp_path)), "TEMPORAL_ADDRESS": f"127.0.0.1:{free_port()}"}
    procs = {}
    for case, content, _ in CLI_CASES:
        path = tmp_path / f"{case}.json"
        path.write_text(content)
        procs[case] = subprocess.Popen(
            [sys.executable, "-m", "orchestration.starter", "--config", str(path)],
            cwd=REPO_ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
    for case, _, expected in CLI_CASES:
        out, err = procs[case].communicate(timeout=60)
        assert procs[case].returncode == 2, (case, out, err)
        for part in expected:
            assert part in err, (case, err)


def _nowhere(tmp_path):
    return Settings(data_dir=tmp_path, local_roots_env=str(tmp_path))


@pytest.mark.parametrize(
    "fields,expected",
    [
        ({"texts": []}, ["texts", "at least 1 item"]),
        ({"texts": ["   "]}, ["texts[0] is empty", "enter some text"]),
        ({"texts": ["x" * 10_001]}, ["texts[0] has 10001 characters", "the limit is 10000"]),
        ({"texts": ["ok"] * 65}, ["texts", "at most 64 items"]),
        ({"texts": ["ok"], "max_length": 100000}, ["max_length", "less than or equal to 8192"]),
        ({"texts": ["ok"], "model_uri": ""}, ["model_uri", "at least 1 character"]),
    ],
    ids=["no-texts", "empty-text", "oversized-text", "too-many-texts", "max-length", "no-model"],
)
def test_inference_request_is_refused_at_the_edge(fields, expected):
    with pytest.raises(ValidationError) as refused:
        InferenceRequest.model_validate({"model_uri": "models:/x/1", **fields})
    for part in expected:
        assert part in str(refused.value), str(refused.value)


# ---- data and models: through real workflows ----------------------------------------------------


def _local_files(root: Path) -> None:
    """Bad local datasets under an allowed root."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "one_class.csv").write_text(
        "text,label\n" + "".join(f"review number {i},pos\n" for i in range(40))
    )
    (root / "empty.csv").write_text("text,label\n")
    (root / "latin1.csv").write_bytes(
        b"text,label\n"
        + "".join(f"caf\u00e9 cr\u00e8me {i},{i % 2}\n" for i in range(40)).encode("latin-1")
    )
    (root / "numbers.csv").write_text(
        "text,score,label\n" + "".join(f"review {i},{i},{i % 2}\n" for i in range(40))
    )
    (root / "array.json").write_text("[1, 2, 3]")
    (root / "no_train").mkdir(exist_ok=True)
    (root / "no_train" / "readme.md").write_text("no data here")
    (root / "unseen_eval").mkdir(exist_ok=True)
    (root / "unseen_eval" / "train.csv").write_text(
        "text,label\n" + "".join(f"review {i},{'pos' if i % 2 else 'neg'}\n" for i in range(40))
    )
    (root / "unseen_eval" / "test.csv").write_text("text,label\nso so,meh\nfine,pos\n")
    # Hostile: links out of the root (to a file whose first line is a secret), a parse error on
    # a row holding one, non-finite labels, too many classes, labels that are texts, and model
    # folders with a broken or outside config.json.
    secret = root.parent.parent / f"outside-{root.name}.csv"
    secret.write_text(f"{SECRET},label\n" + "".join(f"row {i},{i % 2}\n" for i in range(40)))
    _link(root / "link_out.csv", secret)
    (root / "linked_split").mkdir(exist_ok=True)
    _link(root / "linked_split" / "train.csv", secret)
    (root / "bad_row.csv").write_text(f"text,label\nfine,0\nok,1\n{SECRET},1,extra,cells\n")
    # A CSV's "nan" is a missing value (the row is dropped); Parquet keeps a real NaN.
    labels = [float("nan") if i == 7 else float(i % 2) for i in range(40)]
    pq.write_table(
        pa.table({"text": [f"review {i}" for i in range(40)], "label": labels}),
        root / "nan_label.parquet",
    )
    rows = [f"review {i},{'inf' if i == 7 else float(i % 2)}\n" for i in range(40)]
    (root / "inf_label.csv").write_text("text,label\n" + "".join(rows))
    (root / "many_classes.csv").write_text(
        "text,label\n" + "".join(f"review {i},class-{i}\n" for i in range(MAX_CLASSES + 1))
    )
    (root / "text_labels.csv").write_text(
        "text,label\n" + "".join(f"review {i},{'long ' * 30}{i % 2}\n" for i in range(40))
    )
    (root / "broken_model").mkdir(exist_ok=True)
    (root / "broken_model" / "config.json").write_text(f'{{"model_type": "bert", {SECRET}')
    (root / "linked_model").mkdir(exist_ok=True)
    _link(root / "linked_model" / "config.json", secret)


SECRET = "SECRET-first-line-must-never-be-echoed"


def _link(link: Path, target: Path) -> None:
    link.unlink(missing_ok=True)
    link.symlink_to(target)


# (name, fields, the activity that refuses it, what the error must say)
DATA_CASES: list[tuple[str, dict[str, Any], str, list[str]]] = [
    (
        "unknown-model",
        {"model": "bert-base-uncased"},
        "train",
        ["model: 'bert-base-uncased' is not a built-in", "HF_HUB_OFFLINE", "pick a built-in"],
    ),
    (
        "unknown-dataset",
        {"dataset": "glue"},
        "snapshot",
        ["dataset: 'glue' is not a built-in", "offline", "pick a built-in"],
    ),
    (
        "missing-text-column",
        {"text_field": "body"},
        "snapshot",
        ["text_field: column 'body' not in dataset", "set text_field to one of them"],
    ),
    (
        "missing-label-column",
        {"label_field": "stars"},
        "snapshot",
        ["label_field: column 'stars' not in dataset", "set label_field to one of them"],
    ),
    (
        "label-is-free-text",
        {"label_field": "text"},
        "snapshot",
        ["label_field: column 'text' has", "set label_field to the label column"],
    ),
    (
        "text-not-text",
        {"dataset": "{bad}/numbers.csv", "text_field": "score"},
        "snapshot",
        ["text_field: column 'score' holds", "set text_field to a text column"],
    ),
    (
        "regression-on-text",
        {"task_type": "regression"},
        "snapshot",
        ["task_type: regression needs numeric labels", "set task_type to classification"],
    ),
    (
        "single-class",
        {"dataset": "{bad}/one_class.csv"},
        "snapshot",
        ["label_field: only one distinct label", "needs at least two"],
    ),
    (
        "empty-dataset",
        {"dataset": "{bad}/empty.csv"},
        "snapshot",
        ["dataset: ", "empty.csv has no rows"],
    ),
    (
        "not-utf8",
        {"dataset": "{bad}/latin1.csv"},
        "snapshot",
        ["dataset: ", "latin1.csv is not valid UTF-8", "re-save it as UTF-8"],
    ),
    (
        "json-not-records",
        {"dataset": "{bad}/array.json"},
        "snapshot",
        ["dataset: ", "must hold JSON Lines or one array of objects"],
    ),
    (
        "folder-without-train",
        {"dataset": "{bad}/no_train"},
        "snapshot",
        ["dataset: folder", "has no train file", "name it train.csv"],
    ),
    (
        "eval-labels-unseen",
        {"dataset": "{bad}/unseen_eval"},
        "snapshot",
        ["label_field: the eval split has labels the train split lacks", "'meh'"],
    ),
    (
        "missing-file",
        {"dataset": "nope.csv"},
        "snapshot",
        ["dataset: no file or folder 'nope.csv'", "check the name"],
    ),
    (
        "dataset-traversal",
        {"dataset": "../../../../etc/passwd"},
        "snapshot",
        [
            "dataset: '../../../../etc/passwd' is outside the allowed data folders",
            "put the file under one of them",
        ],
    ),
    (
        "dataset-absolute",
        {"dataset": "/etc/passwd"},
        "snapshot",
        ["dataset: '/etc/passwd' is outside the allowed data folders"],
    ),
    (
        "model-traversal",
        {"model": "../../../../etc"},
        "train",
        [
            "model: '../../../../etc' is outside the allowed model folders",
            "put the model folder under one of them",
        ],
    ),
    (
        "model-absolute",
        {"model": "/usr/lib"},
        "train",
        ["model: '/usr/lib' is outside the allowed model folders"],
    ),
    (
        "max-length-over-model",
        {"max_length": 1024},
        "train",
        ["max_length: 1024 exceeds the model's limit of 512", "use at most 512"],
    ),
    (
        "gpu-missing",
        {"device": "cuda:99"},
        "train",
        ["device: 'cuda:99' is not available on this worker", "use auto or cpu"],
    ),
    (
        "symlink-out-of-root",
        {"dataset": "{bad}/link_out.csv"},
        "snapshot",
        ["dataset: ", "is outside the allowed data folders"],
    ),
    (
        "split-file-linked-out",
        {"dataset": "{bad}/linked_split"},
        "snapshot",
        ["dataset: train.csv in linked_split links outside the allowed data folders"],
    ),
    (
        "parse-error-quoting-a-row",
        {"dataset": "{bad}/bad_row.csv"},
        "snapshot",
        ["dataset: could not read", "Expected 2 columns, got 4", "CSV with a header row"],
    ),
    (
        "nan-label",
        {"dataset": "{bad}/nan_label.parquet", "task_type": "regression"},
        "snapshot",
        ["label_field: column 'label' holds 1 non-finite value(s)", "fix or drop those rows"],
    ),
    (
        "inf-label",
        {"dataset": "{bad}/inf_label.csv", "task_type": "regression"},
        "snapshot",
        ["label_field: column 'label' holds 1 non-finite value(s)"],
    ),
    (
        "too-many-classes",
        {"dataset": "{bad}/many_classes.csv"},
        "snapshot",
        [f"label_field: column 'label' has {MAX_CLASSES + 1} distinct values", "maximum"],
    ),
    (
        "labels-are-texts",
        {"dataset": "{bad}/text_labels.csv"},
        "snapshot",
        ["label_field: column 'label' has a value of", "set label_field to the label column"],
    ),
    (
        "broken-model-config",
        {"model": "{bad}/broken_model"},
        "train",
        ["model: ", "config.json is not a readable JSON model config", "save_pretrained"],
    ),
    (
        "model-config-linked-out",
        {"model": "{bad}/linked_model"},
        "train",
        ["model: folder", "holds links leading outside the allowed model folders"],
    ),
]


def test_bad_data_and_models_fail_fast_and_alone(settings, tmp_path):
    """One experiment, many bad configurations and one good one: each bad one fails on its
    first attempt within seconds with a message naming the field; the good one completes, its
    model answers predictions on the same workers, and every configuration has its MLflow run."""
    bad_root = settings.local_roots[0] / f"bad-{tmp_path.name}"
    _local_files(bad_root)
    cfg = replace(settings, max_concurrent_training=4)
    common = dict(SHORT, epochs=1)
    runs = [RunConfig(name="good", **common)] + [
        RunConfig(
            name=name,
            **{
                **common,
                **{
                    k: v.format(bad=bad_root.name) if isinstance(v, str) else v
                    for k, v in fields.items()
                },
            },
        )
        for name, fields, _, _ in DATA_CASES
    ]
    req = ExperimentRequest(name="bad-input", heartbeat_timeout_s=HEARTBEAT_S, runs=runs)

    async def scenario():
        async with workers(cfg) as client:
            exp_id = await start_experiment(client, req, cfg)
            result = await experiment_result(client, exp_id)
            histories, seconds = await training_histories(client, result.runs[1:])
            answer = await predict(
                client,
                InferenceRequest(
                    model_uri=result.runs[0].model_uri, texts=["a moving, gripping film"]
                ),
                cfg,
            )
            return result, histories, seconds, answer

    result, histories, seconds, answer = asyncio.run(scenario())
    good, *bad = result.runs
    assert good.status == "completed" and good.eval.accuracy is not None, good
    assert {s.label for s in answer.predictions[0]} == {"fresh", "rotten"}
    mlflow = MlflowClient(cfg.mlflow_tracking_uri)
    for r, (name, _, stage, expected) in zip(bad, DATA_CASES, strict=True):
        assert r.name == name and r.status == "failed", r
        for part in expected:
            assert part in r.error, (name, r.error)
        assert SECRET not in r.error and "Errno" not in r.error, (name, r.error)
        attempts = {a: activity_attempts(histories[name], a) for a in ("snapshot", "train")}
        assert attempts == (
            {"snapshot": [1], "train": []}
            if stage == "snapshot"
            else {"snapshot": [1], "train": [1]}
        ), (name, attempts)
        # Within seconds on the worker that took it (the time it queued for a free slot
        # behind the other configurations depends on the machine, not on the refusal).
        ran = activity_seconds(histories[name], stage)
        assert len(ran) == 1 and ran[0] < 30, (name, ran)
        tracked = mlflow.get_run(r.mlflow_run_id)
        assert tracked.info.status == "FAILED" and tracked.data.tags["error"] == r.error, name
    print(f"bad configurations: slowest end to end {max(seconds.values()):.1f} s")


def _root_message(err: BaseException) -> str:
    while (cause := getattr(err, "cause", None)) is not None:
        err = cause
    return str(err)


def test_bad_inference_targets_fail_fast_and_name_the_field(settings):
    """A model_uri outside the served folders, or unknown to MLflow, and mismatched text
    pairs: refused on the first attempt with the field named."""
    cases = [
        (
            InferenceRequest(model_uri="../../../../etc/passwd", texts=["hi"]),
            [
                "model_uri: '../../../../etc/passwd' is outside the model folders"
                " this worker serves",
                "pick a finished run's model",
            ],
        ),
        (InferenceRequest(model_uri="/etc", texts=["hi"]), ["model_uri: '/etc' is outside"]),
        (
            InferenceRequest(model_uri="models:/no-such-model/1", texts=["hi"]),
            ["model_uri: ", "no-such-model"],
        ),
        (
            InferenceRequest(model_uri="models:/no-such-model@champion", texts=["hi"]),
            ["model_uri: ", "no-such-model"],
        ),
        (
            InferenceRequest(
                model_uri=str(settings.data_dir / "checkpoints"), texts=["a", "b"], text_pairs=["x"]
            ),
            ["text_pairs: 1 pairs for 2 texts", "give one pair per text or none"],
        ),
    ]

    async def scenario():
        async with workers(settings, roles=("eval",)) as client:
            outcomes = []
            for req, _ in cases:
                started = time.monotonic()
                with pytest.raises(WorkflowFailureError) as failed:
                    await predict(client, req, settings)
                outcomes.append((_root_message(failed.value), time.monotonic() - started))
            return outcomes

    for (req, expected), (message, seconds) in zip(cases, asyncio.run(scenario()), strict=True):
        for part in expected:
            assert part in message, (req.model_uri, message)
        assert seconds < 15, (req.model_uri, seconds)
