"""The real pipeline on the real carphone clip (docs/preprocess.md). Skips cleanly unless the preprocess extra is
installed and `dgnerf assets fetch` has run (mediapipe, cv2 5.0 + FaceNet graph, face mesh, the clip).
Uses every 3rd frame (40 frames) to stay short; the full-clip numbers are in docs/preprocess.md."""
import numpy as np
import pytest

from dgnerf import assets


def _ready():
    for name in ("carphone", "face_geometry", "facenet"):
        if not assets.have(name):
            return f"asset {name!r} not fetched (dgnerf assets fetch)"
    ok, info = assets._check_python("mediapipe")
    if not ok:
        return f"mediapipe not usable: {info}"
    try:
        import cv2
    except ImportError:
        return "cv2 not installed"
    if not cv2.__version__.startswith("5."):
        return f"cv2 {cv2.__version__}: FaceNet's graph loads only in opencv-python-headless 5.0.0.93"
    return None


why = _ready()
pytestmark = pytest.mark.skipif(why is not None, reason=why or "")


def test_carphone_end_to_end(tmp_path):
    from dgnerf.data import check_dataset
    from dgnerf.preprocess.pipeline import Options, run

    out = tmp_path / "carphone"
    s = run([str(assets.asset_path("carphone"))], str(out), Options(stride=3, progress=False, preview=True), log=lambda *a: None)
    assert s.total == 40
    assert s.kept >= 38, s.format()
    assert s.reproj_px < 2.0, s.format()
    assert s.mask_cover > 0.95, s.format()
    assert list(s.identity_cos.values())[0] > 0.6, s.format()
    assert check_dataset(out) == []
    from safetensors.numpy import load_file

    a = load_file(str(out / "frames.safetensors"))
    assert a["expression"].shape == (s.kept, 46) and a["identity"].shape == (s.kept, 512)
    assert np.isfinite(a["gaze"]).all()
    # masks: a head-sized blob, not the whole crop and not empty
    from PIL import Image

    m = np.asarray(Image.open(out / "masks" / "000000.png"))
    assert 0.2 < (m > 127).mean() < 0.8
    assert (out / "preview.png").is_file()
