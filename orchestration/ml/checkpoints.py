"""Where a run's checkpoints and final model live, and which of them can be trusted.

A worker may die at any instant, including halfway through writing a checkpoint. So a
checkpoint counts only once a `COMPLETE` marker sits in its folder, written (atomically) after
the Trainer finished saving it; `latest()` ignores everything else. Rotation (keep the last K)
also happens here, after marking, and counts only complete checkpoints: the Trainer's own
rotation runs before our marker exists and would let a crash leave no usable checkpoint at all.

All path handling is in `CheckpointStore`, so a shared filesystem or object store can replace
the local directory without touching the training code: `remote_store.RemoteCheckpointStore`
has the same interface, and `remote_store.open_store()` picks one by URI.

Snapshots are published here too (`_snapshots/<id>/`), so a worker on another host that lacks
the folder a snapshot was written to (its own data dir) reads the store's copy instead.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path

from orchestration.ml.errors import StorageError
from orchestration.types import CheckpointInfo, Snapshot

MARKER = "COMPLETE"
FINAL_DIR = "final"
SNAPSHOTS_DIR = "_snapshots"  # never a run key's first segment: experiment ids start alphanumeric
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
_SEGMENT = re.compile(r"[^A-Za-z0-9._-]")


def write_marker(folder: Path, content: dict) -> None:
    """Write `folder/COMPLETE` atomically, so a reader never sees half a marker."""
    tmp = folder / f".{MARKER}.{uuid.uuid4().hex}"
    tmp.write_text(json.dumps(content))
    os.replace(tmp, folder / MARKER)


def _is_complete(folder: Path) -> bool:
    return (folder / MARKER).is_file()


def checkpoint_step(name: str) -> int | None:
    """The step of a folder named `checkpoint-<step>`; None for any other name."""
    match = _CHECKPOINT.match(name)
    return int(match.group(1)) if match else None


def missing_snapshot(snapshot: Snapshot, store: str) -> StorageError:
    return StorageError(
        f"snapshot {snapshot.snapshot_id}: not at {snapshot.path} on this worker and not in the "
        f"checkpoint store {store}; give every worker the same BERTFLEET_CHECKPOINT_STORE "
        "(a shared folder or object store, see docs/deploy.md) and retry the run"
    )


def _link_or_copy(src: str, dst: str) -> None:
    """Snapshots never change once written, so a hard link is as good as a copy, and free."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


class CheckpointStore:
    """Checkpoints of every run under one root: `<root>/<run_key>/checkpoint-<step>/`."""

    def __init__(self, root: str | Path):
        root = str(root)
        if root.startswith("file://"):
            root = root[len("file://") :]
        elif "://" in root:  # refuse loudly rather than write to a local folder named "s3:"
            raise ValueError(
                f"checkpoint store {root!r}: CheckpointStore takes only local (or shared, "
                "mounted) folders; open object store URIs with remote_store.open_store()"
            )
        self.root = Path(root)

    def run_dir(self, run_key: str) -> Path:
        """The run's folder; `run_key` segments ("experiment/config") are sanitised, never `..`."""
        segments = [_SEGMENT.sub("_", part) for part in run_key.split("/") if part]
        if not segments or any(part in {".", ".."} for part in segments):
            raise ValueError(f"run_key {run_key!r} must be non-empty path segments without '..'")
        return self.root.joinpath(*segments)

    def ensure_writable(self, run_key: str, need_bytes: int) -> None:
        """Fail before training when the run's folder cannot take a checkpoint of `need_bytes`.

        Otherwise the first save fails deep inside the Trainer with an error that names neither
        the folder nor the cause (a full disk surfaces as a safetensors serialisation error), and
        each retry trains again up to that point. Writes a probe file because permission bits
        say nothing when the worker runs as root.
        """
        folder = self.run_dir(run_key)
        fix = (
            "free space or fix permissions there, or set BERTFLEET_CHECKPOINT_STORE to a "
            "writable volume with room"
        )
        try:
            folder.mkdir(parents=True, exist_ok=True)
            probe = folder / f".probe-{uuid.uuid4().hex}"
            probe.write_bytes(bytes(4096))
            probe.unlink()
            free = shutil.disk_usage(folder).free
        except OSError as err:
            raise StorageError(
                f"checkpoint store: cannot write to {folder} ({err.strerror or err}); {fix}"
            ) from err
        if free < need_bytes:
            raise StorageError(
                f"checkpoint store: {folder} has {free / 1e6:.1f} MB free, a checkpoint of this "
                f"run needs about {need_bytes / 1e6:.0f} MB; {fix}"
            )

    def is_complete(self, uri: str) -> bool:
        """True when the checkpoint (or final model) at `uri` was fully written."""
        return _is_complete(Path(uri))

    def checkpoint_dir(self, run_key: str, step: int) -> Path:
        return self.run_dir(run_key) / f"checkpoint-{step}"

    def final_model_dir(self, run_key: str) -> Path:
        return self.run_dir(run_key) / FINAL_DIR

    def _steps(self, run_key: str) -> list[tuple[int, Path]]:
        """Every checkpoint folder of the run, complete or not, oldest step first."""
        run_dir = self.run_dir(run_key)
        if not run_dir.is_dir():
            return []
        found = [
            (step, path)
            for path in run_dir.iterdir()
            if path.is_dir() and (step := checkpoint_step(path.name)) is not None
        ]
        return sorted(found)

    def info(self, uri: str) -> CheckpointInfo | None:
        """The checkpoint at `uri` as its marker recorded it; None unless it is complete."""
        folder = Path(uri)
        if not _is_complete(folder):
            return None
        marker = json.loads((folder / MARKER).read_text())
        return CheckpointInfo(uri=str(folder), **marker)

    def checkpoints(self, run_key: str) -> list[CheckpointInfo]:
        """The complete checkpoints of the run, oldest step first."""
        return [info for _, path in self._steps(run_key) if (info := self.info(str(path)))]

    def latest(self, run_key: str) -> CheckpointInfo | None:
        """The complete checkpoint with the highest step (numerically), or None."""
        complete = self.checkpoints(run_key)
        return complete[-1] if complete else None

    def mark_complete(
        self, run_key: str, step: int, epoch: float, loss: float | None
    ) -> CheckpointInfo:
        """Declare `checkpoint-<step>` fully written; call only after the Trainer saved it."""
        folder = self.checkpoint_dir(run_key, step)
        write_marker(folder, {"step": step, "epoch": epoch, "loss": loss})
        return CheckpointInfo(uri=str(folder), step=step, epoch=epoch, loss=loss)

    def prune(self, run_key: str, keep: int, protect: int | None = None) -> None:
        """Keep the `keep` newest complete checkpoints, and the one at step `protect` (the best
        so far, which the run publishes in the end); drop older ones and dead partial saves."""
        complete = [info.step for info in self.checkpoints(run_key)]
        if not complete:
            return
        kept = {*complete[-keep:], protect}
        for step, path in self._steps(run_key):
            if step not in kept and step < complete[-1]:
                shutil.rmtree(path, ignore_errors=True)

    def discard_after(self, run_key: str, step: int) -> None:
        """Remove checkpoints newer than `step`, and partial saves, before training from `step`.

        The run will write those steps again; leaving a stale marked folder behind would let a
        crash in the middle of rewriting it pass for a complete checkpoint.
        """
        for found, path in self._steps(run_key):
            if found > step or not _is_complete(path):
                shutil.rmtree(path, ignore_errors=True)

    def publish_final(self, run_key: str, write: Callable[[Path], None]) -> Path:
        """Write the final model through `write(tmp_dir)`, mark it, then rename it into place.

        The final folder is therefore either absent, or complete; never half written.
        """
        final = self.final_model_dir(run_key)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.parent / f".{FINAL_DIR}-tmp-{uuid.uuid4().hex}"
        try:
            tmp.mkdir()
            write(tmp)
            write_marker(tmp, {"final": True})
            if final.exists():  # an earlier attempt finished too; same run, same weights
                stale = final.parent / f".{FINAL_DIR}-old-{uuid.uuid4().hex}"
                os.replace(final, stale)
                shutil.rmtree(stale, ignore_errors=True)
            os.replace(tmp, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return final

    # --- What a store on another host needs; trivial here, where everything is local. ---

    def local_copy(self, uri: str) -> str:
        """A local folder holding the checkpoint or final model at `uri`: `uri` itself here."""
        return uri

    def flush(self, run_key: str) -> None:
        """Wait for background uploads of the run; nothing is ever in flight in a local store."""

    def publish_snapshot(self, folder: Path, snapshot_id: str) -> None:
        """Put the snapshot where workers sharing this store (a mounted folder) find it."""
        target = self.root / SNAPSHOTS_DIR / snapshot_id
        if _is_complete(target):
            return
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.parent / f".{snapshot_id}-tmp-{uuid.uuid4().hex}"
        try:
            shutil.copytree(folder, tmp, copy_function=_link_or_copy)
            write_marker(tmp, {"snapshot_id": snapshot_id})
            os.rename(tmp, target)
        except OSError:
            if not _is_complete(target):  # else another worker published the same content first
                raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def local_snapshot(self, snapshot: Snapshot, snapshot_dir: Path) -> str:
        """A local folder with the snapshot: where it was made if that is on this host, else
        the store's copy. Snapshots are content-addressed, so any copy of the id will do."""
        if (Path(snapshot.path) / "snapshot.json").is_file():
            return snapshot.path
        shared = self.root / SNAPSHOTS_DIR / snapshot.snapshot_id
        if _is_complete(shared):
            return str(shared)
        raise missing_snapshot(snapshot, str(self.root))
