"""Which number format a run trains in: `precision: auto` picks bf16 where the device does it
natively, fp32 elsewhere, and says why.

bf16 autocast roughly doubles the throughput of BERT fine-tuning where the hardware has bf16
instructions (measured on an AVX-512 BF16 CPU: 46 -> 83 samples/s) and costs no accuracy worth
naming; where bf16 is only emulated it is slower than fp32. So the choice is made per machine, at
run time, from what the device reports:
- CPU: the instruction-set flags the kernel reports (x86 `avx512_bf16` or `amx_bf16`, Arm
  `bf16`), read from /proc/cpuinfo. torch has no public query that tells native bf16 from the
  AVX-512 emulation it also accelerates, so the flags decide.
- CUDA: compute capability 8.0 (Ampere) or newer has bf16 tensor cores.
- MPS: fp32. Apple GPUs take bf16 only from macOS 14, and autocast there is not known to be
  faster than fp32 for this workload; fp32 is the safe default (ask for bf16 explicitly to try).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from orchestration.ml.errors import ConfigError

Resolved = Literal["fp32", "bf16", "fp16"]

# CPU feature flags (as /proc/cpuinfo names them) that mean bf16 arithmetic in hardware.
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")
_CPUINFO = Path("/proc/cpuinfo")


@dataclass(frozen=True)
class PrecisionChoice:
    """The precision a run trains in, and why (logged with the run)."""

    precision: Resolved
    reason: str


def cpu_bf16_flags(cpuinfo: str) -> list[str]:
    """The bf16 feature flags in /proc/cpuinfo text (x86 `flags`, Arm `Features` lines)."""
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in ("flags", "features"):
            flags = set(value.split())
            return [flag for flag in BF16_CPU_FLAGS if flag in flags]
    return []


def read_cpuinfo() -> str:
    """/proc/cpuinfo, or "" where there is none (macOS, Windows): no flags, so fp32."""
    try:
        return _CPUINFO.read_text()
    except OSError:
        return ""


def resolve_precision(
    requested: str, device: torch.device, cpuinfo: str | None = None
) -> PrecisionChoice:
    """The precision `requested` (a RunConfig.precision) means on `device`.

    `auto` becomes bf16 or fp32 by the device's capability; an explicit choice stays as it is,
    unless the device cannot do it at all (ConfigError). `cpuinfo` overrides /proc/cpuinfo
    (for tests)."""
    if requested == "fp16" and device.type != "cuda":
        raise ConfigError(
            f"precision: fp16 needs a CUDA GPU (device is {device}); use auto, bf16 or fp32"
        )
    if requested == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError(f"precision: {device} does not support bf16; use auto, fp16 or fp32")
    if requested in ("fp32", "bf16", "fp16"):
        return PrecisionChoice(requested, "set in the configuration")  # type: ignore[arg-type]
    if requested != "auto":
        raise ConfigError(f"precision: {requested!r} is not one of auto, fp32, bf16, fp16")
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        if _cuda_bf16(device):
            return PrecisionChoice("bf16", f"auto: CUDA capability {major}.{minor} has bf16")
        return PrecisionChoice("fp32", f"auto: CUDA capability {major}.{minor} has no bf16")
    if device.type == "cpu":
        flags = cpu_bf16_flags(read_cpuinfo() if cpuinfo is None else cpuinfo)
        if flags:
            return PrecisionChoice("bf16", f"auto: CPU has native bf16 ({', '.join(flags)})")
        return PrecisionChoice(
            "fp32", f"auto: CPU has no native bf16 (none of {', '.join(BF16_CPU_FLAGS)})"
        )
    return PrecisionChoice("fp32", f"auto: fp32 on {device.type}")


def _cuda_bf16(device: torch.device) -> bool:
    """Native bf16 on this GPU: compute capability 8.0 (Ampere) or newer."""
    return torch.cuda.get_device_capability(device) >= (8, 0)
