"""Timing harness of `pytest benchmarks`: fast vs reference measured in the same run.

    from benchmarks.harness import time_ms, record
    ref_ms = time_ms(lambda: ref(x), device)
    fast_ms = time_ms(lambda: fast(x), device)
    record("integrate_features fwd+bwd", device, torch.float32, {"R": 1024, "S": 64, "C": 512}, ref_ms, fast_ms)

Every record carries name, device (the device's name: CPU model or GPU), dtype, shape, reference_ms,
fast_ms, speedup = reference_ms / fast_ms, plus torch version and thread count; extra keys are kept
(psnr_db, tflops, peak memory...). At the end of the session the records are written to
<dir>/<device>.json (merged by name with earlier records of the same device) and printed as a table.
<dir> is benchmarks/results/local/ (untracked: a benchmark run never dirties the checkout) unless
DGNERF_BENCH_RECORD=1 asks to update the committed records the README quotes (benchmarks/results/), or
DGNERF_BENCH_DIR names another folder (the device check writes under $OUT). CUDA timing uses events after warm-up; CPU timing uses perf_counter; both report the median.
"""
from __future__ import annotations

import json
import os
import platform
import statistics
import time

import torch

RESULTS: list[dict] = []
_COMMITTED = os.path.join(os.path.dirname(__file__), "results")
RESULTS_DIR = os.environ.get("DGNERF_BENCH_DIR") or (
    _COMMITTED if os.environ.get("DGNERF_BENCH_RECORD") == "1" else os.path.join(_COMMITTED, "local"))


def device_name(device) -> str:
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"CPU {name}"


def time_ms(fn, device="cpu", warmup: int = 2, iters: int = 5, min_time_s: float = 0.0) -> float:
    """Median wall time of fn() in milliseconds (CUDA: events, after synchronising)."""
    device = torch.device(device)
    for _ in range(warmup):
        fn()
    times = []
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        for _ in range(iters):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
    else:
        t_end = time.perf_counter() + min_time_s
        while len(times) < iters or time.perf_counter() < t_end:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def record(name, device, dtype, shape, reference_ms, fast_ms, **extra) -> dict:
    rec = {
        "name": name,
        "device": device_name(device),
        "device_type": torch.device(device).type,
        "dtype": str(dtype).replace("torch.", ""),
        "shape": shape,
        "reference_ms": round(float(reference_ms), 4),
        "fast_ms": round(float(fast_ms), 4),
        "speedup": round(float(reference_ms) / float(fast_ms), 3),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    rec.update(extra)
    RESULTS.append(rec)
    return rec


def write_results() -> list[str]:
    """Merge this session's records into RESULTS_DIR/<device>.json; returns the paths written."""
    paths = []
    by_path: dict[str, list[dict]] = {}
    for rec in RESULTS:
        slug = "cpu" if rec["device_type"] == "cpu" else "cuda-" + rec["device"].replace(" ", "_").lower()
        by_path.setdefault(os.path.join(RESULTS_DIR, f"{slug}.json"), []).append(rec)
    for path, recs in by_path.items():
        os.makedirs(os.path.dirname(path), exist_ok=True)
        old = []
        if os.path.exists(path):
            try:
                with open(path) as f:
                    old = json.load(f)
            except (OSError, ValueError):
                old = []
        key = lambda r: (r["name"], r["dtype"], json.dumps(r["shape"], sort_keys=True))  # noqa: E731
        new_keys = {key(r) for r in recs}
        merged = [r for r in old if key(r) not in new_keys] + recs
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(merged, f, indent=1)
        os.replace(tmp, path)
        paths.append(path)
    return paths


def table() -> str:
    rows = [("name", "device", "dtype", "shape", "ref ms", "fast ms", "speedup", "extra")]
    std = {"name", "device", "device_type", "dtype", "shape", "reference_ms", "fast_ms", "speedup", "torch", "threads", "time"}
    for r in RESULTS:
        extra = ", ".join(f"{k}={v}" for k, v in r.items() if k not in std)
        shape = ",".join(f"{k}={v}" for k, v in r["shape"].items()) if isinstance(r["shape"], dict) else str(r["shape"])
        rows.append((r["name"], r["device"][:28], r["dtype"], shape, f"{r['reference_ms']:.3f}", f"{r['fast_ms']:.3f}", f"{r['speedup']:.2f}x", extra))
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(row, widths)) for row in rows)
