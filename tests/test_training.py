"""Training, checkpoints, stop and resume, evaluation and inference, with a real tiny BERT.

The data is a synthetic but learnable sentiment task (harness.synthetic), written in the snapshot
format by the test itself, so these tests depend only on the format, not on the snapshot builder.
"""

from __future__ import annotations

import json
import shutil
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainingArguments

from harness.synthetic import LABELS, NEGATIVE, POSITIVE, config, write_snapshot
from orchestration.ml.batching import LengthGroupedSampler
from orchestration.ml.checkpoints import CheckpointStore
from orchestration.ml.errors import ConfigError
from orchestration.ml.evaluation import evaluate, predict_logits
from orchestration.ml.inference import Predictor
from orchestration.ml.models import load_trained
from orchestration.ml.precision import resolve_precision
from orchestration.ml.training import TrainingHooks, TrainingStopped, train
from orchestration.types import CheckpointInfo, InferenceRequest, TrainingProgress


@dataclass
class Recorder:
    """Everything the hooks saw, plus whether each reported checkpoint was complete by then."""

    store: CheckpointStore
    progress: list[TrainingProgress] = field(default_factory=list)
    checkpoints: list[tuple[CheckpointInfo, bool]] = field(default_factory=list)
    logs: list[tuple[int, dict]] = field(default_factory=list)

    def hooks(self, **extra) -> TrainingHooks:
        return TrainingHooks(
            on_progress=self.progress.append,
            on_checkpoint=lambda c: self.checkpoints.append((c, self.store.is_complete(c.uri))),
            on_log=lambda step, metrics: self.logs.append((step, metrics)),
            **extra,
        )


@pytest.fixture(scope="module")
def snapshot(tmp_path_factory) -> str:
    return write_snapshot(tmp_path_factory.mktemp("snap") / "synthetic")


@pytest.fixture(scope="module")
def reference(snapshot, tmp_path_factory):
    """One uninterrupted run, shared by the tests that inspect its outputs."""
    store = CheckpointStore(tmp_path_factory.mktemp("checkpoints"))
    recorder = Recorder(store)
    result = train(config(), snapshot, store, "exp-1/reference", recorder.hooks())
    return store, result, recorder


def test_training_learns_and_publishes_a_complete_final_model(reference, snapshot):
    store, result, _ = reference
    assert result.final_step == 60
    assert result.model_uri == str(store.final_model_dir("exp-1/reference"))
    assert result.train_loss is not None and result.train_loss < 0.5
    final = Path(result.model_uri)
    assert {"model.safetensors", "config.json", "tokenizer.json", "COMPLETE"} <= {
        p.name for p in final.iterdir()
    }
    saved = json.loads((final / "config.json").read_text())
    assert saved["id2label"] == {"0": "negative", "1": "positive"}
    left = sorted(p.name for p in final.parent.iterdir())
    assert left == ["checkpoint-50", "checkpoint-60", "final"]  # no temporary folders either

    metrics = evaluate(result.model_uri, snapshot, max_length=32, device="cpu")
    assert metrics.accuracy is not None and metrics.accuracy > 0.8, metrics
    assert metrics.num_samples == 80 and metrics.label_names == LABELS
    matrix = metrics.confusion_matrix
    assert matrix is not None and sum(sum(row) for row in matrix) == 80
    assert metrics.accuracy == pytest.approx((matrix[0][0] + matrix[1][1]) / 80)
    f1, precision, recall, loss = metrics.macro_f1, metrics.precision, metrics.recall, metrics.loss
    assert f1 is not None and precision is not None and recall is not None and loss is not None
    assert 0 < f1 <= 1 and 0 < precision <= 1 and 0 < recall <= 1
    assert 0 < loss < 0.69  # better than chance's log(2)
    eval_labels = pq.read_table(Path(snapshot) / "eval.parquet")["label"].to_pylist()
    share = max(eval_labels.count(0), eval_labels.count(1)) / len(eval_labels)
    assert metrics.majority_baseline == pytest.approx(share) and metrics.collapsed is False


def test_a_model_that_answers_one_class_is_flagged_collapsed(tmp_path):
    """Trained on rows that all carry one label, a real model learns to answer only that
    label: its accuracy is the eval share of that label, and it is flagged."""
    folder = Path(write_snapshot(tmp_path / "one-sided", n_train=160, n_eval=80))
    texts = pq.read_table(folder / "train.parquet")["text"].to_pylist()
    pq.write_table(pa.table({"text": texts, "label": [0] * len(texts)}), folder / "train.parquet")
    store = CheckpointStore(tmp_path / "checkpoints")
    result = train(config(epochs=1), str(folder), store, "exp-1/collapse", TrainingHooks())
    metrics = evaluate(result.model_uri, str(folder), max_length=32, device="cpu")
    eval_labels = pq.read_table(folder / "eval.parquet")["label"].to_pylist()
    negative_share = eval_labels.count(0) / len(eval_labels)
    assert metrics.collapsed is True
    assert metrics.accuracy == pytest.approx(negative_share)
    assert metrics.majority_baseline == pytest.approx(max(negative_share, 1 - negative_share))
    matrix = metrics.confusion_matrix
    assert matrix is not None and matrix[0][1] == matrix[1][1] == 0  # never "positive"


def test_hooks_report_progress_logs_and_throughput(reference):
    _, _, recorder = reference
    steps = [p.step for p in recorder.progress]
    assert steps == sorted(steps) and steps[0] == 0 and steps[-1] == 60
    assert all(p.total_steps == 60 for p in recorder.progress)
    assert all(p.samples_per_second > 0 for p in recorder.progress[1:])
    loss_points = [step for step, metrics in recorder.logs if "loss" in metrics]
    assert len(loss_points) == 60  # every step: a tiny run still draws a full loss curve
    train_logs = [metrics for _, metrics in recorder.logs if "loss" in metrics]
    assert all({"learning_rate", "grad_norm", "epoch"} <= set(m) for m in train_logs)
    evals = {step: m["eval_accuracy"] for step, m in recorder.logs if "eval_accuracy" in m}
    # Every epoch but the last: the final verdict is evaluate()'s, in EvalWorkflow (above).
    assert sorted(evals) == [20, 40] and evals[40] > 0.8


def test_the_precision_auto_resolved_to_is_reported_and_returned(reference):
    _, result, recorder = reference
    expected = resolve_precision("auto", torch.device("cpu"))  # config() leaves the default
    assert (result.precision, result.precision_reason) == (expected.precision, expected.reason)
    assert {(p.precision, p.precision_reason) for p in recorder.progress} == {
        (expected.precision, expected.reason)
    }


def test_length_grouped_batches_depend_on_seed_and_epoch_only():
    lengths = [(i * 37) % 50 + 3 for i in range(640)]
    sampler = LengthGroupedSampler(lengths, batch_size=16, seed=7)
    first = list(sampler)
    torch.manual_seed(123)  # the global RNG (dropout's) has no say in the order
    assert list(sampler) == first and sorted(first) == list(range(640))
    sampler.set_epoch(1)
    assert list(sampler) != first
    assert list(LengthGroupedSampler(lengths, 16, seed=8)) != first
    # Little padding: each batch's rows are close in length, unlike the same rows at random.
    padded = sum(16 * max(lengths[i] for i in first[k : k + 16]) for k in range(0, 640, 16))
    shuffled = torch.randperm(640).tolist()
    at_random = sum(16 * max(lengths[i] for i in shuffled[k : k + 16]) for k in range(0, 640, 16))
    assert padded < 0.7 * at_random, (padded, at_random, sum(lengths))


def test_checkpoints_every_k_steps_marked_and_rotated(reference):
    store, _, recorder = reference
    assert [c.step for c, _ in recorder.checkpoints] == [10, 20, 30, 40, 50, 60]
    assert all(complete for _, complete in recorder.checkpoints)
    assert [c.step for c in store.checkpoints("exp-1/reference")] == [50, 60]
    latest = store.latest("exp-1/reference")
    assert latest.step == 60 and latest.epoch == 3.0 and latest.loss is not None


def test_should_stop_stops_within_a_step(snapshot, tmp_path):
    store = CheckpointStore(tmp_path)
    calls = []

    def should_stop() -> bool:
        calls.append(1)
        return len(calls) >= 3

    with pytest.raises(TrainingStopped) as stopped:
        train(config(), snapshot, store, "exp/stop", TrainingHooks(should_stop=should_stop))
    assert stopped.value.step == 3 and len(calls) == 3
    assert not store.final_model_dir("exp/stop").exists()


@pytest.mark.parametrize("stop_at", [20, 30], ids=["at-an-epoch-end", "mid-epoch"])
def test_resume_from_a_checkpoint_matches_the_uninterrupted_run(reference, snapshot, stop_at):
    store, uninterrupted, _ = reference
    run_key = f"exp-1/resumed-{stop_at}"
    interrupted = Recorder(store)
    after_checkpoint = lambda: any(c.step == stop_at for c, _ in interrupted.checkpoints)  # noqa: E731
    with pytest.raises(TrainingStopped) as stopped:
        train(config(), snapshot, store, run_key, interrupted.hooks(should_stop=after_checkpoint))
    checkpoint = stopped.value.checkpoint
    assert checkpoint is not None and checkpoint.step == stop_at
    assert stopped.value.step == stop_at + 1
    latest = store.latest(run_key)
    assert latest.step == stop_at
    resumed = Recorder(store)
    result = train(config(), snapshot, store, run_key, resumed.hooks(), resume_from=latest.uri)
    steps = [p.step for p in resumed.progress]
    assert steps[0] == stop_at and steps[-1] == 60 and result.final_step == 60

    a = load_file(f"{uninterrupted.model_uri}/model.safetensors")
    b = load_file(f"{result.model_uri}/model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # bit for bit
    assert result.train_loss == uninterrupted.train_loss
    assert evaluate(result.model_uri, snapshot, 32, device="cpu") == evaluate(
        uninterrupted.model_uri, snapshot, 32, device="cpu"
    )


def test_the_last_checkpoint_holds_weights_only_and_resumes_to_the_same_model(reference, snapshot):
    """No step follows the last one: its checkpoint skips AdamW's state (two thirds of a save),
    and a worker lost before the result was recorded resumes from it to the same final model."""
    store, uninterrupted, _ = reference
    last = Path(store.latest("exp-1/reference").uri)
    earlier = Path(store.checkpoint_dir("exp-1/reference", 50))
    assert (earlier / "optimizer.pt").is_file() and (earlier / "scheduler.pt").is_file()
    assert not (last / "optimizer.pt").exists() and not (last / "scheduler.pt").exists()
    assert (last / "model.safetensors").is_file() and (last / "trainer_state.json").is_file()

    copy = CheckpointStore(Path(store.root).parent / "resume-last")
    target = copy.checkpoint_dir("exp-1/last", 60)
    shutil.copytree(last, target)
    recorder = Recorder(copy)
    result = train(
        config(), snapshot, copy, "exp-1/last", recorder.hooks(), resume_from=str(target)
    )
    assert result.final_step == 60 and not recorder.checkpoints  # nothing left to train
    a = load_file(f"{uninterrupted.model_uri}/model.safetensors")
    b = load_file(f"{result.model_uri}/model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_bad_resume_point_and_precision_are_config_errors(snapshot, tmp_path):
    store = CheckpointStore(tmp_path)
    partial = store.checkpoint_dir("exp/bad", 10)
    partial.mkdir(parents=True)
    with pytest.raises(ConfigError, match=r"^resume_from: .* is not a complete checkpoint"):
        train(config(), snapshot, store, "exp/bad", resume_from=str(partial))
    with pytest.raises(ConfigError, match=r"^precision: fp16 needs a CUDA GPU"):
        # RunConfig refuses fp16 on a named CPU device; the run checks again (device auto).
        train(config().model_copy(update={"precision": "fp16"}), snapshot, store, "exp/bad")


def test_a_trainer_starting_in_another_thread_does_not_disturb_a_running_one(snapshot, tmp_path):
    """Setting up a Trainer resets accelerate's state; with a second run starting in another
    thread, that reset used to land in the middle of the first run's steps and break it."""
    store = CheckpointStore(tmp_path)
    run_a = config(name="a", precision="bf16", epochs=1, checkpoint_every_steps=100)
    alone = train(run_a, snapshot, store, "exp/alone")
    calls = []

    def start_another_trainer_at_step_2() -> bool:
        calls.append(1)
        if len(calls) == 2:  # what a second run's Trainer does first: set up its devices
            args = {"output_dir": str(tmp_path / "b"), "use_cpu": True}
            other = threading.Thread(target=TrainingArguments, kwargs=args)
            other.start()
            other.join()
        return False

    disturbed = train(
        run_a, snapshot, store, "exp/a", TrainingHooks(should_stop=start_another_trainer_at_step_2)
    )
    a = load_file(f"{disturbed.model_uri}/model.safetensors")
    solo = load_file(f"{alone.model_uri}/model.safetensors")
    assert len(calls) == 20 and all(torch.equal(a[k], solo[k]) for k in a)


def test_concurrent_runs_in_threads_both_finish_and_learn(snapshot, tmp_path):
    store = CheckpointStore(tmp_path)
    results, errors = {}, []

    def run(name: str, precision: str) -> None:
        try:
            cfg = config(name=name, precision=precision, checkpoint_every_steps=25)
            results[name] = train(cfg, snapshot, store, f"exp/{name}")
        except Exception as err:
            errors.append(err)

    threads = [threading.Thread(target=run, args=(p, p)) for p in ("fp32", "bf16")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert not errors and sorted(results) == ["bf16", "fp32"]
    for result in results.values():
        assert result.final_step == 60
        accuracy = evaluate(result.model_uri, snapshot, 32, device="cpu").accuracy
        assert accuracy is not None and accuracy > 0.8


def test_minilm_fine_tunes_offline(snapshot, tmp_path):
    cfg = config(
        model="all-MiniLM-L6-v2", learning_rate=5e-5, epochs=0.15, checkpoint_every_steps=1000
    )
    result = train(cfg, snapshot, CheckpointStore(tmp_path), "exp/minilm")
    assert result.final_step == 3
    assert result.train_loss is not None and 0 < result.train_loss < 2
    saved = json.loads((Path(result.model_uri) / "config.json").read_text())
    assert saved["hidden_size"] == 384 and saved["num_hidden_layers"] == 6
    answer = Predictor(device="cpu").predict(
        InferenceRequest(model_uri=result.model_uri, texts=["a wonderful film"])
    )
    assert sorted(s.label for s in answer.predictions[0]) == LABELS


def test_regression_trains_and_evaluates(tmp_path):
    snapshot = write_snapshot(tmp_path / "regression", regression=True)
    store = CheckpointStore(tmp_path / "checkpoints")
    result = train(config(epochs=2, checkpoint_every_steps=100), snapshot, store, "exp/reg")
    metrics = evaluate(result.model_uri, snapshot, 32, device="cpu")
    assert metrics.accuracy is None and metrics.num_samples == 80
    assert metrics.mse is not None and metrics.loss is not None
    assert 0 <= metrics.mse == metrics.loss < 0.25  # predicting the mean would score 0.25
    prediction = Predictor(device="cpu").predict(
        InferenceRequest(model_uri=result.model_uri, texts=["a great film"])
    )
    assert prediction.predictions[0][0].label == "value"


def test_predictor_returns_sorted_probabilities_and_caches(reference, tmp_path):
    _, result, _ = reference
    predictor = Predictor(max_models=1, device="cpu")
    request = InferenceRequest(
        model_uri=result.model_uri, texts=["i love this wonderful film", "awful and boring plot"]
    )
    answer = predictor.predict(request)
    assert answer.model_uri == result.model_uri and answer.latency_ms > 0
    for scores in answer.predictions:
        assert sorted(s.label for s in scores) == LABELS
        assert sum(s.score for s in scores) == pytest.approx(1.0, abs=1e-5)
        assert scores[0].score >= scores[1].score
    assert [scores[0].label for scores in answer.predictions] == ["positive", "negative"]

    # Concurrent requests (the eval worker serves them from a thread pool) agree with one alone.
    texts = [f"{word} film" for word in POSITIVE + NEGATIVE]
    alone = predictor.predict(request.model_copy(update={"texts": texts}))
    answers: list = []
    many = request.model_copy(update={"texts": texts})
    threads = [
        threading.Thread(target=lambda: answers.append(predictor.predict(many))) for _ in range(6)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert len(answers) == 6
    assert all(
        [s.label for s in a] == [s.label for s in b]
        and [s.score for s in a] == pytest.approx([s.score for s in b], abs=1e-5)
        for answer in answers
        for a, b in zip(answer.predictions, alone.predictions, strict=True)
    )

    first = predictor.load(result.model_uri)
    assert predictor.load(result.model_uri) is first
    copy = shutil.copytree(result.model_uri, tmp_path / "copy")
    predictor.load(str(copy))  # max_models=1: a second model evicts the first
    assert predictor.load(result.model_uri) is not first
    with pytest.raises(ConfigError, match=r"^model_uri: .* is not a trained model folder"):
        predictor.predict(request.model_copy(update={"model_uri": str(tmp_path / "nothing")}))
    with pytest.raises(ConfigError, match=r"^model_uri: .* is outside the model folders"):
        Predictor(device="cpu", roots=[tmp_path]).predict(request)


def test_inference_and_evaluation_truncate_at_the_trained_max_length(reference, snapshot):
    """The reference trained at max_length 32: its folder says so, and a request without a
    max_length is cut there (a sentiment word after 30 filler tokens is never seen)."""
    _, result, _ = reference
    saved = json.loads((Path(result.model_uri) / "tokenizer_config.json").read_text())
    assert saved["model_max_length"] == 32
    filler = " ".join(["the movie"] * 15)  # 30 single-token words: [CLS] + 30 + [SEP] = 32
    predictor = Predictor(device="cpu")

    def scores(text: str, max_length: int | None = None) -> list[float]:
        request = InferenceRequest(model_uri=result.model_uri, texts=[text], max_length=max_length)
        return [s.score for s in predictor.predict(request).predictions[0]]

    long_text = f"{filler} terrible awful boring bad"
    assert scores(long_text) == scores(filler)  # the words past 32 tokens are cut
    assert scores(long_text, max_length=64) != scores(filler, max_length=64)  # or not
    assert evaluate(result.model_uri, snapshot, device="cpu") == evaluate(
        result.model_uri, snapshot, 32, device="cpu"
    )


def test_batches_sorted_by_length_return_logits_in_the_order_given(reference):
    _, result, _ = reference
    model, tokenizer = load_trained(result.model_uri, torch.device("cpu"))
    texts = [" ".join(["great film"] * n) if n % 2 else "awful " * n for n in (9, 1, 5, 12, 3, 7)]
    together = predict_logits(model, tokenizer, texts, None, None, batch_size=4)
    alone = [predict_logits(model, tokenizer, [t], None, None, batch_size=1)[0] for t in texts]
    assert together.shape == (6, 2)
    assert torch.allclose(torch.from_numpy(together), torch.tensor(alone), atol=1e-5)


def _fake_checkpoint(store: CheckpointStore, run_key: str, step: int, complete: bool) -> None:
    store.checkpoint_dir(run_key, step).mkdir(parents=True)
    if complete:
        store.mark_complete(run_key, step, epoch=step / 100, loss=1.0 / step)


def test_store_orders_steps_numerically_and_ignores_incomplete(tmp_path):
    store = CheckpointStore(tmp_path)
    for step, complete in ((999, True), (1000, True), (1001, False), (20, True)):
        _fake_checkpoint(store, "e/r", step, complete)
    latest = store.latest("e/r")
    assert latest is not None
    assert latest.step == 1000 and latest.epoch == 10.0 and latest.loss == pytest.approx(0.001)
    assert [c.step for c in store.checkpoints("e/r")] == [20, 999, 1000]
    assert store.latest("e/none") is None

    store.prune("e/r", keep=2)
    assert sorted(p.name for p in store.run_dir("e/r").iterdir()) == [
        "checkpoint-1000",
        "checkpoint-1001",
        "checkpoint-999",
    ]  # a partial save newer than the newest complete one is left to be rewritten
    store.discard_after("e/r", 999)
    assert [p.name for p in store.run_dir("e/r").iterdir()] == ["checkpoint-999"]


def test_store_sanitises_run_keys_and_publishes_atomically(tmp_path):
    store = CheckpointStore(f"file://{tmp_path}")
    assert store.run_dir("exp x/cfg:a") == tmp_path / "exp_x" / "cfg_a"
    with pytest.raises(ValueError, match="only local"):
        CheckpointStore("s3://bucket/checkpoints")
    for bad in ("", "a/../..", "/"):
        with pytest.raises(ValueError, match="run_key"):
            store.run_dir(bad)

    def broken(folder: Path) -> None:
        (folder / "half.bin").write_bytes(b"x")
        raise OSError("disk full")

    with pytest.raises(OSError):
        store.publish_final("e/r", broken)
    assert list(store.run_dir("e/r").iterdir()) == []  # no half-written model, no temp folder

    def writes(text: str) -> Callable[[Path], None]:
        def write(folder: Path) -> None:
            (folder / "w").write_text(text)

        return write

    final = store.publish_final("e/r", writes("1"))
    final = store.publish_final("e/r", writes("2"))
    assert (final / "w").read_text() == "2" and store.is_complete(str(final))
    assert [p.name for p in store.run_dir("e/r").iterdir()] == ["final"]
