import json

import pytest
import torch

from dgnerf.errors import DgnerfError
from dgnerf.model import HeadConfig, HeadModel
from dgnerf.model.checkpoint import FORMAT_VERSION, init_checkpoint, load_checkpoint, read_checkpoint, save_checkpoint


def _model():
    m = HeadModel(HeadConfig.tiny(near=2.0))
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return m


def test_roundtrip(tmp_path):
    m = _model()
    path = save_checkpoint(tmp_path / "a.safetensors", m, metadata={"step": 12})
    cfg, state, meta = read_checkpoint(path)
    assert cfg == m.cfg and meta["format_version"] == str(FORMAT_VERSION) and json.loads(meta["step"]) == 12
    m2 = load_checkpoint(path)
    for (k, a), (k2, b) in zip(m.state_dict().items(), m2.state_dict().items()):
        assert k == k2 and torch.equal(a, b)
    # a directory works too
    d = tmp_path / "ckdir"
    d.mkdir()
    save_checkpoint(d, m)
    assert load_checkpoint(d).cfg == m.cfg


def test_init_checkpoint(tmp_path):
    p = init_checkpoint(tmp_path / "r.safetensors", HeadConfig.tiny(), seed=3)
    assert isinstance(load_checkpoint(p), HeadModel)


def test_missing_file(tmp_path):
    with pytest.raises(DgnerfError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.safetensors")


def test_truncated(tmp_path):
    p = save_checkpoint(tmp_path / "a.safetensors", _model())
    data = open(p, "rb").read()
    for cut in (4, 40, len(data) // 2, len(data) - 3):
        q = tmp_path / f"t{cut}.safetensors"
        q.write_bytes(data[:cut])
        with pytest.raises(DgnerfError, match="truncated|corrupted|not a safetensors"):
            load_checkpoint(q)


def test_corrupted_header(tmp_path):
    p = save_checkpoint(tmp_path / "a.safetensors", _model())
    data = bytearray(open(p, "rb").read())
    data[10:30] = b"\xff" * 20
    q = tmp_path / "c.safetensors"
    q.write_bytes(bytes(data))
    with pytest.raises(DgnerfError, match="corrupted"):
        load_checkpoint(q)
    q.write_bytes(b"garbage that is not a checkpoint at all, certainly")
    with pytest.raises(DgnerfError):
        load_checkpoint(q)


def test_pickle_is_rejected(tmp_path):
    q = tmp_path / "model.pt"
    torch.save({"a": torch.zeros(2)}, q)
    with pytest.raises(DgnerfError):
        load_checkpoint(q)


def _rewrite(path, out, edit_state=None, edit_meta=None):
    from safetensors.torch import save_file

    cfg, state, meta = read_checkpoint(path)
    if edit_state:
        edit_state(state)
    if edit_meta:
        edit_meta(meta)
    save_file(state, out, metadata=meta)
    return out


def test_mismatch_names_and_shapes(tmp_path):
    p = save_checkpoint(tmp_path / "a.safetensors", _model())

    def edit(state):
        del state["background"]
        state["extra.weight"] = torch.zeros(2)
        state["field.out.weight"] = torch.zeros(3, 3)

    q = _rewrite(p, str(tmp_path / "m.safetensors"), edit_state=edit)
    with pytest.raises(DgnerfError) as e:
        load_checkpoint(q)
    msg = str(e.value)
    assert "missing tensors ['background']" in msg and "extra.weight" in msg
    assert "field.out.weight: [3, 3]" in msg


def test_nan_weights_and_bad_format(tmp_path):
    p = save_checkpoint(tmp_path / "a.safetensors", _model())

    def nan(state):
        state["background"][0] = float("nan")

    with pytest.raises(DgnerfError, match="NaN"):
        load_checkpoint(_rewrite(p, str(tmp_path / "n.safetensors"), edit_state=nan))

    def newer(meta):
        meta["format_version"] = str(FORMAT_VERSION + 1)

    with pytest.raises(DgnerfError, match="newer"):
        load_checkpoint(_rewrite(p, str(tmp_path / "v.safetensors"), edit_meta=newer))

    def other(meta):
        meta["format"] = "something.else"

    with pytest.raises(DgnerfError, match="not a dgnerf head checkpoint"):
        load_checkpoint(_rewrite(p, str(tmp_path / "o.safetensors"), edit_meta=other))

    def badcfg(meta):
        meta["config"] = json.dumps({"mlp_width": -3})

    with pytest.raises(DgnerfError, match="mlp_width"):
        load_checkpoint(_rewrite(p, str(tmp_path / "b.safetensors"), edit_meta=badcfg))


def test_trainer_records_the_world_frame_and_render_uses_it(tmp_path):
    # A checkpoint trained on data in another world convention (here: the built-in set's cameras turned by
    # diag(1,-1,-1), a preprocessed video's convention) renders its frontal view at yaw 0 with `dgnerf render`.
    import json

    from dgnerf.model import HeadConfig, HeadModel
    from dgnerf.model.checkpoint import legacy_world_frame, load_checkpoint, save_checkpoint

    W = torch.diag(torch.tensor([1.0, -1.0, -1.0]))
    model = HeadModel(HeadConfig.tiny(world_frame=W.reshape(-1).tolist()))
    loaded = load_checkpoint(save_checkpoint(str(tmp_path / "m.safetensors"), model))
    assert torch.equal(loaded.cfg.world_rotation, W) and loaded.cfg.to_dict()["world_frame"] == W.reshape(-1).tolist()
    # a checkpoint written before the config held the frame (it was metadata) still gets it
    old = HeadModel(HeadConfig.tiny())
    old.load_state_dict(model.state_dict())
    legacy = load_checkpoint(save_checkpoint(str(tmp_path / "old.safetensors"), old,
                                             metadata={"world_frame": json.dumps(W.tolist())}))
    assert torch.equal(legacy.cfg.world_rotation, W)
    plain = load_checkpoint(save_checkpoint(str(tmp_path / "p.safetensors"), old))
    assert plain.cfg.world_rotation is None and "world_frame" not in plain.cfg.to_dict()
    for bad in ("[1, 2]", "not json", json.dumps([[float("nan")] * 3] * 3)):
        assert legacy_world_frame({"world_frame": bad}) is None
    # render_frames (dgnerf render / orbit) applies it: the same image as the model called with W @ c2w.
    import argparse

    from dgnerf.camera import orbit_c2w
    from dgnerf.commands._common import render_frames

    args = argparse.Namespace(distance=None, path="fast", precision="fp32", ert=0.0, skip_stride=0)
    z, beta = torch.randn(1, loaded.cfg.identity_dim), torch.zeros(1, loaded.cfg.expression_dim)
    got = render_frames(loaded, torch.device("cpu"), z, beta, [10.0], [0.0], [0.0], args)[0]
    c2w = orbit_c2w(10.0, 0.0, 0.0, loaded.cfg.camera_distance).clone()
    c2w[:, :3, :] = W @ c2w[:, :3, :]
    with torch.no_grad():
        want = loaded(z, beta, c2w).image[0]
    want = (want.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    plain_img = render_frames(plain, torch.device("cpu"), z, beta, [10.0], [0.0], [0.0], args)[0]
    assert (got == want).all() and not (got == plain_img).all()
