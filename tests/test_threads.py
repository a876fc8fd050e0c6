"""CPU threads on a busy or confined machine (dgnerf/threads.py, csrc/include/dgnerf/parallel.h): the thread
count taken from what the process may use, the OpenMP wait policy of the `dgnerf` command, and kernels whose
results do not depend on how many threads ran them or which thread took which piece of work."""
import os
import subprocess
import sys

import pytest
import torch

from dgnerf import threads
from tests.test_mlp import HAS_KERNEL, make_mlp, params_of, run_fused

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _cgroup(tmp_path, files: dict) -> str:
    for name, text in files.items():
        p = tmp_path / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return str(tmp_path)


def test_cgroup_v2_quota(tmp_path):
    assert threads.cgroup_cpu_limit(_cgroup(tmp_path / "a", {"cpu.max": "150000 100000\n"})) == 1.5
    assert threads.cgroup_cpu_limit(_cgroup(tmp_path / "b", {"cpu.max": "max 100000\n"})) is None
    assert threads.cgroup_cpu_limit(_cgroup(tmp_path / "c", {"cpu.max": "garbage\n"})) is None
    assert threads.cgroup_cpu_limit(str(tmp_path / "none")) is None


def test_cgroup_v1_quota(tmp_path):
    root = _cgroup(tmp_path, {"cpu/cpu.cfs_quota_us": "50000\n", "cpu/cpu.cfs_period_us": "100000\n"})
    assert threads.cgroup_cpu_limit(root) == 0.5
    unlimited = _cgroup(tmp_path / "u", {"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"})
    assert threads.cgroup_cpu_limit(unlimited) is None


def test_usable_cpus_is_capped_by_the_quota(tmp_path):
    affinity = len(os.sched_getaffinity(0))
    assert threads.usable_cpus(str(tmp_path / "none")) == affinity
    assert threads.usable_cpus(_cgroup(tmp_path / "q", {"cpu.max": "100000 100000\n"})) == 1
    # a fractional quota rounds up, never to 0
    assert threads.usable_cpus(_cgroup(tmp_path / "f", {"cpu.max": "20000 100000\n"})) == 1


def _python(code: str, **env) -> str:
    e = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS")}
    e.update(env, PYTHONPATH=ROOT)
    return subprocess.run([sys.executable, "-c", code], env=e, capture_output=True, text=True, check=True,
                          timeout=120).stdout.strip()


def test_wait_policy_is_passive_unless_the_environment_says():
    code = "import dgnerf, os; print(os.environ['OMP_WAIT_POLICY'])"
    assert _python(code) == "PASSIVE"
    assert _python(code, OMP_WAIT_POLICY="ACTIVE") == "ACTIVE"


def test_configure_follows_the_affinity_mask():
    code = "import os; os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]}); from dgnerf import threads; print(threads.configure())"
    assert _python(code) == "1"
    # the user's OMP_NUM_THREADS wins: torch's own count is left as it is
    code2 = ("import os; os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]}); import torch; n = torch.get_num_threads(); "
             "from dgnerf import threads; print(threads.configure() == n, n)")
    assert _python(code2, OMP_NUM_THREADS="2").startswith("True 2")


def test_configure_rejects_a_bad_count():
    with pytest.raises(ValueError, match="threads: expected 1..1024, got 0"):
        threads.configure(0)


@pytest.mark.skipif(not HAS_KERNEL, reason="dgnerf._C without field_mlp")
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_mlp_gradients_do_not_depend_on_the_thread_count(precision):
    """The backward sums weight gradients per fixed group of tiles (whose size depends on the batch's shape, not on
    the threads): the same bits with 1, 2 or 3 threads."""
    torch.manual_seed(0)
    m = make_mlp(B=2, P=3000)
    g = torch.randn(2, 3000, 48)
    prev = torch.get_num_threads()
    grads = []
    try:
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            for p in params_of(m):
                p.grad = None
            sigma, feat = run_fused(m, precision=precision)
            ((feat * g).sum() + sigma.square().sum()).backward()
            grads.append([p.grad.clone() for p in params_of(m)])
    finally:
        torch.set_num_threads(prev)
    for other in grads[1:]:
        for a, b in zip(grads[0], other):
            assert torch.equal(a, b)


_REUSE = """
import os, resource, torch
from dgnerf import threads
print(threads.keep_freed_memory() if os.environ["REUSE_MODE"] == "keep" else "default")
for _ in range(2):
    [torch.ones(1 << 20) for _ in range(24)]
f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    xs = [torch.ones(1 << 20) for _ in range(24)]  # 96 MiB live at once, then freed: a training step's pattern
    del xs
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0) // 10)
"""


def _faults(mode: str, **env) -> tuple[str, int]:
    kept, faults = _python(_REUSE, REUSE_MODE=mode, **env).split()
    return kept, int(faults)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_freed_memory_is_reused_without_page_faults_unless_the_environment_says():
    kept, faults = _faults("keep")
    if kept == "False":
        pytest.skip("the C library is not glibc")
    # 96 MiB are 24,576 pages a round. The control: the same pattern with the environment's MALLOC_TOP_PAD_=0 (so
    # keep_freed_memory leaves malloc alone, and glibc returns the freed memory) re-faults them all (24,600
    # measured); glibc's plain default varies between runs (~100 or ~24,500 here). Kept: 0-102.
    kept, control = _faults("keep", MALLOC_TOP_PAD_="0")
    assert faults < 1000 and control > 10000, (faults, control)
    assert kept == "False"  # the user's own malloc setting is left alone


def test_info_names_the_cpu_training_arithmetic(monkeypatch):
    # `dgnerf info` says whether this CPU trains in bf16 (AMX) or float32, as the trainer will decide
    from dgnerf import _ext

    monkeypatch.setenv("DGNERF_CPU_BF16", "1")
    assert _ext.info()["cpu_training"] == "bf16"
    monkeypatch.setenv("DGNERF_CPU_BF16", "0")
    info = _ext.info()
    assert info["cpu_training"] == "fp32" and isinstance(info["cpu_bf16_epilogues"], bool)
