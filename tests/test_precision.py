"""`precision: auto` resolves per device capability: bf16 where the hardware does bf16, fp32
elsewhere; an explicit choice is kept, or refused where the device cannot do it at all."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from orchestration.ml.errors import ConfigError
from orchestration.ml.precision import BF16_CPU_FLAGS, cpu_bf16_flags, resolve_precision
from orchestration.types import RunConfig

CPU = torch.device("cpu")

# /proc/cpuinfo excerpts as the kernel writes them (one core each; whole files repeat them).
AMD_EPYC_ZEN5 = """processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 26
model name\t: AMD EPYC 9B45
flags\t\t: fpu vme de pse sse sse2 avx avx2 fma avx512f avx512dq avx512bw avx512vl \
avx512_bf16 avx512_vnni avx512_vbmi2 vaes
"""
INTEL_SAPPHIRE_RAPIDS = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz
flags\t\t: fpu sse2 avx avx2 avx512f avx512bw avx512_bf16 amx_bf16 amx_tile amx_int8
"""
INTEL_ICE_LAKE = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8375C CPU @ 2.90GHz
flags\t\t: fpu sse2 avx avx2 fma avx512f avx512dq avx512bw avx512vl avx512_vnni
"""
GRAVITON3 = """processor\t: 0
BogoMIPS\t: 2100.00
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics sve bf16 i8mm svebf16
CPU implementer\t: 0x41
"""
GRAVITON2 = """processor\t: 0
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm
"""


@pytest.mark.parametrize(
    ("cpuinfo", "flags", "precision"),
    [
        (AMD_EPYC_ZEN5, ["avx512_bf16"], "bf16"),
        (INTEL_SAPPHIRE_RAPIDS, ["avx512_bf16", "amx_bf16"], "bf16"),
        (INTEL_ICE_LAKE, [], "fp32"),  # AVX-512 without BF16: bf16 would only be emulated
        (GRAVITON3, ["bf16"], "bf16"),
        (GRAVITON2, [], "fp32"),
        ("", [], "fp32"),  # no /proc/cpuinfo (macOS, Windows)
    ],
    ids=["epyc-zen5", "sapphire-rapids", "ice-lake", "graviton3", "graviton2", "none"],
)
def test_auto_on_cpu_follows_the_bf16_feature_flags(cpuinfo, flags, precision):
    assert cpu_bf16_flags(cpuinfo) == flags
    choice = resolve_precision("auto", CPU, cpuinfo)
    assert choice.precision == precision
    assert choice.reason.startswith("auto: CPU has ")
    assert all(flag in choice.reason for flag in flags)


def test_auto_on_this_machine_matches_its_own_cpuinfo():
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    first_flags = next(
        (line for line in text.splitlines() if line.lower().startswith(("flags", "features"))), ""
    )
    native = {flag for flag in BF16_CPU_FLAGS if flag in first_flags.split()}
    choice = resolve_precision("auto", CPU)
    assert choice.precision == ("bf16" if native else "fp32"), (choice, native)
    print(f"this machine: {choice}")


def test_explicit_choices_are_kept_or_refused_with_the_fix():
    assert RunConfig(name="a").precision == "auto"  # the default
    for precision in ("fp32", "bf16"):
        assert resolve_precision(precision, CPU, "").precision == precision
        assert resolve_precision(precision, CPU, AMD_EPYC_ZEN5).reason == "set in the configuration"
    with pytest.raises(ConfigError, match=r"^precision: fp16 needs a CUDA GPU .* use auto, bf16"):
        resolve_precision("fp16", CPU)
    assert resolve_precision("auto", torch.device("mps")).precision == "fp32"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_auto_on_cuda_follows_the_compute_capability():
    device = torch.device("cuda", 0)
    major, minor = torch.cuda.get_device_capability(device)
    choice = resolve_precision("auto", device)
    assert choice.precision == ("bf16" if major >= 8 else "fp32")
    assert f"{major}.{minor}" in choice.reason
