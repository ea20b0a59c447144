"""The product's worker (`python -m orchestration.workers`), with step timing switched on.

    BENCH_PROBE_FILE=/tmp/steps.jsonl python -m bench.worker --role training|eval

Everything but the probe (bench.probe.install; only training uses it, in each run process,
through BERTFLEET_RUN_INIT) is the product's own code path. Both roles start through this
module, so their command line is the bench's own: tooling that stops `orchestration.workers`
processes on a shared machine leaves the bench's alone.
"""

import os

from bench.probe import install
from orchestration.workers import main

if __name__ == "__main__":
    install(os.environ["BENCH_PROBE_FILE"])
    os.environ["BERTFLEET_RUN_INIT"] = "bench.probe:install_from_env"  # before any run process
    main()
