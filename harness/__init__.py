"""The one test harness: what the tests, the benchmarks (bench/) and the scripts (scripts/)
share to run the product for real and wait on it.

- harness.polling: bounded waits, sync and async, failing with what was awaited.
- harness.processes: child processes (a worker of a role, the app, `mlflow models serve` of a
  registered model, any logged command) started with a Settings' environment, waited for until
  ready (several side by side: start_together), killed like a dying machine or stopped
  gracefully; the starter CLI run to completion.
- harness.servers: the product's Temporal and MLflow servers on free loopback ports in a folder,
  a data dir whose built-in datasets link to the repo's, and the Settings pointing at them.
- harness.postgres: a throw-away PostgreSQL (Debian's binaries) on a loopback port, root-safe.
- harness.compose: deploy/compose.yaml's services, interpolated, service names to loopback.
- harness.stack: the compose deployment on this machine (PostgreSQL-backed MLflow, moto S3,
  Temporal, two training hosts, the eval worker, the app), with its start-up figures.
- harness.temporal: in-process workers and Temporal look-ups for a test's own process.
- harness.runs: shared configurations (tiny-bert on real data, heartbeat timeouts, bounds).
- harness.synthetic: a learnable synthetic task written in the snapshot format, and a bare
  snapshot record.
- harness.coherence: what an uninterrupted run ends with, and every way a result falls short.
- harness.fault_worker: a worker that freezes itself at a chosen point or traces its steps.
- harness.browser: headless Chromium, offline, and the steps tests and scripts share (the app
  opened, a screenshot, a prediction through an experiment's champion).

It is a package of its own, not part of `orchestration`: the product never imports it, and it
may import anything the product offers (servers, settings, workers) without a cycle.
"""
