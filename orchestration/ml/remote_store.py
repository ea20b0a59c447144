"""Checkpoints, final models and snapshots in an object store, so any worker can resume any run.

The Trainer writes only to local folders, so a run trains into a working copy on the worker's
own disk (a plain `CheckpointStore`) and every folder, once complete there, is uploaded: its
files first, its `COMPLETE` marker last. A reader of the store therefore trusts exactly what the
local store would trust: `latest()` lists the store, so a worker on another host resumes from
the newest checkpoint any worker finished uploading, and `local_copy()` downloads it first.

Checkpoint uploads run in the background, one thread per run and at most one checkpoint behind:
training goes on while the previous checkpoint uploads, and rotation in the store happens only
after the newer checkpoint's marker is there. The checkpoint a hook reports is thus "complete
locally, upload in flight" for a moment; a resume checks the store's marker, never the report.
The final model is uploaded before `train()` returns, after every pending checkpoint.
"""

from __future__ import annotations

import json
import shutil
import threading
import uuid
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path, PurePosixPath
from typing import TypeAlias

import fsspec

from orchestration.ml.checkpoints import (
    MARKER,
    SNAPSHOTS_DIR,
    CheckpointStore,
    checkpoint_step,
    missing_snapshot,
)
from orchestration.ml.errors import StorageError
from orchestration.types import CheckpointInfo, Snapshot


def open_store(root: str, work_dir: Path, **options) -> AnyStore:
    """The store at `root`: a local or mounted folder (also `file://`), else an fsspec URI such
    as `s3://bucket/prefix`, whose runs train in `work_dir`. `options` go to fsspec."""
    if "://" in root and not root.startswith("file://"):
        return RemoteCheckpointStore(root, work_dir, **options)
    return CheckpointStore(root)


_FIX = (
    "check BERTFLEET_CHECKPOINT_STORE, that the bucket exists, the credentials "
    "(AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY for S3) and BERTFLEET_S3_ENDPOINT_URL"
)


class _Background:
    """Per run, one thread running uploads and rotations in order; errors surface on wait()."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._runs: dict[str, tuple[ThreadPoolExecutor, list[Future]]] = {}

    def submit(self, run_key: str, task: Callable[[], None]) -> None:
        with self._lock:
            if run_key not in self._runs:
                self._runs[run_key] = (ThreadPoolExecutor(1, thread_name_prefix="store-upload"), [])
            pool, futures = self._runs[run_key]
            futures.append(pool.submit(task))

    def wait(self, run_key: str, close: bool = False) -> None:
        """Wait for everything submitted for the run; raise the first task's error."""
        with self._lock:
            pool, futures = self._runs.get(run_key, (None, []))
            pending = list(futures)
            futures.clear()
            if close:
                self._runs.pop(run_key, None)
        try:
            for future in pending:
                future.result()
        finally:
            if close and pool is not None:
                pool.shutdown(wait=True)


class RemoteCheckpointStore:
    """`CheckpointStore`'s interface over an fsspec URI; the layout mirrors the local one:
    `<uri>/<run_key>/checkpoint-<step>/`, `<uri>/<run_key>/final/`, `<uri>/_snapshots/<id>/`."""

    def __init__(self, uri: str, work_dir: Path, **options) -> None:
        self.uri = uri.rstrip("/")
        # Listings must be fresh: other workers write to the store behind this process's back.
        self.fs, self._base = fsspec.core.url_to_fs(self.uri, use_listings_cache=False, **options)
        self.local = CheckpointStore(work_dir)
        self._background = _Background()

    @property
    def root(self) -> Path:
        """The local working folder: runs train here, downloads land here."""
        return self.local.root

    def run_dir(self, run_key: str) -> Path:
        return self.local.run_dir(run_key)

    def checkpoint_dir(self, run_key: str, step: int) -> Path:
        return self.local.checkpoint_dir(run_key, step)

    def final_model_dir(self, run_key: str) -> Path:
        return self.local.final_model_dir(run_key)

    # --- mapping between the local working copy and the store ---

    def _remote(self, local: Path) -> str:
        return f"{self._base}/{local.relative_to(self.local.root).as_posix()}"

    def _uri(self, remote: str) -> str:
        return self.fs.unstrip_protocol(remote)

    def _in_store(self, uri: str) -> str | None:
        """The store path of `uri` when it names a folder in this store, else None."""
        path = self.fs._strip_protocol(uri).rstrip("/")
        if not path.startswith(self._base + "/"):
            return None
        parts = PurePosixPath(path[len(self._base) + 1 :]).parts
        return path if parts and not {".", ".."} & set(parts) else None

    def _local_of(self, remote: str) -> Path:
        return self.local.root.joinpath(*PurePosixPath(remote[len(self._base) + 1 :]).parts)

    # --- reading: what the store holds ---

    def is_complete(self, uri: str) -> bool:
        if "://" not in uri:
            return self.local.is_complete(uri)
        path = self._in_store(uri)
        return path is not None and self.fs.exists(f"{path}/{MARKER}")

    def info(self, uri: str) -> CheckpointInfo | None:
        """A local working copy is reported by its store URI: that is what another host can
        resume from (a run resumed from a download reports it until its next checkpoint)."""
        if "://" not in uri:
            info = self.local.info(uri)
            if info is None or not Path(uri).is_relative_to(self.local.root):
                return info
            return info.model_copy(update={"uri": self._uri(self._remote(Path(uri)))})
        path = self._in_store(uri)
        if path is None or not self.fs.exists(f"{path}/{MARKER}"):
            return None
        return CheckpointInfo(
            uri=self._uri(path), **json.loads(self.fs.cat_file(f"{path}/{MARKER}"))
        )

    def _folders(self, run_key: str) -> list[tuple[int, str]]:
        """Every checkpoint folder of the run in the store, complete or not, oldest first."""
        base = self._remote(self.local.run_dir(run_key))
        if not self.fs.exists(base):
            return []
        names = self.fs.ls(base, detail=False)
        return sorted(
            (step, path)
            for path in names
            if (step := checkpoint_step(path.rstrip("/").rsplit("/", 1)[-1])) is not None
        )

    def checkpoints(self, run_key: str) -> list[CheckpointInfo]:
        """The run's complete checkpoints in the store, oldest step first."""
        base = self._remote(self.local.run_dir(run_key))
        markers = {
            path.rsplit("/", 2)[-2]: path for path in self.fs.glob(f"{base}/checkpoint-*/{MARKER}")
        }
        ordered = sorted(
            (checkpoint_step(name), path)
            for name, path in markers.items()
            if checkpoint_step(name) is not None
        )
        contents = self.fs.cat([path for _, path in ordered]) if ordered else {}
        return [
            CheckpointInfo(uri=self._uri(path.rsplit("/", 1)[0]), **json.loads(contents[path]))
            for _, path in ordered
        ]

    def latest(self, run_key: str) -> CheckpointInfo | None:
        complete = self.checkpoints(run_key)
        return complete[-1] if complete else None

    def local_copy(self, uri: str) -> str:
        """A local folder with the checkpoint or final model at `uri`, downloaded once."""
        if "://" not in uri:
            return uri
        path = self._in_store(uri)
        if path is None or not self.fs.exists(f"{path}/{MARKER}"):
            raise StorageError(
                f"{uri} is not a complete folder of the checkpoint store "
                f"{self.uri}; pick a finished run's model or checkpoint"
            )
        target = self._local_of(path)
        if not self.local.is_complete(str(target)):
            self._download(path, target)
        return str(target)

    def local_snapshot(self, snapshot: Snapshot, snapshot_dir: Path) -> str:
        """The snapshot's folder on this host: where it was made, an earlier download into
        `snapshot_dir` (where `make_snapshot` would put it too), or a download now."""
        for folder in (Path(snapshot.path), Path(snapshot_dir) / snapshot.snapshot_id):
            if (folder / "snapshot.json").is_file():
                return str(folder)
        remote = f"{self._base}/{SNAPSHOTS_DIR}/{snapshot.snapshot_id}"
        if not self.fs.exists(f"{remote}/{MARKER}"):
            raise missing_snapshot(snapshot, self.uri)
        self._download(remote, target := Path(snapshot_dir) / snapshot.snapshot_id)
        return str(target)

    # --- writing: the Trainer's checkpoints, the final model, snapshots ---

    def ensure_writable(self, run_key: str, need_bytes: int) -> None:
        """The local working folder has room, and the store takes writes (a probe object)."""
        self.local.ensure_writable(run_key, need_bytes)
        probe = f"{self._remote(self.local.run_dir(run_key))}/.probe-{uuid.uuid4().hex}"
        try:
            self.fs.pipe_file(probe, b"probe")
            self.fs.rm_file(probe)
        except Exception as err:
            raise StorageError(
                f"checkpoint store: cannot write to {self._uri(probe)} "
                f"({type(err).__name__}: {err}); {_FIX}"
            ) from err

    def mark_complete(
        self, run_key: str, step: int, epoch: float, loss: float | None
    ) -> CheckpointInfo:
        """Mark the local checkpoint, then upload it in the background once the previous one is
        in the store (so at most one is in flight and a failed upload stops training here)."""
        info = self.local.mark_complete(run_key, step, epoch, loss)
        folder = Path(info.uri)
        self._background.wait(run_key)
        self._background.submit(run_key, lambda: self._upload(folder, self._remote(folder)))
        return info.model_copy(update={"uri": self._uri(self._remote(folder))})

    def prune(self, run_key: str, keep: int, protect: int | None = None) -> None:
        """Rotate the working copy now, the store after the pending upload's marker is in;
        the checkpoint at step `protect` stays in both."""
        self.local.prune(run_key, keep, protect)
        self._background.submit(run_key, lambda: self._prune_remote(run_key, keep, protect))

    def _prune_remote(self, run_key: str, keep: int, protect: int | None) -> None:
        complete = [info.step for info in self.checkpoints(run_key)]
        if not complete:
            return
        kept = {*complete[-keep:], protect}
        for step, path in self._folders(run_key):
            if step not in kept and step < complete[-1]:
                self.fs.rm(path, recursive=True)

    def discard_after(self, run_key: str, step: int) -> None:
        """Drop newer and partial checkpoints here and in the store before training from `step`."""
        self.local.discard_after(run_key, step)
        for found, path in self._folders(run_key):
            if found > step or not self.fs.exists(f"{path}/{MARKER}"):
                self.fs.rm(path, recursive=True)

    def flush(self, run_key: str) -> None:
        """Wait until the run's checkpoints are in the store; raise if an upload failed."""
        self._background.wait(run_key, close=True)

    def publish_final(self, run_key: str, write: Callable[[Path], None]) -> str:
        """Publish the final model locally (atomically), then upload it, after every pending
        checkpoint; returns its store URI. The working copy is dropped: the store has it all."""
        self.flush(run_key)
        final = self.local.publish_final(run_key, write)
        self._upload(final, self._remote(final))
        shutil.rmtree(self.local.run_dir(run_key), ignore_errors=True)
        return self._uri(self._remote(final))

    def publish_snapshot(self, folder: Path, snapshot_id: str) -> None:
        """Upload the snapshot once (content-addressed: an existing copy is the same rows)."""
        remote = f"{self._base}/{SNAPSHOTS_DIR}/{snapshot_id}"
        if not self.fs.exists(f"{remote}/{MARKER}"):
            self._upload(folder, remote, json.dumps({"snapshot_id": snapshot_id}).encode())

    # --- transfers ---

    def _upload(self, folder: Path, remote: str, marker: bytes | None = None) -> None:
        """Replace `remote` with `folder`'s files, the marker last (the local one by default)."""
        marker = marker if marker is not None else (folder / MARKER).read_bytes()
        files = [p for p in sorted(folder.rglob("*")) if p.is_file() and p.name != MARKER]
        try:
            if self.fs.exists(remote):  # a stale copy: its old marker must not vouch for new files
                self.fs.rm(remote, recursive=True)
            if files:
                self.fs.put(
                    [str(p) for p in files],
                    [f"{remote}/{p.relative_to(folder).as_posix()}" for p in files],
                )
            self.fs.pipe_file(f"{remote}/{MARKER}", marker)
        except Exception as err:
            raise StorageError(
                f"checkpoint store: uploading {folder} to {self._uri(remote)} "
                f"failed ({type(err).__name__}: {err}); {_FIX}"
            ) from err

    def _download(self, remote: str, target: Path) -> None:
        """Download a complete folder to `target`, atomically: marker read first, written last."""
        marker = self.fs.cat_file(f"{remote}/{MARKER}")
        files = [p for p in self.fs.find(remote) if not p.endswith(f"/{MARKER}")]
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.parent / f".{target.name}-download-{uuid.uuid4().hex}"
        try:
            tmp.mkdir()
            locals_ = [tmp.joinpath(*PurePosixPath(p[len(remote) + 1 :]).parts) for p in files]
            for path in locals_:
                path.parent.mkdir(parents=True, exist_ok=True)
            if files:
                self.fs.get(files, [str(p) for p in locals_])
            (tmp / MARKER).write_bytes(marker)
            if (target / MARKER).is_file():  # another thread of this worker was faster
                return
            if target.exists():  # an incomplete leftover of an earlier attempt
                shutil.rmtree(target)
            try:
                tmp.rename(target)
            except OSError:
                if not (target / MARKER).is_file():
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


# Either store: the same interface, so training and evaluation take whichever open_store() gives.
AnyStore: TypeAlias = CheckpointStore | RemoteCheckpointStore
