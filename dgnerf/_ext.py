"""Loading the compiled extension dgnerf._C.

The extension registers the `torch.ops.dgnerf.*` kernels. It must have been built against the torch
that is installed; if it is missing, fails to load, or was built for another torch version, the
pure-PyTorch twins (dgnerf/ops/reference.py) are used instead and ONE warning says why and how to fix it.
"""
from __future__ import annotations

import json
import os
import warnings

import torch

from dgnerf import threads
from dgnerf._version import __version__

_META_PATH = os.path.join(os.path.dirname(__file__), "_build_meta.json")
REBUILD_HINT = "rebuild it against the installed torch: pip install --no-build-isolation -e ."

loaded: bool = False
load_error: str | None = None
build_meta: dict = {}


def _load() -> None:
    global loaded, load_error, build_meta
    if os.path.exists(_META_PATH):
        try:
            with open(_META_PATH) as f:
                build_meta = json.load(f)
        except (OSError, ValueError):
            build_meta = {}
    built_for = build_meta.get("torch_version")
    if built_for is not None and built_for != torch.__version__:
        load_error = (
            f"dgnerf._C was built against torch {built_for} but torch {torch.__version__} is installed; "
            f"{REBUILD_HINT}"
        )
        return
    try:
        from dgnerf import _C  # noqa: F401  (importing it registers the ops)
    except ImportError as e:
        load_error = f"dgnerf._C could not be loaded ({e}); {REBUILD_HINT}"
        return
    loaded = True


_load()
_warned = False


def warn_fallback(what: str = "") -> None:
    """Warn once per process that an op runs on its pure-PyTorch twin."""
    global _warned
    if _warned:
        return
    _warned = True
    reason = load_error or "the extension has no kernel for this device"
    warnings.warn(
        f"dgnerf: using the pure-PyTorch reference ops{(' for ' + what) if what else ''} (slower): {reason}",
        RuntimeWarning,
        stacklevel=3,
    )


def _kernel_table() -> dict:
    """{(op, device_type): bool} for every dgnerf op, read once from the dispatcher (a plain dict, so
    that torch.compile can trace the kernel-or-fallback choice without a graph break)."""
    if not loaded:
        return {}
    table = {}
    for schema in torch._C._jit_get_all_schemas():
        if schema.name.startswith("dgnerf::"):
            op = schema.name.split("::", 1)[1]
            for dev, key in (("cpu", "CPU"), ("cuda", "CUDA")):
                table[(op, dev)] = torch._C._dispatch_has_kernel_for_dispatch_key(schema.name, key)
    return table


KERNELS = _kernel_table()


def has_kernel(op: str, device_type: str) -> bool:
    """True if `dgnerf::<op>` has a compiled kernel for the device type ('cpu' / 'cuda')."""
    return KERNELS.get((op, device_type), False)


def info() -> dict:
    """What was built and what this machine offers (printed by `dgnerf info`)."""
    try:
        isa = torch.backends.cpu.get_cpu_capability()
    except Exception:  # pragma: no cover - older torch
        isa = "unknown"
    compiled = {}
    if loaded:
        compiled = json.loads(torch.ops.dgnerf.build_info())
    return {
        "dgnerf": __version__,
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "extension_loaded": loaded,
        "extension_error": load_error,
        "built_against_torch": compiled.get("torch_version", build_meta.get("torch_version")),
        "cpu_kernels": loaded and has_kernel("integrate_features", "cpu"),
        "cuda_kernels": loaded and has_kernel("integrate_features", "cuda"),
        "cuda_arch_list": compiled.get("arch_list", build_meta.get("arch_list", "")),
        "cpu_vector_isa": isa,
        # training arithmetic on this CPU (TrainConfig.amp): bf16 with AMX, else float32 (docs/performance.md)
        "cpu_training": "bf16" if threads.cpu_bf16_fast() else "fp32",
        "cpu_bf16_epilogues": bool(loaded and hasattr(torch.ops.dgnerf, "bf16_rows")
                                   and torch.ops.dgnerf.bf16_rows(-1)),
        "threads": torch.get_num_threads(),
    }
