"""Performance benchmarks: `python -m bench.run [--quick] [--out DIR] [--device cuda]`.

One invocation measures, on one machine and one configuration: the product's overhead against a
plain Hugging Face Trainer script, the cost of checkpointing, recovery after a SIGKILLed training
worker, parallel configurations on one worker, submit-to-first-step latency and warm inference
latency. It writes results.json, results.md and chart.png. docs/performance.md reads the figures.
"""
