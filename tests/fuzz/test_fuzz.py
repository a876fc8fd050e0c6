"""The fuzz campaign (tests/fuzz/__init__.py): a quick slice in the normal suite, the long run behind `-m long`
(scripts/fuzz.sh runs it and prints the table the README quotes)."""
import json
import os

import pytest

from tests.fuzz.campaign import run_campaign


def _report(rep) -> str:
    lines = [json.dumps(rep["summary"], indent=1)]
    for f in rep["failures"][:40]:
        lines.append(f"FAIL {f.get('key')}: {f.get('problems')} | {f.get('err', '')} | argv {f.get('argv')}")
    return "\n".join(lines)


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return str(tmp_path_factory.mktemp("fuzz"))


def test_the_campaign_sees_crashes_and_hangs(work):
    """Its own check: a case that kills the worker is a crash, one that sleeps past the timeout is a hang (also
    where the timer's signal cannot reach it: then the campaign's watchdog kills the worker), and the cases after
    them still run."""
    from tests.fuzz.campaign import run_family

    res = run_family("selftest", 5, 0, os.path.join(work, "world"), _scratch(work, "self"), timeout=2,
                     margin=3)
    by_key = {r["key"].split("|")[1]: r for r in res}
    assert set(by_key) == {"ok", "crash", "hang_python", "hang_native", "ok2"}, by_key
    assert by_key["ok"]["ok"] and by_key["ok2"]["ok"]
    assert by_key["crash"]["problems"][0].startswith("crash")
    assert by_key["hang_python"]["problems"][0].startswith("hang")
    assert by_key["hang_native"]["problems"][0].startswith("hang")


def _scratch(work, name):
    d = os.path.join(work, name)
    os.makedirs(d, exist_ok=True)
    return d


def test_fuzz_quick_slice(work):
    """A few dozen cases of each family (a seed of its own, so the slice is not the long run's first cases), two
    of them also as real processes."""
    rep = run_campaign({"cli": 40, "files": 25, "ops": 40}, seed=7, timeout=30, subprocess_every=20, work=work)
    s = rep["summary"]
    assert s["cli"]["cases"] == 40 and s["files"]["cases"] == 25 and s["ops"]["cases"] == 40
    assert s["cli"]["subprocess"] + s["files"]["subprocess"] >= 2
    assert not rep["failures"], _report(rep)


@pytest.mark.long
def test_fuzz_long_run(tmp_path):
    seed = int(os.environ.get("DGNERF_FUZZ_SEED", "1"))
    rep = run_campaign({"cli": 1200, "files": 600, "ops": 600}, seed=seed, timeout=60, subprocess_every=40,
                       work=str(tmp_path))
    out = os.environ.get("DGNERF_FUZZ_REPORT")
    if out:
        with open(out, "w") as f:
            json.dump({k: v for k, v in rep.items() if k != "results"}, f, indent=1, default=str)
    print("\n" + _report(rep))
    s = rep["summary"]
    assert s["cli"]["cases"] >= 1000 and s["files"]["cases"] >= 500 and s["ops"]["cases"] >= 500
    assert sum(v["cases"] for v in s.values()) >= 2000
    assert not rep["failures"], _report(rep)
