"""Without the compiled extension (or with one built for another torch) every op still works through its
pure-PyTorch twin, and one warning says why and how to rebuild."""
import json
import os
import shutil
import subprocess
import sys

import pytest

import dgnerf

PKG = os.path.dirname(dgnerf.__file__)

SCRIPT = r"""
import sys
# import the copy, not an editable install's package (its finder would map dgnerf._C to the checkout)
sys.meta_path = [f for f in sys.meta_path if "editable" not in (getattr(f, "__module__", "") or type(f).__module__).lower()]
import warnings, json, torch
warnings.simplefilter("always")
with warnings.catch_warnings(record=True) as caught:
    import dgnerf
    from dgnerf import _ext
    s = torch.rand(4, 6); f = torch.randn(4, 6, 3); t = torch.rand(4, 6); d = torch.rand(4, 6); b = torch.randn(3)
    out = dgnerf.ops.integrate_features(s, f, t, d, b)
    out2 = dgnerf.ops.integrate_features(s, f, t, d, b)
    ref = dgnerf.ops.reference.integrate_features_reference(s, f, t, d, b)
    c2w = torch.eye(4)[None, :3].clone(); c2w[0, 2, 3] = -4
    pts = dgnerf.ops.sample_rays(c2w, torch.tensor([[8.0, 8.0, 4.0, 4.0]]), 8, 8, 4, 3.0, 5.0)[0]
msgs = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
print(json.dumps({"loaded": _ext.loaded, "error": _ext.load_error, "warnings": msgs,
                  "equal": bool(torch.allclose(out[0], ref[0])), "pts": list(pts.shape)}))
"""


def run_copy(tmp_path, keep_so: bool, meta: dict | None):
    dst = tmp_path / "dgnerf"
    shutil.copytree(PKG, dst, ignore=shutil.ignore_patterns("__pycache__", *([] if keep_so else ["_C*.so"]),
                                                             "_build_meta.json"))
    if meta is not None:
        (dst / "_build_meta.json").write_text(json.dumps(meta))
    env = dict(os.environ, PYTHONPATH=str(tmp_path))
    res = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, cwd=str(tmp_path), timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


def test_missing_extension_falls_back_with_one_warning(tmp_path):
    r = run_copy(tmp_path, keep_so=False, meta=None)
    assert not r["loaded"] and "could not be loaded" in r["error"] and "pip install --no-build-isolation" in r["error"]
    assert len(r["warnings"]) == 1 and "pure-PyTorch" in r["warnings"][0]
    assert r["equal"] and r["pts"] == [1, 64, 4, 3]


@pytest.mark.skipif(not dgnerf._ext.loaded, reason="extension not built")
def test_extension_built_for_another_torch_is_not_loaded(tmp_path):
    r = run_copy(tmp_path, keep_so=True, meta={"torch_version": "0.0.1"})
    assert not r["loaded"] and "built against torch 0.0.1" in r["error"]
    assert len(r["warnings"]) == 1 and r["equal"]
