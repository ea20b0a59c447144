"""The machine the figures came from, how busy it was, and what it could do at best.

Peak FLOP/s is an estimate from the CPU's vector width and clock (stated with its assumption);
the training FLOPs follow the usual 6 x non-embedding parameters x tokens, plus the attention
term, over the tokens the Trainer actually computes (dynamic padding pads each batch to its
longest row).
"""

from __future__ import annotations

import math
import os
import platform
import subprocess
import time
from pathlib import Path

import numpy as np
import psutil
import pyarrow.parquet as pq
import torch

from orchestration.ml.models import load_for_training
from orchestration.types import RunConfig, Snapshot

_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile")


def _lscpu() -> dict[str, str]:
    out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    return {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in out.splitlines())}


def _clock_ghz() -> float | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("cpu MHz"):
                return round(float(line.split(":")[1]) / 1000, 2)
    except OSError:
        pass
    return None


def machine_info() -> dict:
    cpu = _lscpu()
    flags = set(cpu.get("Flags", "").split())
    info = {
        "cpu_model": cpu.get("Model name", platform.processor()),
        "vendor": cpu.get("Vendor ID"),
        "cpu_family": cpu.get("CPU family"),
        "cores": os.cpu_count(),
        "clock_ghz": _clock_ghz(),
        "ram_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "simd_flags": [f for f in _FLAGS if f in flags],
        "hypervisor": cpu.get("Hypervisor vendor"),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cuda_available": torch.cuda.is_available(),
        "python": platform.python_version(),
    }
    info["peak"] = peak_flops(info)
    return info


def peak_flops(info: dict) -> dict:
    """Peak FLOP/s from vector width x 2 FMA pipes x 2 FLOP per FMA x clock x cores.

    AMD Zen 4 (family 25) executes AVX-512 on 256-bit pipes; Zen 5 (family 26) and Intel server
    cores have full 512-bit FMA pipes. AVX512-BF16 dot products do twice the fp32 work per
    instruction. AMX would be far higher (not estimated here; `amx_*` flags say if present).
    """
    flags = set(info["simd_flags"])
    wide = "avx512f" in flags and not (
        info["vendor"] == "AuthenticAMD" and info["cpu_family"] == "25"
    )
    lanes = 16 if wide else 8 if "avx2" in flags else 4
    per_cycle = 2 * 2 * lanes
    ghz, cores = info["clock_ghz"] or 0.0, info["cores"] or 1
    fp32 = per_cycle * ghz * 1e9 * cores
    return {
        "fp32_flops": fp32,
        "bf16_flops": fp32 * 2 if "avx512_bf16" in flags else None,
        "assumption": (
            f"{cores} cores x {ghz} GHz (reported clock; boost may be higher) x "
            f"2 FMA pipes x {lanes} fp32 lanes x 2 FLOP/FMA = {per_cycle} FLOP/cycle"
        ),
    }


def machine_load(exclude: set[int], sample_s: float = 1.0) -> dict:
    """Load average and the processes (other than ours) using CPU, sampled over `sample_s`."""
    procs = [p for p in psutil.process_iter(["pid", "cmdline"]) if p.pid not in exclude]
    for p in procs:
        try:
            p.cpu_percent(None)
        except psutil.Error:
            pass
    time.sleep(sample_s)
    busy = []
    for p in procs:
        try:
            share = p.cpu_percent(None)
        except psutil.Error:
            continue
        if share >= 10:
            command = " ".join(p.info["cmdline"] or [])[:90]
            busy.append({"cpu_percent": round(share), "cmd": command})
    return {
        "loadavg_1_5_15": [round(x, 2) for x in os.getloadavg()],
        "busy_processes": sorted(busy, key=lambda b: -b["cpu_percent"]),
    }


def training_flops(cfg: RunConfig, snapshot_path: str) -> dict:
    """FLOPs of one training run of `cfg`: 6·N per token (N = parameters outside the
    embeddings) + 6·layers·context·hidden per token for attention, summed over padded batches
    (batch order simulated with the run's seed; the Trainer's own order differs, the totals
    barely)."""
    folder = Path(snapshot_path)
    snapshot = Snapshot.model_validate_json((folder / "snapshot.json").read_text())
    model, tokenizer, _ = load_for_training(cfg, snapshot.schema_)
    total = sum(p.numel() for p in model.parameters())
    embedding = sum(p.numel() for n, p in model.named_parameters() if ".embeddings." in n)
    matmul = total - embedding
    layers, hidden = model.config.num_hidden_layers, model.config.hidden_size
    texts = pq.read_table(folder / "train.parquet").column("text").to_pylist()
    lengths = np.array(
        [
            len(ids)
            for ids in tokenizer(texts, truncation=True, max_length=cfg.max_length)["input_ids"]
        ]
    )
    rng = np.random.default_rng(cfg.seed)
    tokens = attention = real = 0.0
    epochs = math.ceil(cfg.epochs)
    for epoch in range(epochs):
        order = rng.permutation(len(lengths))
        share = min(1.0, cfg.epochs - epoch)  # a fractional last epoch
        order = order[: math.ceil(len(order) * share)]
        for start in range(0, len(order), cfg.batch_size):
            batch = lengths[order[start : start + cfg.batch_size]]
            padded = int(batch.max()) * len(batch)
            tokens += padded
            attention += padded * int(batch.max())
            real += int(batch.sum())
    flops = 6 * matmul * tokens + 6 * layers * hidden * attention
    return {
        "params_total": total,
        "params_non_embedding": matmul,
        "tokens_padded": int(tokens),
        "tokens_real": int(real),
        "mean_length": round(float(lengths.mean()), 1),
        "train_flops": flops,
        # The rule of thumb with every parameter counted (embeddings are lookups, not matmuls).
        "train_flops_6NT_all_params": 6 * total * tokens,
    }
