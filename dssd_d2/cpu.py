"""What this CPU can do, from its instruction-set flags: training and deployment choose their
number formats by it (bfloat16 autocast needs AVX512-BF16 or AMX to be fast; int8 needs VNNI or
AMX not to saturate), and benchmarks print it beside every speed ratio."""

from typing import Optional, Set

__all__ = ["flags", "has_bfloat16", "has_int8_dot_product"]


def flags() -> Optional[Set[str]]:
    """The CPU's instruction-set flags from /proc/cpuinfo (Linux); None when unknown."""
    try:
        with open("/proc/cpuinfo") as f:
            return next(
                (set(line.split(":", 1)[1].split()) for line in f if line.startswith("flags")), None
            )
    except OSError:
        return None


def has_bfloat16() -> bool:
    """Whether the CPU has bfloat16 instructions (AVX512-BF16 or AMX; True when unknown)."""
    found = flags()
    return found is None or bool(found & {"avx512_bf16", "amx_bf16"})


def has_int8_dot_product() -> bool:
    """Whether the CPU has VNNI or AMX int8 instructions (True when unknown); without them,
    8-bit multiply-adds go through 16-bit sums that saturate."""
    found = flags()
    return found is None or bool(found & {"avx512_vnni", "avx_vnni", "amx_int8"})
