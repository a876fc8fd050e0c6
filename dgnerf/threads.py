"""CPU threads: how many the process may really use, and how idle ones wait (docs/performance.md).

torch starts one intra-op thread per core it sees. A process confined to fewer CPUs (taskset, a container's CPU
quota, a job scheduler's cgroup) then runs more threads than it has CPUs, and every parallel region waits for a
thread that is not running. `usable_cpus()` is what the process may actually use: its affinity mask, capped by
a cgroup CPU quota (v2 `cpu.max`, v1 `cpu.cfs_quota_us`). `configure()` sets torch's thread count from it unless
the user chose one (OMP_NUM_THREADS, or an explicit number).

Idle OpenMP threads: `dgnerf` (the command) starts with OMP_WAIT_POLICY=PASSIVE unless the environment sets it:
a thread that finishes its share sleeps instead of spinning, so on a busy machine it gives its core back to the
threads that still have work (ours or another process's). The policy is read once, when torch loads its OpenMP
runtime, so it only applies where dgnerf sets it before torch is imported (the command); a program that imports
torch first keeps its own setting.

Freed memory: a training step allocates and frees hundreds of megabytes of activations and gradients. glibc's
malloc hands large blocks back to the system when they are freed, so the next step takes ~35,000 page faults to
get them again (a tenth of a step's CPU time in the kernel on the demo's model, docs/performance.md).
`keep_freed_memory()` (the command calls it) tells glibc to keep up to 1 GiB of freed memory for reuse, unless the
environment sets a MALLOC_* or glibc.malloc tunable itself.

bf16 matrix units: `cpu_bf16_fast()` says whether the CPU multiplies bf16 matrices in hardware (AMX tiles with
AVX-512 BF16, e.g. Intel Xeon Sapphire Rapids and later). There a training step in bf16 (the fused MLP's GEMMs and
the renderer's convolutions through oneDNN, float32 accumulation) takes 0.77x the float32 step on the demo's model;
elsewhere bf16 is emulated and slower, so training stays float32 (docs/performance.md).
"""
from __future__ import annotations

import ctypes
import math
import os
import sys

WAIT_POLICY = "PASSIVE"


def set_wait_policy() -> bool:
    """OMP_WAIT_POLICY=PASSIVE unless the environment sets one; True if it was set here. Effective only before
    torch (its OpenMP runtime) is loaded."""
    if "OMP_WAIT_POLICY" in os.environ:
        return False
    os.environ["OMP_WAIT_POLICY"] = WAIT_POLICY
    return True


# glibc mallopt() parameters and the values keep_freed_memory() sets (measured: docs/performance.md).
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3
MALLOC_SETTINGS = {_M_TRIM_THRESHOLD: 1 << 30, _M_TOP_PAD: 256 << 20, _M_MMAP_THRESHOLD: 32 << 20}


def keep_freed_memory() -> bool:
    """Let glibc's malloc keep freed memory for reuse (trim above 1 GiB free, grow the heap 256 MiB at a time,
    blocks up to 32 MiB from the heap) instead of returning it to the system at every free; True if set here.
    Nothing is set where the environment has a MALLOC_* variable or a glibc.malloc tunable (the user's choice),
    or where the C library is not glibc."""
    if not sys.platform.startswith("linux") or any(k.startswith("MALLOC_") for k in os.environ) \
            or "glibc.malloc" in os.environ.get("GLIBC_TUNABLES", ""):
        return False
    try:
        libc = ctypes.CDLL(None)
        if not hasattr(libc, "gnu_get_libc_version"):  # musl and others: their mallopt means something else
            return False
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return all(mallopt(k, v) == 1 for k, v in MALLOC_SETTINGS.items())


def cpu_bf16_fast() -> bool:
    """The CPU has AMX tiles and AVX-512 BF16 (torch's own CPU feature checks; False where torch lacks them).
    DGNERF_CPU_BF16=0 or 1 overrides the answer (to compare the two on one machine)."""
    env = os.environ.get("DGNERF_CPU_BF16")
    if env in ("0", "1"):
        return env == "1"
    import torch

    cpu = getattr(torch, "cpu", None)
    try:
        return bool(cpu._is_amx_tile_supported() and cpu._is_avx512_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def cgroup_cpu_limit(root: str = "/sys/fs/cgroup") -> float | None:
    """The CPU quota of this process's cgroup in CPUs (e.g. 1.5), or None when there is none."""
    v2 = _read(os.path.join(root, "cpu.max"))  # "max 100000" or "<quota> <period>"
    if v2:
        parts = v2.split()
        if len(parts) == 2 and parts[0] != "max":
            try:
                quota, period = int(parts[0]), int(parts[1])
            except ValueError:
                return None
            return quota / period if quota > 0 and period > 0 else None
        return None
    quota, period = _read(os.path.join(root, "cpu", "cpu.cfs_quota_us")), _read(os.path.join(root, "cpu", "cpu.cfs_period_us"))
    try:
        q, p = int(quota), int(period)
    except (TypeError, ValueError):
        return None
    return q / p if q > 0 and p > 0 else None


def usable_cpus(root: str = "/sys/fs/cgroup") -> int:
    """CPUs this process may run on: the affinity mask, capped by the cgroup quota (rounded up), at least 1."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    limit = cgroup_cpu_limit(root)
    if limit is not None:
        n = min(n, max(1, math.ceil(limit)))
    return max(1, n)


def configure(threads: int | None = None) -> int:
    """Set torch's intra-op thread count: `threads` if given, else OMP_NUM_THREADS if the user set it (torch already
    follows it), else usable_cpus(). Returns the count in effect."""
    import torch  # the lowest layer: torch is imported here, after set_wait_policy() had its chance

    if threads is not None:
        if not 1 <= int(threads) <= 1024:
            raise ValueError(f"threads: expected 1..1024, got {threads}")
        torch.set_num_threads(int(threads))
    elif not os.environ.get("OMP_NUM_THREADS"):
        n = usable_cpus()
        if n != torch.get_num_threads():
            torch.set_num_threads(n)
    return torch.get_num_threads()


__all__ = ["MALLOC_SETTINGS", "WAIT_POLICY", "cgroup_cpu_limit", "configure", "keep_freed_memory", "set_wait_policy",
           "usable_cpus"]
