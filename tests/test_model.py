"""HeadModel: the fast path equals the reference path (values and gradients) on the same weights;
the approximate flags stay close; input errors name the argument."""
import json
import math

import pytest
import torch

from dgnerf.camera import c2w_from_w2c, intrinsics_from_fov, look_at, orbit_c2w
from dgnerf.metrics import psnr
from dgnerf.model import HeadConfig, HeadModel, RenderOptions
from dgnerf.model.encoding import positional_encoding
from tests.conftest import rel_err


def _randomize(model: HeadModel, scale: float = 1.0):
    # Fresh random weights everywhere (biases and background too, never zeros).
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * (scale / math.sqrt(max(1, p[0].numel() if p.dim() > 1 else 4))))
    return model


def _inputs(cfg, B=2, dtype=torch.float32):
    z = torch.randn(B, cfg.identity_dim, dtype=dtype)
    beta = torch.randn(B, cfg.expression_dim, dtype=dtype)
    c2w = orbit_c2w(torch.rand(B) * 40 - 20, torch.rand(B) * 20 - 10, torch.rand(B) * 10 - 5, cfg.camera_distance, dtype=dtype)
    K = intrinsics_from_fov(cfg.fov_deg, cfg.feature_size, B, dtype) * (1 + 0.05 * torch.rand(B, 1, dtype=dtype))
    return z, beta, c2w, K


@pytest.fixture(params=["kernel", "twin"])
def field_impl(request, monkeypatch):
    """Run the fast path with the compiled field kernel (when built) and with its twin (the fallback)."""
    from dgnerf import _ext

    if request.param == "kernel" and not _ext.has_kernel("field_mlp_forward", "cpu"):
        pytest.skip("dgnerf._C has no field_mlp kernel")
    if request.param == "twin":
        real = _ext.has_kernel
        monkeypatch.setattr(_ext, "has_kernel", lambda op, dev: False if op.startswith("field_mlp") else real(op, dev))
        monkeypatch.setattr(_ext, "warn_fallback", lambda what="": None)
    return request.param


@pytest.mark.parametrize("activation", ["softplus", "relu"])
def test_fast_equals_reference_values(activation, field_impl):
    cfg = HeadConfig.tiny(sigma_activation=activation)
    model = _randomize(HeadModel(cfg))
    z, beta, c2w, K = _inputs(cfg)
    ref = model(z, beta, c2w, K, options=RenderOptions(path="reference"))
    fast = model(z, beta, c2w, K, options=RenderOptions(path="fast"))
    assert ref.image.shape == (2, 3, cfg.image_size, cfg.image_size)
    assert ref.feature_map.shape == (2, cfg.feature_dim, cfg.feature_size, cfg.feature_size)
    assert psnr(fast.image, ref.image) >= 50
    for k in ("feature_map", "opacity", "depth", "image"):
        assert rel_err(getattr(fast, k), getattr(ref, k)) < 1e-5, k


def test_fast_equals_reference_gradients(field_impl):
    cfg = HeadConfig.tiny()
    model = _randomize(HeadModel(cfg))
    z, beta, c2w, K = _inputs(cfg)
    target = torch.rand(2, 3, cfg.image_size, cfg.image_size)
    w_op, w_d = torch.randn(2, cfg.feature_size, cfg.feature_size), torch.randn(2, cfg.feature_size, cfg.feature_size)

    def grads(path):
        zz, bb, cc = (t.clone().requires_grad_(True) for t in (z, beta, c2w))
        model.zero_grad()
        out = model(zz, bb, cc, K, options=RenderOptions(path=path))
        loss = ((out.image - target) ** 2).mean() + (out.opacity * w_op).mean() + 0.1 * (out.depth * w_d).mean()
        loss.backward()
        g = {n: p.grad.clone() for n, p in model.named_parameters()}
        g.update(z_id=zz.grad, beta=bb.grad, c2w=cc.grad)
        return g

    gr, gf = grads("reference"), grads("fast")
    assert set(gr) == set(gf)
    for name in gr:
        assert torch.isfinite(gf[name]).all(), name
        assert gr[name].abs().sum() > 0, name
        assert rel_err(gf[name], gr[name]) < 1e-4, (name, rel_err(gf[name], gr[name]))


def test_fast_equals_reference_float64_stratified(field_impl):
    cfg = HeadConfig.tiny(sphere_radius=1.3)
    model = _randomize(HeadModel(cfg)).double()
    z, beta, c2w, K = _inputs(cfg, B=1, dtype=torch.float64)
    ref = model(z, beta, c2w, K, options=RenderOptions(path="reference", stratified=True, seed=7))
    fast = model(z, beta, c2w, K, options=RenderOptions(path="fast", stratified=True, seed=7))
    assert rel_err(fast.image, ref.image) < 1e-10
    assert rel_err(fast.depth, ref.depth) < 1e-10


@pytest.mark.parametrize("flags,min_db", [
    (dict(ert_threshold=1e-3, ert_chunk=4), 40.0),
    (dict(skip_stride=3, skip_eps=1e-4), 40.0),
    (dict(skip_stride=3, skip_eps=1e-4, ert_threshold=1e-3), 35.0),
    (dict(precision="bf16"), 35.0),
])
def test_approximate_flags_close(flags, min_db, field_impl):
    cfg = HeadConfig.tiny()
    model = _randomize(HeadModel(cfg))
    z, beta, c2w, K = _inputs(cfg)
    exact = model(z, beta, c2w, K, options=RenderOptions(path="fast"))
    approx = model(z, beta, c2w, K, options=RenderOptions(path="fast", **flags))
    assert approx.image.dtype == torch.float32
    assert psnr(approx.image, exact.image) >= min_db


def test_ert_equals_integration_threshold(field_impl):
    # Chunked early termination evaluates fewer samples but gives the same result as cutting the full field.
    cfg = HeadConfig.tiny()
    model = _randomize(HeadModel(cfg), scale=3.0)
    z, beta, c2w, K = _inputs(cfg)
    full = model(z, beta, c2w, K, options=RenderOptions(path="fast", ert_threshold=0.05, ert_chunk=cfg.n_samples))
    chunked = model(z, beta, c2w, K, options=RenderOptions(path="fast", ert_threshold=0.05, ert_chunk=3))
    assert rel_err(chunked.feature_map, full.feature_map) < 1e-5


def test_approximate_paths_have_gradients(field_impl):
    cfg = HeadConfig.tiny()
    model = _randomize(HeadModel(cfg))
    z, beta, c2w, K = _inputs(cfg)
    z.requires_grad_(True)
    for flags in (dict(ert_threshold=1e-3, ert_chunk=4), dict(skip_stride=3), dict(precision="bf16")):
        model.zero_grad()
        z.grad = None
        model(z, beta, c2w, K, options=RenderOptions(**flags)).image.sum().backward()
        assert torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0
        assert model.field.trunk[0].weight.grad.abs().sum() > 0


def test_default_config_shapes_and_numbers():
    cfg = HeadConfig()
    assert (cfg.identity_dim, cfg.expression_dim, cfg.feature_dim, cfg.feature_size, cfg.image_size) == (512, 46, 512, 32, 256)
    assert (cfg.n_samples, cfg.mlp_depth, cfg.mlp_width, cfg.skip_layer, cfg.pos_freqs, cfg.dir_freqs) == (64, 8, 256, 5, 10, 4)
    assert cfg.renderer_channels == (256, 128, 64) and cfg.pos_enc_dim == 63 and cfg.dir_enc_dim == 27
    model = HeadModel(cfg)
    f = model.field
    assert f.trunk[0].weight.shape == (256, 63 + 558)
    assert f.trunk[5].weight.shape == (256, 63 + 558 + 256)
    assert f.dir_layer.weight.shape == (128, 256 + 27) and f.out.weight.shape == (512, 128)
    assert model.background.shape == (512,)


def test_config_validation_and_json_roundtrip():
    cfg = HeadConfig.tiny(near=1.5)
    assert HeadConfig.from_json(cfg.to_json()) == cfg
    with pytest.raises(Exception, match="image_size"):
        HeadConfig(image_size=128)
    with pytest.raises(Exception, match="sigma_activation"):
        HeadConfig(sigma_activation="exp")
    with pytest.raises(Exception, match="unknown field"):
        HeadConfig.from_dict({"widht": 3})


def test_input_errors_name_the_argument():
    cfg = HeadConfig.tiny()
    model = HeadModel(cfg)
    z, beta, c2w, K = _inputs(cfg)
    with pytest.raises(ValueError, match="'identity'"):
        model(z[:, :-1], beta, c2w, K)
    with pytest.raises(ValueError, match="'expression'"):
        model(z, beta[:1], c2w, K)
    with pytest.raises(ValueError, match="'c2w'"):
        model(z, beta, c2w[:, :2], K)
    bad = beta.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match="'expression'.*NaN"):
        model(z, bad, c2w, K)
    with pytest.raises(ValueError, match="'path'"):
        model(z, beta, c2w, K, options=RenderOptions(path="fused"))
    with pytest.raises(ValueError, match="fp16"):
        model(z, beta, c2w, K, options=RenderOptions(precision="fp16"))
    with pytest.raises(ValueError, match="reference path"):
        model(z, beta, c2w, K, options=RenderOptions(path="reference", ert_threshold=0.01))


def test_graphed_needs_cuda():
    if torch.cuda.is_available():
        pytest.skip("CUDA present: covered by the GPU test")
    from dgnerf.model.graphs import graphed_frame

    with pytest.raises(ValueError, match="CUDA"):
        graphed_frame(HeadModel(HeadConfig.tiny()))


def test_positional_encoding_layout():
    x = torch.randn(5, 3)
    e = positional_encoding(x, 3)
    assert e.shape == (5, 21)
    assert torch.equal(e[:, :3], x)
    assert torch.allclose(e[:, 3:6], torch.sin(x)) and torch.allclose(e[:, 6:9], torch.cos(x))
    assert torch.allclose(e[:, 15:18], torch.sin(4 * x))


def test_camera_conventions():
    c = orbit_c2w(0, 0, 0, 4.0)[0]
    assert torch.allclose(c[:3, :3], torch.eye(3)) and torch.allclose(c[:3, 3], torch.tensor([0.0, 0, -4]))
    c = orbit_c2w(90, 0, 0, 4.0)[0]
    assert torch.allclose(c[:3, 3], torch.tensor([-4.0, 0, 0]), atol=1e-5)  # +yaw -> towards world -x
    c = orbit_c2w(0, 30, 0, 4.0)[0]
    assert c[1, 3] > 0  # +pitch -> below the head (y down)
    for yaw, pitch, roll in ((25, -10, 5), (-40, 15, 0)):
        c = orbit_c2w(yaw, pitch, roll, 3.0)[0]
        assert torch.allclose(c[:3, :3] @ c[:3, :3].T, torch.eye(3), atol=1e-6)
        # The optical axis passes through the head centre.
        assert torch.allclose(torch.linalg.cross(c[:3, 2], -c[:3, 3]), torch.zeros(3), atol=1e-5)
        w2c = torch.linalg.inv(c)[None]
        assert torch.allclose(c2w_from_w2c(w2c)[0], c, atol=1e-5)
    la = look_at(torch.tensor([[0.0, 0, -4]]))
    assert torch.allclose(la, orbit_c2w(0, 0, 0, 4.0), atol=1e-6)
    K = intrinsics_from_fov(HeadConfig().fov_deg, HeadConfig().feature_size, 2)
    assert K.shape == (2, 4) and torch.allclose(K[:, 2:], torch.full((2, 2), 16.0))


def test_head_prior_makes_a_solid_ellipsoid():
    from dgnerf.model.prior import apply_head_prior

    cfg = HeadConfig.tiny(mlp_width=48, n_samples=32)
    model = apply_head_prior(HeadModel(cfg), n_dirs=40)
    z, beta, c2w, K = _inputs(cfg, B=1)
    out = model(z, beta, c2w, K)
    op = out.opacity[0]
    c = cfg.feature_size // 2
    assert op[c - 1 : c + 1, c - 1 : c + 1].min() > 0.99  # the centre ray hits the head
    assert op[0, 0] < 0.05 and op[-1, -1] < 0.05  # corner rays miss it
    # density-driven approximations now skip work and stay exact to the eye
    approx = model(z, beta, c2w, K, options=RenderOptions(skip_stride=4, ert_threshold=1e-3))
    assert psnr(approx.image, out.image) > 45


def test_phase_conv_equals_upsample_conv():
    import torch.nn.functional as Fn

    from dgnerf.model.renderer import NeuralRenderer, upsample2_conv3x3

    x = torch.randn(2, 6, 5, 7, dtype=torch.float64, requires_grad=True)
    w = torch.randn(4, 6, 3, 3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(4, dtype=torch.float64, requires_grad=True)
    ref = Fn.conv2d(Fn.interpolate(x, scale_factor=2.0, mode="nearest"), w, b, padding=1)
    out = upsample2_conv3x3(x, w, b)
    assert rel_err(out, ref) < 1e-12
    g = torch.randn_like(ref)
    gr = torch.autograd.grad(ref, (x, w, b), g)
    go = torch.autograd.grad(out, (x, w, b), g)
    for a, c in zip(go, gr):
        assert rel_err(a, c) < 1e-12
    assert torch.autograd.gradcheck(upsample2_conv3x3, (x[:1, :2, :3, :3].detach().requires_grad_(True),
                                                       w[:2, :2].detach().requires_grad_(True), b[:2].detach().requires_grad_(True)))
    r = NeuralRenderer(12, (8, 4)).double()
    f = torch.randn(1, 12, 4, 4, dtype=torch.float64)
    assert rel_err(r(f, fast=True), r(f)) < 1e-12


def test_code_gains_scale_the_codes_and_stay_out_of_default_configs():
    # identity_gain / expression_gain multiply the codes before the MLP (both paths); 1 = the paper's raw codes
    # and is left out of the config JSON, so existing checkpoints are unchanged.
    cfg = HeadConfig.tiny()
    assert "identity_gain" not in cfg.to_dict() and "expression_gain" not in cfg.to_dict()
    torch.manual_seed(0)
    plain = HeadModel(cfg)
    gained = HeadModel(HeadConfig.from_json(json.dumps(dict(cfg.to_dict(), identity_gain=3.0, expression_gain=0.5))))
    gained.load_state_dict(plain.state_dict())
    z, beta, c2w, K = _inputs(cfg)
    for path in ("fast", "reference"):
        a = gained(z, beta, c2w, K, options=RenderOptions(path=path)).image
        b = plain(z * 3.0, beta * 0.5, c2w, K, options=RenderOptions(path=path)).image
        assert rel_err(a, b) < 1e-6
    assert HeadConfig.from_json(gained.cfg.to_json()).identity_gain == 3.0
    with pytest.raises(Exception, match="expression_gain"):
        HeadConfig.from_json(json.dumps(dict(cfg.to_dict(), expression_gain=0.0)))


def _hashgrid_cfg(**kw):
    base = dict(position_encoding="hashgrid", hash_levels=4, hash_table_size=2**9, hash_features=2,
                hash_base_resolution=4, hash_finest_resolution=32, sphere_radius=1.3)
    base.update(kw)
    return HeadConfig.tiny(**base)


def _fast_and_reference(model, cfg):
    """Renders with both paths and backpropagates one random loss; checks the fast path's outputs equal the
    reference's and returns both paths' gradients (parameters, identity, c2w) and the identity codes used."""
    z, beta, c2w, K = _inputs(cfg)
    target = torch.rand(2, 3, cfg.image_size, cfg.image_size)

    def run(path):
        zz, cc = z.clone().requires_grad_(True), c2w.clone().requires_grad_(True)
        model.zero_grad()
        out = model(zz, beta, cc, K, options=RenderOptions(path=path))
        ((out.image - target) ** 2).mean().backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters()}
        grads.update(identity=zz.grad, c2w=cc.grad)
        return out, grads

    ref, g_ref = run("reference")
    fast, g_fast = run("fast")
    for k in ("image", "feature_map", "opacity", "depth"):
        assert rel_err(getattr(fast, k), getattr(ref, k)) < 1e-5, k
    return g_ref, g_fast, z


def test_hashgrid_fast_equals_reference_values_and_gradients():
    cfg = _hashgrid_cfg()
    model = _randomize(HeadModel(cfg))
    with torch.no_grad():  # a table of the size a trained one has (init is +-1e-4)
        model.field.encoding.table.uniform_(-0.5, 0.5)
    assert cfg.pos_enc_dim == 8 and model.field.trunk[0].weight.shape[1] == 8 + cfg.cond_dim
    g_ref, g_fast, z = _fast_and_reference(model, cfg)
    assert float(g_ref["field.encoding.table"].abs().sum()) > 0
    for n, g in g_ref.items():
        assert rel_err(g_fast[n], g) < 1e-4, n  # c2w: gradients flow through the points into the grid


def test_hashgrid_config_round_trip_and_frequency_configs_unchanged():
    cfg = _hashgrid_cfg()
    again = HeadConfig.from_json(cfg.to_json())
    assert again == cfg and again.to_dict()["position_encoding"] == "hashgrid"
    plain = HeadConfig.tiny().to_dict()
    assert "position_encoding" not in plain and not any(k.startswith("hash_") for k in plain)
    assert "field.encoding.table" not in HeadModel(HeadConfig.tiny()).state_dict()
    with pytest.raises(Exception, match="position_encoding"):
        HeadConfig.tiny(position_encoding="fourier")
    with pytest.raises(Exception, match="hash_finest_resolution"):
        _hashgrid_cfg(hash_finest_resolution=2)
    assert _hashgrid_cfg().hash_half_size == 1.3 and _hashgrid_cfg(hash_bound=2.0).hash_half_size == 2.0


def test_identity_mixed_hashgrid_fast_equals_reference_values_and_gradients():
    # fast: one mixed table per image, then one read per point; reference: read every table, then mix the reads
    cfg = _hashgrid_cfg(hash_identity_bases=3)
    model = _randomize(HeadModel(cfg))
    assert model.field.encoding.table.shape == (4, 2**9, 6) and cfg.pos_enc_dim == 8
    with torch.no_grad():
        model.field.encoding.table.uniform_(-0.5, 0.5)
    g_ref, g_fast, z = _fast_and_reference(model, cfg)
    for n in ("field.encoding.table", "field.encoding.mix.weight", "field.encoding.mix.bias"):
        assert float(g_ref[n].abs().sum()) > 0, n
    for n, g in g_ref.items():
        assert rel_err(g_fast[n], g) < 1e-4, n
    # the identity moves the encoding itself, not only the MLP's bias
    x = (torch.rand(1, 5, 3) * 2 - 1).expand(2, 5, 3).contiguous()
    enc = model.field.encoding(x, torch.stack([z[0], z[0]]))
    assert torch.equal(enc[0], enc[1])
    assert not torch.allclose(model.field.encoding(x, z)[1], enc[1])


def test_identity_mixed_hashgrid_gradcheck_float64():
    from torch.func import functional_call

    cfg = _hashgrid_cfg(hash_levels=2, hash_table_size=2**6, hash_base_resolution=2, hash_finest_resolution=4,
                        hash_identity_bases=2)
    enc = HeadModel(cfg).field.encoding.double()
    x = torch.rand(2, 3, 3, dtype=torch.float64) * 2.2 - 1.1
    z = torch.randn(2, cfg.identity_dim, dtype=torch.float64)
    table = (torch.rand_like(enc.table) - 0.5).requires_grad_(True)
    w = enc.mix.weight.detach().clone().requires_grad_(True)
    b = enc.mix.bias.detach().clone().requires_grad_(True)
    for reference in (False, True):
        def f(table, w, b, zz):
            return functional_call(enc, {"table": table, "mix.weight": w, "mix.bias": b}, (x, zz),
                                   {"reference": reference})
        assert torch.autograd.gradcheck(f, (table, w, b, z.clone().requires_grad_(True)))


def test_identity_mixed_hashgrid_config_and_errors():
    cfg = _hashgrid_cfg(hash_identity_bases=4)
    assert HeadConfig.from_json(cfg.to_json()) == cfg and cfg.to_dict()["hash_identity_bases"] == 4
    assert "hash_identity_bases" not in _hashgrid_cfg().to_dict()  # configs without it are what they were
    with pytest.raises(Exception, match="hash_identity_bases"):
        _hashgrid_cfg(hash_identity_bases=1)
    with pytest.raises(Exception, match="hash_identity_bases"):
        HeadConfig.tiny(hash_identity_bases=2)  # frequency encoding: nothing to mix
    enc = HeadModel(cfg).field.encoding
    with pytest.raises(ValueError, match="'identity' expected \\[2, 16\\]"):
        enc(torch.zeros(2, 4, 3), None)
    with pytest.raises(ValueError, match="'identity' expected \\[2, 16\\]"):
        enc(torch.zeros(2, 4, 3), torch.zeros(3, 16))
