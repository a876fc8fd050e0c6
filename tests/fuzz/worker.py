"""Runs cases start..start+count-1 of one family in this process and prints one JSON line per case:
{"start": i} before it runs (so a crash is pinned on it), then {"i", "key", "ok", "outcome", "problems", ...}.

    python -m tests.fuzz.worker --family cli --seed 0 --start 0 --count 50 --world W --scratch S [--subprocess-every N]

CLI and file cases run through dgnerf.cli.main(argv) in-process, in an empty case directory (the working directory),
stdout/stderr captured, with a timer that interrupts a case running past --timeout. After each: the checks of
cases.py's docstring, and that nothing was written (the case directory, the world, the temp directory, the cache).
Every --subprocess-every-th case also runs as a real `python -m dgnerf` process (its exit status and stderr)."""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CLEAN_ERRORS = ("ValueError", "TypeError", "RuntimeError", "DgnerfError", "NotImplementedError", "IndexError",
                "OutOfMemoryError")


class CaseTimeout(BaseException):
    """Raised by the timer in the case's own thread (a BaseException: nothing in dgnerf catches it)."""


def snapshot(*dirs) -> dict:
    out = {}
    for d in dirs:
        if not d or not os.path.isdir(d):
            continue
        for root, ds, fs in os.walk(d):
            for n in ds + fs:
                p = os.path.join(root, n)
                try:
                    st = os.lstat(p)
                except OSError:
                    continue
                out[p] = (st.st_size, st.st_mtime_ns) if n in fs else ("dir",)
    return out


def diff(before: dict, after: dict) -> list[str]:
    changes = [f"new {p}" for p in sorted(set(after) - set(before))]
    changes += [f"removed {p}" for p in sorted(set(before) - set(after))]
    changes += [f"changed {p}" for p in sorted(set(before) & set(after)) if before[p] != after[p] and before[p] != ("dir",)]
    return changes


def install_fakes():
    """MediaPipe, its versions check and FaceNet replaced by fakes (the files, not the detectors, are under test)."""
    from dgnerf.preprocess import pipeline
    from tests.fuzz import world

    class Faces:
        def __init__(self, static):
            self.f = world.fake_faces(static)

        def __call__(self, rgb):
            return self.f(rgb)

        def close(self):
            pass

    class Seg:
        def __init__(self, *a):
            pass

        def __call__(self, rgb):
            return world.fake_segment(rgb)

        def close(self):
            pass

    pipeline.MediaPipeFaces = Faces
    pipeline.MediaPipeSegmenter = Seg
    pipeline.make_encoder = lambda *a, **k: world.fake_encoder
    pipeline.preprocess_package_problems = lambda **k: []


def _run_log(change: str) -> bool:
    """A change to a training run's logs (not its checkpoints)."""
    p = change.split(" ", 1)[1]
    return ("/tensorboard" in p or "/samples" in p or p.endswith(("/metrics.jsonl", "/train_config.json"))) \
        and "/checkpoints" not in p


def judge_cli(case, rc, out, err, secs) -> list[str]:
    problems = []
    text = err.strip()
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if "Traceback" in err or "Traceback" in out:
        problems.append("traceback")
    if "internal error" in err:
        problems.append("internal error (an exception the command did not turn into its own message)")
    if case.expect.startswith("may_pass") and rc == 0:
        return problems
    if rc == 0:
        problems.append("silent success (exit 0 for an input that must be refused)")
        return problems
    if case.expect in ("check", "may_pass_check") and rc == 1:
        if len(lines) != 1 or not any(t in lines[0] for t in case.tokens):
            problems.append(f"dataset check: the stderr summary should be one line naming {case.tokens}")
        return problems
    if rc != 2:
        problems.append(f"exit status {rc} (2 expected)")
    if len(lines) != 1:
        problems.append(f"{len(lines)} stderr lines (1 expected)")
    elif not lines[0].startswith("dgnerf"):
        problems.append("the error line does not start with 'dgnerf'")
    if lines and not any(t in text for t in case.tokens if t):
        problems.append(f"the error names none of {case.tokens}")
    return problems


def run_cli(case, world, scratch, timeout) -> dict:
    from dgnerf.cli import main

    case_dir = tempfile.mkdtemp(prefix="case-", dir=scratch)
    tmp = os.path.join(scratch, "tmp")
    cache = world["cache"]
    old_cwd = os.getcwd()
    env_old = {k: os.environ.get(k) for k in ("DGNERF_CACHE", *case.env)}
    problems, rc, out, err = [], None, "", ""
    t0 = time.time()
    try:
        os.chdir(case_dir)
        if case.setup:
            case.setup(case_dir, world)
        os.environ["DGNERF_CACHE"] = cache
        for k, v in case.env.items():
            os.environ[k] = os.path.join(case_dir, v) if k == "DGNERF_CACHE" else v
        before = snapshot(case_dir, world["root"], tmp, os.environ["DGNERF_CACHE"])
        so, se = io.StringIO(), io.StringIO()
        signal.setitimer(signal.ITIMER_REAL, timeout)
        try:
            with contextlib.redirect_stdout(so), contextlib.redirect_stderr(se):
                try:
                    rc = main(list(case.argv))
                except SystemExit as e:  # the parser's own exit
                    rc = e.code if isinstance(e.code, int) else 2
        except CaseTimeout:
            problems.append(f"hang (no result in {timeout} s)")
        except BaseException as e:  # noqa: BLE001 - main() let an exception out: a traceback for the user
            problems.append(f"exception escaped main(): {type(e).__name__}: {str(e)[:300]}")
            se.write(traceback.format_exc())
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
        out, err = so.getvalue(), se.getvalue()
        secs = time.time() - t0
        if rc is not None:
            problems += judge_cli(case, rc, out, err, secs)
        after = snapshot(case_dir, world["root"], tmp, os.environ["DGNERF_CACHE"])
        written = diff(before, after)
        if case.expect.startswith("may_pass") and rc not in (0, None):
            # a resumed run that trained before a fault stopped it keeps the logs of those steps (no checkpoint)
            written = [c for c in written if not _run_log(c)]
        if (rc not in (0, None) or not case.expect.startswith("may_pass")) and written:
            problems.append("left behind: " + "; ".join(written[:5]))
        if os.path.exists(os.path.join(case_dir, "PWNED_BY_PICKLE")):
            problems.append("a pickle was unpickled")
    except BaseException as e:  # noqa: BLE001 - the case's own setup failed: a bug of the campaign, reported as such
        problems.append(f"campaign error: {type(e).__name__}: {e}")
    finally:
        os.chdir(old_cwd)
        for k, v in env_old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        shutil.rmtree(case_dir, ignore_errors=True)
        for n in os.listdir(tmp):  # what a case left in the temp directory was reported above
            p = os.path.join(tmp, n)
            shutil.rmtree(p, ignore_errors=True) if os.path.isdir(p) else os.remove(p)
    first = next((ln for ln in err.strip().splitlines() if ln.strip()), "")
    return {"ok": not problems, "problems": problems, "rc": rc, "err": first[:400], "outcome": _outcome(rc),
            "secs": round(time.time() - t0, 3)}


def run_cli_subprocess(case, world, scratch, timeout) -> dict:
    """The same case as a real process: exit status, stderr, nothing written."""
    case_dir = tempfile.mkdtemp(prefix="subcase-", dir=scratch)
    problems = []
    try:
        if case.setup:
            case.setup(case_dir, world)
        env = dict(os.environ, DGNERF_CACHE=world["cache"], PYTHONPATH=ROOT, OMP_NUM_THREADS="1")
        env.update({k: (os.path.join(case_dir, v) if k == "DGNERF_CACHE" else v) for k, v in case.env.items()})
        env.pop("DGNERF_DEBUG", None)
        before = snapshot(case_dir, world["root"])
        try:
            r = subprocess.run([sys.executable, "-m", "dgnerf", *case.argv], cwd=case_dir, env=env, capture_output=True,
                               text=True, timeout=timeout + 30, stdin=subprocess.DEVNULL)
            problems += judge_cli(case, r.returncode, r.stdout, r.stderr, 0)
            if r.returncode < 0:
                problems.append(f"killed by signal {-r.returncode}")
            rc, first = r.returncode, r.stderr.strip().splitlines()[:1]
        except subprocess.TimeoutExpired:
            problems.append("hang (subprocess)")
            rc, first = None, []
        written = diff(before, snapshot(case_dir, world["root"]))
        if written and not (case.expect.startswith("may_pass") and rc == 0):
            problems.append("left behind: " + "; ".join(written[:5]))
    finally:
        shutil.rmtree(case_dir, ignore_errors=True)
    return {"ok": not problems, "problems": problems, "rc": rc, "err": (first[0] if first else "")[:400]}


def run_op(case, timeout) -> dict:
    problems, outcome, info = [], None, None
    t0 = time.time()
    signal.setitimer(signal.ITIMER_REAL, timeout)
    try:
        info = case.op()
        outcome = "returned"
    except CaseTimeout:
        problems.append(f"hang (no result in {timeout} s)")
    except BaseException as e:  # noqa: BLE001
        outcome = "rejected"
        name, msg = type(e).__name__, str(e)
        if name not in CLEAN_ERRORS:
            problems.append(f"unclean error {name}: {msg[:200]}")
        elif not (any(t in msg for t in case.tokens) or "dgnerf" in msg):
            problems.append(f"the error names neither the op nor the argument: {name}: {msg[:200]}")
        info = {"error": f"{name}: {msg[:200]}"}
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
    if outcome == "returned":
        if case.op_expect == "reject":
            problems.append(f"silent success: returned {info}")
        elif case.op_expect == "nonfinite" and isinstance(info, dict) and not info.get("finite_out", True):
            problems.append("NaN/Inf input passed through to the output with the checks on")
    return {"ok": not problems, "problems": problems, "outcome": outcome, "info": str(info)[:300],
            "secs": round(time.time() - t0, 3)}


def _outcome(rc):
    return None if rc is None else ("passed" if rc == 0 else "refused")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--family", required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--start", type=int, default=0)
    ap.add_argument("--count", type=int, required=True)
    ap.add_argument("--world", required=True)
    ap.add_argument("--scratch", required=True)
    ap.add_argument("--timeout", type=float, default=30.0)
    ap.add_argument("--subprocess-every", type=int, default=0)
    a = ap.parse_args()

    import torch

    torch.set_num_threads(1)
    from tests.fuzz import cases, world as W

    w = W.build_world(a.world)
    tmp = os.path.join(a.scratch, "tmp")
    os.makedirs(tmp, exist_ok=True)
    tempfile.tempdir = tmp  # anything a case leaves in the temp directory is seen
    os.environ["TMPDIR"] = tmp

    def on_alarm(signum, frame):
        raise CaseTimeout()
    signal.signal(signal.SIGALRM, on_alarm)
    install_fakes_needed = a.family in ("cli", "files")
    todo = cases.generate(a.family, a.count, a.seed, w, start=a.start)
    if install_fakes_needed:
        from dgnerf.preprocess import pipeline

        real = {k: getattr(pipeline, k) for k in ("MediaPipeFaces", "MediaPipeSegmenter", "make_encoder",
                                                   "preprocess_package_problems")}
    for k, case in enumerate(todo):
        i = a.start + k
        print(json.dumps({"start": i, "key": case.key}), flush=True)
        if a.family in ("ops", "selftest"):
            res = run_op(case, a.timeout)
        else:
            if case.fakes:
                install_fakes()
            try:
                res = run_cli(case, w, a.scratch, a.timeout)
                if a.subprocess_every and case.subprocess_ok and i % a.subprocess_every == 0:
                    res["subprocess"] = run_cli_subprocess(case, w, a.scratch, a.timeout)
                    if not res["subprocess"]["ok"]:
                        res["ok"] = False
                        res["problems"] = res["problems"] + ["subprocess: " + p for p in res["subprocess"]["problems"]]
            finally:
                if case.fakes:
                    for k2, v in real.items():
                        setattr(pipeline, k2, v)
        res.update({"i": i, "key": case.key, "expect": case.expect if a.family != "ops" else case.op_expect,
                    "argv": case.argv})
        print(json.dumps(res, default=str), flush=True)


if __name__ == "__main__":
    main()
