import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# The benchmarks measure what the `dgnerf` command runs with: its OpenMP wait policy, set before torch loads.
from dgnerf import threads  # noqa: E402

threads.set_wait_policy()

import pytest  # noqa: E402
import torch  # noqa: E402

from benchmarks import harness  # noqa: E402

# DGNERF_BENCH_DEVICES=cuda (the GPU check script) skips the slow CPU runs on the GPU machine.
_wanted = os.environ.get("DGNERF_BENCH_DEVICES", "cpu,cuda").split(",")
DEVICES = [d for d in ("cpu", "cuda") if d in _wanted and (d == "cpu" or torch.cuda.is_available())]


@pytest.fixture(params=DEVICES)
def device(request):
    return torch.device(request.param)


def pytest_sessionfinish(session, exitstatus):
    if harness.RESULTS:
        paths = harness.write_results()
        tr = session.config.pluginmanager.get_plugin("terminalreporter")
        text = "\n" + harness.table() + "\nwritten: " + ", ".join(paths) + "\n"
        if tr is not None:
            tr.write_line(text)
        else:
            print(text)


def pytest_collection_modifyitems(config, items):
    # CPU-only benchmarks (named *cpu*) are skipped when DGNERF_BENCH_DEVICES leaves the CPU out.
    if "cpu" in _wanted:
        return
    skip = pytest.mark.skip(reason="DGNERF_BENCH_DEVICES excludes cpu")
    for item in items:
        if "cpu" in item.name.lower():
            item.add_marker(skip)
