"""A competing CPU load for the contended benchmarks (docs/performance.md).

`CompetingLoad(jobs=2, threads=2)` starts `jobs` other Python processes, each a `threads`-thread torch job that
does what another training job does between its big kernels: small matrix products and elementwise work in a
loop (many short parallel regions). Busy loops alone do not show the problem this load shows: a fast path made of
parallel regions whose threads wait for a descheduled partner. Each process stops by itself after `max_seconds`
(so a crashed benchmark leaves nothing running for long) and is stopped when the `with` block ends.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time

_JOB = r"""
import sys, time, torch
torch.set_num_threads(int(sys.argv[2]))
end = time.monotonic() + float(sys.argv[1])
a, b = torch.randn(192, 192), torch.randn(192, 192)
x = torch.randn(48, 4096)
print("ready", flush=True)
while time.monotonic() < end:
    for _ in range(16):
        c = a @ b
        y = torch.relu(x * 1.01 + 0.1).sum(0)
        a = a + 1e-6 * c
"""


class CompetingLoad:
    """with CompetingLoad(jobs=2, threads=2): ...  # the block runs beside `jobs` other torch processes."""

    def __init__(self, jobs: int = 2, threads: int = 2, max_seconds: float = 900.0):
        if jobs < 0 or threads < 1 or max_seconds <= 0:
            raise ValueError(f"CompetingLoad: expected jobs >= 0, threads >= 1, max_seconds > 0; got {jobs}, {threads}, "
                             f"{max_seconds}")
        self.jobs, self.threads, self.max_seconds = int(jobs), int(threads), float(max_seconds)
        self.procs: list[subprocess.Popen] = []

    def __enter__(self) -> "CompetingLoad":
        env = dict(os.environ, OMP_NUM_THREADS=str(self.threads), MKL_NUM_THREADS=str(self.threads))
        env.pop("OMP_WAIT_POLICY", None)  # the competitors behave like an ordinary torch job
        try:
            for _ in range(self.jobs):
                self.procs.append(subprocess.Popen([sys.executable, "-c", _JOB, str(self.max_seconds), str(self.threads)],
                                                   stdout=subprocess.PIPE, env=env, text=True))
            for p in self.procs:
                if p.stdout.readline().strip() != "ready":
                    raise RuntimeError(f"CompetingLoad: a competing job did not start (exit code {p.poll()})")
            time.sleep(0.5)  # let them reach their loop
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
        for p in self.procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
            if p.stdout is not None:
                p.stdout.close()
        self.procs = []

    @property
    def running(self) -> int:
        return sum(p.poll() is None for p in self.procs)
