"""Scale-out: an object-store checkpoint store, so any worker on any host continues any
run; worker options; the deployment files.

The object store is a real S3-compatible server (moto in server mode) on a free loopback port;
each "host" is a worker process with its own data dir (its own disk), sharing only Temporal,
MLflow and the bucket.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import shutil
import ssl
import subprocess
import uuid
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from temporalio.api.workflowservice.v1 import GetSystemInfoRequest

from harness.coherence import reference
from harness.polling import apoll
from harness.processes import WorkerProcess
from harness.runs import HEARTBEAT_S, SHORT
from harness.servers import make_data_dir, s3_server
from harness.synthetic import SELECTING, config, write_snapshot
from harness.temporal import workers
from orchestration.client import connect, experiment_progress, experiment_result, start_experiment
from orchestration.ml.checkpoints import MARKER, CheckpointStore
from orchestration.ml.errors import StorageError
from orchestration.ml.remote_store import RemoteCheckpointStore, open_store
from orchestration.ml.training import TrainingHooks, TrainingStopped, train
from orchestration.servers import free_port
from orchestration.settings import REPO_ROOT, Settings
from orchestration.types import CheckpointInfo, ExperimentRequest, RunConfig, Snapshot
from orchestration.workers import build_worker, run_worker


@pytest.fixture(scope="module")
def s3():
    """An S3-compatible server on loopback with dummy credentials; yields its endpoint URL."""
    port = free_port()
    server = s3_server(port)
    with pytest.MonkeyPatch.context() as env:
        for name, value in (
            ("AWS_ACCESS_KEY_ID", "testing"),
            ("AWS_SECRET_ACCESS_KEY", "testing"),
            ("AWS_DEFAULT_REGION", "us-east-1"),
        ):
            env.setenv(name, value)
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            server.stop()


@pytest.fixture
def bucket(s3) -> str:
    """A fresh bucket; returns the store URI inside it."""
    name = f"ckpts-{uuid.uuid4().hex[:8]}"
    store = RemoteCheckpointStore(f"s3://{name}", Path("/nonexistent"), endpoint_url=s3)
    store.fs.mkdir(name)
    return f"s3://{name}/runs"


def _store(uri: str, s3: str, work: Path) -> RemoteCheckpointStore:
    return RemoteCheckpointStore(uri, work, endpoint_url=s3)


def _fake_checkpoint(store, run_key: str, step: int) -> None:
    folder = store.checkpoint_dir(run_key, step)
    folder.mkdir(parents=True)
    (folder / "weights.bin").write_bytes(bytes([step % 256]) * 64)
    (folder / "nested").mkdir()
    (folder / "nested" / "state.json").write_text(json.dumps({"step": step}))
    store.mark_complete(run_key, step, epoch=step / 100, loss=1.0 / step)


def test_open_store_picks_the_store_by_uri(tmp_path, s3):
    assert type(open_store(str(tmp_path), tmp_path / "w")) is CheckpointStore
    assert open_store(f"file://{tmp_path}", tmp_path / "w").root == tmp_path
    remote = open_store("s3://some-bucket/x", tmp_path / "w", endpoint_url=s3)
    assert isinstance(remote, RemoteCheckpointStore) and remote.root == tmp_path / "w"
    cfg = Settings(data_dir=tmp_path, checkpoint_store="s3://b/c", s3_endpoint_url=s3)
    assert cfg.checkpoint_store_options == {"endpoint_url": s3}
    assert Settings(data_dir=tmp_path, s3_endpoint_url=s3).checkpoint_store_options == {}


def test_remote_store_semantics_match_the_local_store(tmp_path, s3, bucket):
    """Markers last, numeric order, incomplete folders ignored, rotation after marking, any
    host reads what another uploaded; failures name the store."""
    host_a, host_b = _store(bucket, s3, tmp_path / "a"), _store(bucket, s3, tmp_path / "b")
    for step in (999, 1000, 20):
        _fake_checkpoint(host_a, "e/r", step)
    host_a.flush("e/r")
    torn = f"{host_a._base}/e/r/checkpoint-1001"
    host_a.fs.pipe_file(f"{torn}/weights.bin", b"half")  # a worker died mid-upload
    latest = host_b.latest("e/r")
    assert latest is not None
    assert (
        latest.step == 1000
        and latest.epoch == 10.0
        and latest.uri == f"{bucket}/e/r/checkpoint-1000"
    )
    assert [c.step for c in host_b.checkpoints("e/r")] == [20, 999, 1000]
    assert not host_b.is_complete(f"s3://{torn}") and host_b.info(f"s3://{torn}") is None
    assert host_b.info(latest.uri) == latest

    local = Path(host_b.local_copy(latest.uri))
    assert local == tmp_path / "b" / "e" / "r" / "checkpoint-1000"
    assert json.loads((local / "nested" / "state.json").read_text()) == {"step": 1000}
    assert host_b.info(str(local)) == latest  # complete (marker included), named by its store URI
    for outside in ("s3://other-bucket/e/r/checkpoint-1000", f"{bucket}/../x/checkpoint-1"):
        with pytest.raises(StorageError, match="not a complete folder of the checkpoint store"):
            host_b.local_copy(outside)

    host_a.prune("e/r", keep=2)
    host_a.flush("e/r")
    names = sorted(p.rsplit("/", 1)[-1] for p in host_a.fs.ls(f"{host_a._base}/e/r"))
    assert names == ["checkpoint-1000", "checkpoint-1001", "checkpoint-999"]
    host_b.discard_after("e/r", 999)
    assert [c.step for c in host_a.checkpoints("e/r")] == [999]
    assert [p.rsplit("/", 1)[-1] for p in host_a.fs.ls(f"{host_a._base}/e/r")] == ["checkpoint-999"]

    def broken(folder: Path) -> None:
        (folder / "half.bin").write_bytes(b"x")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        host_a.publish_final("e/r", broken)
    assert not host_a.fs.exists(f"{host_a._base}/e/r/final")

    def write(folder: Path) -> None:
        (folder / "w").write_text("2")

    final = host_a.publish_final("e/r", write)
    assert final == f"{bucket}/e/r/final" and host_b.is_complete(final)
    assert not host_a.run_dir("e/r").exists()  # the working copy goes once the store has it all
    assert (Path(host_b.local_copy(final)) / "w").read_text() == "2"


def test_snapshots_reach_workers_on_other_hosts(tmp_path, s3, bucket):
    folder = Path(write_snapshot(tmp_path / "made-here" / "abc123"))
    snapshot = Snapshot.model_validate_json((folder / "snapshot.json").read_text())
    elsewhere = snapshot.model_copy(update={"path": str(tmp_path / "other-host" / "abc123")})

    remote_a, remote_b = _store(bucket, s3, tmp_path / "a"), _store(bucket, s3, tmp_path / "b")
    with pytest.raises(
        StorageError, match="not in the checkpoint store .*BERTFLEET_CHECKPOINT_STORE"
    ):
        remote_b.local_snapshot(elsewhere, tmp_path / "b-snapshots")
    remote_a.publish_snapshot(folder, snapshot.snapshot_id)
    assert remote_b.local_snapshot(snapshot, tmp_path / "b-snapshots") == str(folder)  # local
    fetched = Path(remote_b.local_snapshot(elsewhere, tmp_path / "b-snapshots"))
    assert fetched == tmp_path / "b-snapshots" / "abc123"
    for part in ("train.parquet", "eval.parquet", "snapshot.json"):
        assert (fetched / part).read_bytes() == (folder / part).read_bytes()

    shared = CheckpointStore(tmp_path / "shared-mount")  # a store mounted on every host
    with pytest.raises(StorageError, match="not at .*other-host"):
        shared.local_snapshot(elsewhere, tmp_path / "snapshots")
    shared.publish_snapshot(folder, snapshot.snapshot_id)
    shared.publish_snapshot(folder, snapshot.snapshot_id)  # content-addressed: once is enough
    copy = Path(shared.local_snapshot(elsewhere, tmp_path / "snapshots"))
    assert copy == tmp_path / "shared-mount" / "_snapshots" / "abc123" and (copy / MARKER).is_file()
    assert (copy / "train.parquet").stat().st_ino == (folder / "train.parquet").stat().st_ino


def test_unreachable_store_fails_before_training_and_stops_uploads(tmp_path, s3):
    missing = _store("s3://no-such-bucket/runs", s3, tmp_path / "w")
    with pytest.raises(
        StorageError, match=r"cannot write to s3://no-such-bucket/runs/e/r/.*bucket"
    ):
        missing.ensure_writable("e/r", 1000)
    _fake_checkpoint(missing, "e/r", 10)  # the upload fails in the background...
    with pytest.raises(
        StorageError, match="uploading .* to s3://no-such-bucket/runs/e/r/checkpoint-10"
    ):
        missing.flush("e/r")  # ...and the error surfaces where training waits for it


def test_training_resumes_on_another_host_from_the_store(tmp_path, s3, bucket):
    """The ML core alone: host A trains to step 10 and stops; host B, with an empty disk, finds
    the checkpoint in the store and finishes with the uninterrupted run's weights bit for bit."""
    snapshot = write_snapshot(tmp_path / "snapshot")
    short = config(epochs=1, checkpoint_every_steps=5)  # 20 steps
    uninterrupted = train(short, snapshot, CheckpointStore(tmp_path / "ref"), "ref/run")
    host_a, host_b = _store(bucket, s3, tmp_path / "a"), _store(bucket, s3, tmp_path / "b")
    reported: list[CheckpointInfo] = []
    stop_after_10 = lambda: any(c.step == 10 for c in reported)  # noqa: E731
    hooks = TrainingHooks(on_checkpoint=reported.append, should_stop=stop_after_10)
    with pytest.raises(TrainingStopped):
        train(short, snapshot, host_a, "exp/run", hooks)
    host_a.flush("exp/run")
    assert [c.uri for c in reported] == [f"{bucket}/exp/run/checkpoint-{s}" for s in (5, 10)]

    latest = host_b.latest("exp/run")
    assert latest is not None and latest.step == 10
    result = train(short, snapshot, host_b, "exp/run", resume_from=host_b.local_copy(latest.uri))
    assert result.final_step == 20 and result.model_uri == f"{bucket}/exp/run/final"
    assert [c.step for c in host_a.checkpoints("exp/run")] == [15, 20]  # rotated in the store
    fetched = _store(bucket, s3, tmp_path / "eval-host").local_copy(result.model_uri)
    a = load_file(f"{uninterrupted.model_uri}/model.safetensors")
    b = load_file(f"{fetched}/model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_best_checkpoint_comes_from_the_store_when_resumed_on_another_host(tmp_path, s3, bucket):
    """With select_best_by: host A stops after the best checkpoint; host B, with an empty disk,
    resumes from the store's latest checkpoint, downloads the best one (kept in the store by
    rotation) and publishes the straight run's weights."""
    snapshot = write_snapshot(tmp_path / "snapshot")
    cfg = config(**SELECTING)
    straight = train(cfg, snapshot, CheckpointStore(tmp_path / "ref"), "ref/run")
    assert straight.selected_step is not None and straight.stop_reason == "early_stopping"
    stop_at = straight.selected_step + 10  # after the best, one evaluation without improvement
    steps: list[int] = []

    def shutting_down() -> bool:
        steps.append(1)
        return len(steps) >= stop_at

    host_a, host_b = _store(bucket, s3, tmp_path / "a"), _store(bucket, s3, tmp_path / "b")
    with pytest.raises(TrainingStopped):
        train(cfg, snapshot, host_a, "exp/run", TrainingHooks(should_save_and_stop=shutting_down))
    host_a.flush("exp/run")
    assert [c.step for c in host_b.checkpoints("exp/run")] == [straight.selected_step, stop_at]

    latest = host_b.latest("exp/run")
    assert latest is not None and latest.step == stop_at
    result = train(cfg, snapshot, host_b, "exp/run", resume_from=host_b.local_copy(latest.uri))
    assert (result.selected_step, result.final_step) == (
        straight.selected_step,
        straight.final_step,
    )
    fetched = _store(bucket, s3, tmp_path / "eval-host").local_copy(result.model_uri)
    a = load_file(f"{straight.model_uri}/model.safetensors")
    b = load_file(f"{fetched}/model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_worker_options(tmp_path, settings):
    assert Settings(data_dir=tmp_path, max_concurrent_training=3).device_slots == ["auto"] * 3
    cfg = replace(settings, devices_env="cpu, cpu,cpu", worker_name="gpu-node-7")
    assert cfg.device_slots == ["cpu", "cpu", "cpu"]
    with pytest.raises(ValueError, match=r"BERTFLEET_DEVICES / --devices: gpu0 is not a device"):
        _ = replace(cfg, devices_env="cuda:0,gpu0").device_slots

    async def built():
        client = await connect(cfg)
        training, evaluation = (build_worker(client, role, cfg) for role in ("training", "eval"))
        return training.config(), evaluation.config()

    training, evaluation = asyncio.run(built())
    assert training["identity"] == evaluation["identity"] == "gpu-node-7"
    assert training["max_concurrent_activities"] == 3
    assert training["task_queue"] == settings.training_queue

    with pytest.raises(SystemExit, match=r"--devices: device: 'cuda:9' is not available"):
        asyncio.run(run_worker("training", replace(cfg, devices_env="cpu,cuda:9")))

    # Flags override the environment.
    log = tmp_path / "flags.log"
    WorkerProcess(
        settings,
        "training",
        log,
        args=["--training-queue", "gpu-pool", "--devices", "cpu,cpu"],
        env={"BERTFLEET_WORKER_NAME": "flagged"},
    ).stop()
    assert "training worker flagged polling 'gpu-pool'" in log.read_text(), log.read_text()
    assert "devices cpu,cpu" in log.read_text()


@pytest.mark.fault
def test_killed_worker_run_finishes_on_another_host_from_the_object_store(
    settings, s3, bucket, tmp_path, monkeypatch
):
    """Host A makes the snapshot and trains; once a checkpoint is in the store, A is SIGKILLed
    and its disk wiped. Host B, started only then with an empty disk, downloads the checkpoint
    and the snapshot and finishes the run; the eval worker (a third disk) fetches the model and
    the snapshot from the store. The metrics equal an uninterrupted run's."""
    # 90 steps, a checkpoint every 10: A is killed soon after the first one, far from the end.
    run = RunConfig(name="wanderer", **dict(SHORT, max_train_samples=720))
    expected = reference(run, settings)
    req = ExperimentRequest(name="scaleout", heartbeat_timeout_s=HEARTBEAT_S, runs=[run])
    for name, value in (("BERTFLEET_CHECKPOINT_STORE", bucket), ("BERTFLEET_S3_ENDPOINT_URL", s3)):
        monkeypatch.setenv(name, value)
    hosts: dict[str, WorkerProcess] = {}

    def start_host(name: str, devices: str) -> Settings:
        data = make_data_dir(tmp_path / name)
        monkeypatch.setenv("BERTFLEET_WORKER_NAME", name)
        monkeypatch.setenv("BERTFLEET_DEVICES", devices)
        host = replace(settings, data_dir=data, max_concurrent_training=1)
        hosts[name] = WorkerProcess(host, "training", tmp_path / f"{name}.log")
        return host

    evaluator = replace(
        settings, data_dir=tmp_path / "eval-host", checkpoint_store=bucket, s3_endpoint_url=s3
    )
    watcher = _store(bucket, s3, tmp_path / "watcher")

    async def scenario():
        async with workers(evaluator, roles=("eval",)) as client:
            host_a = await asyncio.to_thread(start_host, "host-a", "")
            exp_id = await start_experiment(client, req, evaluator)

            async def uploaded():
                # Two events, each awaited: a checkpoint in the store, and host A's name in the
                # progress (the progress signal may arrive after the upload completes).
                training = (await experiment_progress(client, exp_id)).runs[0].training
                latest = await asyncio.to_thread(watcher.latest, f"{exp_id}/wanderer")
                if training and training.worker and latest and latest.step >= 10:
                    return training, latest.step
                return None

            before, stored = await apoll(uploaded, 180, "a checkpoint in the store")
            hosts["host-a"].kill()
            shutil.rmtree(host_a.data_dir)  # the machine is gone, and its disk with it
            host_b = await asyncio.to_thread(start_host, "host-b", "cpu")

            async def resumed():
                t = (await experiment_progress(client, exp_id)).runs[0].training
                return t if t and t.attempt >= 2 and t.resumed_from_step else None

            after = await apoll(resumed, 120, "host B to resume")
            return before, stored, after, host_b, await experiment_result(client, exp_id)

    try:
        before, stored, after, host_b, result = asyncio.run(scenario())
    finally:
        for host in hosts.values():
            host.stop()
    outcome = result.runs[0]
    assert outcome.status == "completed", outcome
    assert (before.worker, after.worker) == ("host-a", "host-b")
    assert after.resumed_from_step >= stored >= 10 and after.checkpoint.uri.startswith(bucket)
    assert outcome.final_step == expected.final_step == 90
    assert outcome.eval == expected.eval
    assert [c.step for c in watcher.checkpoints(f"{result.experiment_id}/wanderer")] == [80, 90]
    assert "devices cpu" in (tmp_path / "host-b.log").read_text()
    # Host B and the eval host had no snapshot, the eval host no model: all came from the store.
    for host in (host_b, evaluator):
        assert (host.snapshot_dir / outcome.snapshot_id / "train.parquet").is_file()
    assert (evaluator.checkpoint_work_dir / result.experiment_id / "wanderer" / "final").is_dir()
    assert not (host_b.checkpoint_work_dir / result.experiment_id / "wanderer").exists()


def _compose() -> list[str] | None:
    """The Compose CLI: the docker plugin, else the standalone docker-compose."""
    if (
        shutil.which("docker")
        and subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0
    ):
        return ["docker", "compose"]
    return ["docker-compose"] if shutil.which("docker-compose") else None


COMPOSE = _compose()


@pytest.mark.skipif(COMPOSE is None, reason="neither `docker compose` nor docker-compose here")
def test_compose_file_is_valid(tmp_path):
    """`compose config` needs no engine: it checks the file against the Compose schema and
    interpolates the example environment."""
    assert COMPOSE is not None  # the test is skipped otherwise
    compose, deploy = COMPOSE, REPO_ROOT / "deploy"

    def config(env_file: Path, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [
                *compose,
                "-f",
                str(deploy / "compose.yaml"),
                "--env-file",
                str(env_file),
                "config",
                *args,
            ],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=tmp_path,
        )

    done = config(deploy / ".env.example")
    assert done.returncode == 0, done.stderr
    services = yaml.safe_load(done.stdout)["services"]
    assert {
        "temporal",
        "temporal-ui",
        "temporal-db",
        "mlflow",
        "mlflow-db",
        "minio",
        "training-worker",
        "eval-worker",
        "app",
    } <= set(services)
    worker = services["training-worker"]
    assert worker["environment"]["BERTFLEET_CHECKPOINT_STORE"] == "s3://bertfleet/checkpoints"
    assert worker["environment"]["BERTFLEET_S3_ENDPOINT_URL"] == "http://minio:9000"
    assert worker["deploy"]["resources"]["reservations"]["devices"][0]["driver"] == "nvidia"
    assert "--artifacts-destination=s3://mlflow/artifacts" in services["mlflow"]["command"]
    assert services["mlflow"]["environment"]["MLFLOW_S3_ENDPOINT_URL"] == "http://minio:9000"

    bare = tmp_path / "bare.env"
    bare.write_text("COMPOSE_PROFILES=gpu\n")
    refused = config(bare)  # no passwords: refused with the variable's name, nothing defaulted
    assert refused.returncode != 0 and "PASSWORD" in refused.stderr, refused.stderr


def test_kubernetes_sketch_runs_both_roles_against_the_shared_store():
    docs = list(yaml.safe_load_all((REPO_ROOT / "deploy" / "k8s" / "workers.yaml").read_text()))
    config = next(d for d in docs if d["kind"] == "ConfigMap")["data"]
    assert config["BERTFLEET_CHECKPOINT_STORE"].startswith("s3://")
    roles = {}
    for deployment in (d for d in docs if d["kind"] == "Deployment"):
        [container] = deployment["spec"]["template"]["spec"]["containers"]
        roles[container["args"][-1]] = container
        assert {"configMapRef": {"name": "bertfleet"}} in container["envFrom"]
    assert sorted(roles) == ["eval", "training"]
    assert roles["training"]["resources"]["limits"]["nvidia.com/gpu"] == 1
    unit = (REPO_ROOT / "deploy" / "systemd" / "bertfleet-worker@.service").read_text()
    assert "-m orchestration.workers --role %i" in unit


def _certificates(folder: Path) -> dict[str, Path]:
    """A private CA, a server certificate for localhost and a client certificate, as PEM files."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)
    files: dict[str, Path] = {}

    def issue(name: str, issuer=None, ca: bool = False, san: list | None = None):
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(issuer[0].subject if issuer else subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if san:
            builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
        cert = builder.sign(issuer[1] if issuer else key, hashes.SHA256())
        files[name] = folder / f"{name}.pem"
        files[name].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        files[f"{name}-key"] = folder / f"{name}.key"
        files[f"{name}-key"].write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        return cert, key

    ca = issue("ca", ca=True)
    issue("server", ca, san=[x509.DNSName("localhost")])
    issue("client", ca)
    return files


def test_temporal_mtls_from_the_environment(temporal_server, tmp_path):
    """TEMPORAL_TLS_CERT/KEY/CA give the client an mTLS connection. The dev server speaks no TLS,
    so a TLS proxy that requires a client certificate from our CA stands in front of it."""
    files = _certificates(tmp_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(files["ca"]))
    context.load_cert_chain(files["server"], files["server-key"])
    context.verify_mode = ssl.CERT_REQUIRED
    context.set_alpn_protocols(["h2"])  # gRPC
    host, port = temporal_server.address.rsplit(":", 1)

    async def pipe(reader, writer):
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.close()

    async def forward(client_reader, client_writer):
        server_reader, server_writer = await asyncio.open_connection(host, int(port))
        await asyncio.gather(pipe(client_reader, server_writer), pipe(server_reader, client_writer))

    async def scenario():
        proxy = await asyncio.start_server(forward, "127.0.0.1", 0, ssl=context)
        address = f"localhost:{proxy.sockets[0].getsockname()[1]}"
        with pytest.MonkeyPatch.context() as env:
            env.setenv("TEMPORAL_ADDRESS", address)
            env.setenv("TEMPORAL_TLS_CA", str(files["ca"]))
            env.setenv("TEMPORAL_TLS_CERT", str(files["client"]))
            env.setenv("TEMPORAL_TLS_KEY", str(files["client-key"]))
            client = await connect(Settings())
            info = await client.workflow_service.get_system_info(GetSystemInfoRequest())
            env.delenv("TEMPORAL_TLS_CERT")
            env.delenv("TEMPORAL_TLS_KEY")
            with pytest.raises(RuntimeError):  # the proxy refuses a client without certificate
                await connect(Settings())
        proxy.close()
        return info

    assert asyncio.run(scenario()).server_version
