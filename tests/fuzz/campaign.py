"""Runs families of cases through workers (tests/fuzz/worker.py): a worker that dies mid-case is a crash of that case
and a worker silent past the case timeout is a hang; both restart after the case. Workers run under a memory limit
(RLIMIT_AS), so a case that asks for absurd amounts of memory fails inside the worker instead of taking the machine.

    python -m tests.fuzz.campaign --cli 1200 --files 600 --ops 600 --seed 1 --out fuzz_report.json
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MEMORY_LIMIT = 8 << 30  # bytes of address space per worker


def _limits():
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))
    os.nice(5)


def run_family(family: str, count: int, seed: int, world: str, scratch: str, timeout: float = 30.0,
               subprocess_every: int = 0, log=None, margin: float = 60.0) -> list[dict]:
    """Every case's result (one dict each, in order). A worker silent for timeout + margin seconds inside a case
    (the case's own timer did not fire: a hang where no signal is delivered) is killed."""
    results: dict[int, dict] = {}
    start = 0
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS="1",
               TORCHINDUCTOR_CACHE_DIR=os.path.join(scratch, "torch-cache"),
               PYTHONUNBUFFERED="1")
    env.pop("DGNERF_DEBUG", None)
    while start < count:
        cmd = [sys.executable, "-m", "tests.fuzz.worker", "--family", family, "--seed", str(seed), "--start", str(start),
               "--count", str(count - start), "--world", world, "--scratch", scratch, "--timeout", str(timeout),
               "--subprocess-every", str(subprocess_every)]
        # stderr to a file: a pipe nobody reads until the end would block a chatty worker
        err_path = os.path.join(scratch, f"worker-{family}-{start}.err")
        with open(err_path, "wb") as err_file:
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err_file, env=env, cwd=scratch,
                                    preexec_fn=_limits, stdin=subprocess.DEVNULL)
        fd = proc.stdout.fileno()
        os.set_blocking(fd, False)
        current, key, last, buf = None, None, time.time(), b""
        # the worker's first case waits for torch's import and the world: a longer grace before it
        grace = timeout + 120
        hung = False

        def take(lines):
            nonlocal current, key, grace
            for line in lines:
                if not line.strip():
                    continue
                rec = json.loads(line)
                if "start" in rec and "ok" not in rec:
                    current, key = rec["start"], rec["key"]
                    grace = timeout + margin
                else:
                    results[rec["i"]] = rec
                    current = None
                    if log:
                        log(rec)

        while True:
            try:
                chunk = os.read(fd, 1 << 16)
            except BlockingIOError:
                chunk = None
            if chunk:
                buf += chunk
                last = time.time()
                *lines, buf = buf.split(b"\n")
                take(lines)
                continue
            if chunk == b"" or proc.poll() is not None:  # end of output: the worker is done (or died)
                proc.wait()
                os.set_blocking(fd, True)
                rest = proc.stdout.read()
                take((buf + rest).split(b"\n"))
                break
            if time.time() - last > grace:
                hung = True
                proc.kill()
                proc.wait()
                break
            time.sleep(0.01)
        proc.stdout.close()
        with open(err_path, "rb") as f:
            err = f.read().decode("utf-8", "replace")
        if current is not None:  # the worker died (or hung) inside this case
            what = "hang (the worker stopped answering)" if hung else f"crash (worker exit {proc.returncode})"
            results[current] = {"i": current, "key": key, "ok": False, "problems": [what], "stderr": err[-2000:]}
            if log:
                log(results[current])
            start = current + 1
        elif len(results) < count and proc.returncode not in (0, None):
            raise RuntimeError(f"the {family} worker failed outside any case (exit {proc.returncode}): {err[-3000:]}")
        else:
            start = max(results) + 1 if results else count
    return [results[i] for i in sorted(results)]


def summarize(family_results: dict) -> dict:
    out = {}
    for fam, res in family_results.items():
        s = {"cases": len(res), "failed": sum(not r["ok"] for r in res)}
        probs = [p for r in res for p in r.get("problems", [])]
        for label, needle in (("tracebacks", "traceback"), ("crashes", "crash"), ("hangs", "hang"),
                              ("silent_successes", "silent success"), ("left_behind", "left behind"),
                              ("internal_errors", "internal error"), ("unclear_messages", "names"),
                              ("escaped_exceptions", "exception escaped")):
            s[label] = sum(needle in p for p in probs)
        if fam == "ops":
            s["rejected"] = sum(r.get("outcome") == "rejected" for r in res)
            s["returned"] = sum(r.get("outcome") == "returned" for r in res)
        else:
            s["may_pass"] = sum(str(r.get("expect", "")).startswith("may_pass") for r in res)
            s["may_pass_accepted"] = sum(str(r.get("expect", "")).startswith("may_pass") and r.get("rc") == 0 for r in res)
            s["subprocess"] = sum("subprocess" in r for r in res)
        out[fam] = s
    return out


def run_campaign(counts: dict, seed: int, timeout: float = 30.0, subprocess_every: int = 0, work: str | None = None,
                 log=None) -> dict:
    work = work or tempfile.mkdtemp(prefix="dgnerf-fuzz-")
    world = os.path.join(work, "world")
    results = {}
    t0 = time.time()
    for fam, n in counts.items():
        if n <= 0:
            continue
        scratch = os.path.join(work, f"scratch-{fam}")
        os.makedirs(scratch, exist_ok=True)
        results[fam] = run_family(fam, n, seed, world, scratch, timeout, subprocess_every if fam != "ops" else 0, log)
    return {"seed": seed, "seconds": round(time.time() - t0, 1), "summary": summarize(results),
            "failures": [r for res in results.values() for r in res if not r["ok"]], "results": results}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cli", type=int, default=1200)
    ap.add_argument("--files", type=int, default=600)
    ap.add_argument("--ops", type=int, default=600)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--timeout", type=float, default=30.0)
    ap.add_argument("--subprocess-every", type=int, default=40)
    ap.add_argument("--work", default=None, help="working directory (default: a fresh temporary one)")
    ap.add_argument("--out", default=None, help="write the full report (JSON) here")
    a = ap.parse_args()
    n = {"done": 0}

    def log(rec):
        n["done"] += 1
        if not rec["ok"]:
            print(f"FAIL {rec.get('key')}: {rec.get('problems')} | {rec.get('err', '')}", flush=True)
        elif n["done"] % 100 == 0:
            print(f"... {n['done']} cases", flush=True)

    rep = run_campaign({"cli": a.cli, "files": a.files, "ops": a.ops}, a.seed, a.timeout, a.subprocess_every, a.work, log)
    if a.out:
        with open(a.out, "w") as f:
            json.dump(rep, f, indent=1, default=str)
    print(json.dumps({"seed": rep["seed"], "seconds": rep["seconds"], "summary": rep["summary"]}, indent=1))
    sys.exit(1 if rep["failures"] else 0)


if __name__ == "__main__":
    main()
