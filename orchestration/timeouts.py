"""Every timeout and retry count of the system, in one place, so they stay consistent.

Workflows, workers, the CLI and the app import these; none of them keeps a number of its own.
They are plain values (no I/O), safe to import from workflow code.
"""

from __future__ import annotations

from datetime import timedelta

# --- liveness ---------------------------------------------------------------------------------
# A worker that stops heartbeating for this long is considered dead and its attempt is retried
# elsewhere from its last checkpoint (the default of every request; a request may change it).
HEARTBEAT_TIMEOUT_S = 30
# The SDK sends heartbeats at most every 0.8 x heartbeat timeout by default; cancellation only
# reaches an activity with a heartbeat reply, so cap the gap to keep cancels within seconds.
HEARTBEAT_THROTTLE = timedelta(seconds=2)
# On Ctrl-C/SIGTERM a worker's running activities are told to stop and given this long: each
# training run finishes its current step, writes a checkpoint there and hands it over in that
# time (docs/deploy.md: give Kubernetes and systemd at least this plus a margin). Training
# workers take BERTFLEET_GRACEFUL_SHUTDOWN_S instead when set (a large model's checkpoint may
# need longer, above all when it is uploaded to an object store).
GRACEFUL_SHUTDOWN = timedelta(seconds=15)
# A cancelled run's training process is asked to stop at its next step end, and killed if it
# has not exited after this long.
CANCEL_GRACE_S = 5.0
# How often a training worker samples each run process's memory (RSS against
# BERTFLEET_RUN_MEMORY_LIMIT, and for the run's progress and MLflow system metrics).
RUN_MEMORY_SAMPLE_S = 0.25
# How long a cancelled worker thread may take to reach its next stop check before we stop
# waiting for it.
THREAD_STOP_GRACE_S = 120.0

# --- retries ----------------------------------------------------------------------------------
# Backoff between attempts of an ML activity is capped here; configuration errors never retry.
RETRY_MAX_INTERVAL = timedelta(seconds=30)
# Attempts of snapshot and train; a request may change it (ExperimentRequest.max_attempts).
TRAINING_MAX_ATTEMPTS = 20
EVALUATE_MAX_ATTEMPTS = 10
# Recording never repeats the evaluation, so it may retry longer: ~9 minutes of MLflow outage.
RECORD_EVAL_MAX_ATTEMPTS = 20

# --- activity durations -----------------------------------------------------------------------
# Reading and hashing a large dataset takes a while; heartbeats prove the worker is alive, and
# a snapshot never gets a heartbeat timeout shorter than this.
SNAPSHOT_TIMEOUT = timedelta(minutes=30)
SNAPSHOT_MIN_HEARTBEAT_S = 30
# Training may legitimately take days; liveness comes from the short heartbeat timeout.
TRAIN_TIMEOUT = timedelta(days=7)
EVAL_TIMEOUT = timedelta(hours=2)

# --- tracking (MLflow) ------------------------------------------------------------------------
# Tracking must not hold training hostage: bounded retries (~5 minutes), then the run continues
# untracked and its result says why.
TRACKING_TIMEOUT = timedelta(seconds=60)
TRACKING_MAX_INTERVAL = timedelta(seconds=10)
TRACKING_MAX_ATTEMPTS = 30

# --- inference --------------------------------------------------------------------------------
# One attempt covers a cold call too: fetching a registered model from MLflow and loading it.
PREDICT_TIMEOUT = timedelta(seconds=90)
PREDICT_MAX_ATTEMPTS = 2
# The whole inference workflow: every attempt of the predict activity fits inside it.
INFERENCE_TIMEOUT = PREDICT_TIMEOUT * PREDICT_MAX_ATTEMPTS
# A caller (the app) waits this much longer than the workflow may run, so the workflow's own
# timeout, with its clearer message, always wins.
INFERENCE_CALLER_MARGIN_S = 10.0

# --- eval worker capacity ----------------------------------------------------------------------
# Activities one eval worker runs at once (evaluations, recordings, tracking), and the threads
# its evaluations and recordings share. Predictions are local activities with threads of their
# own (PREDICT_THREADS), so they answer in seconds however many evaluations are running.
EVAL_WORKER_SLOTS = 8
PREDICT_THREADS = 4

# --- client calls -----------------------------------------------------------------------------
# A progress query is answered by a worker from its cache in milliseconds; longer means no
# worker is there to answer, which the caller reports instead of hanging.
QUERY_TIMEOUT = timedelta(seconds=5)

# --- worker versioning ------------------------------------------------------------------------
# A starting worker makes its version current once the server has registered it, which happens
# with its first poll: normally within a second, so this bound is only for a slow server.
SET_CURRENT_TIMEOUT = timedelta(seconds=30)
