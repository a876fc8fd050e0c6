"""Op cases: dgnerf.ops called with one argument broken (wrong type, dtype, device, rank, size, strides, empty,
NaN/Inf, extreme values, scalars out of range), with the input checks on and off, and the raw kernels
(torch.ops.dgnerf.*) with mismatched shapes. See cases.py for the expectations."""
from __future__ import annotations

import dataclasses
import math
import random

import numpy as np
import torch

from tests.fuzz.cases import Case


# ------------------------------------------------------------------------------------------------ valid inputs

def _c2w(B=1, dtype=torch.float32):
    m = torch.eye(4, dtype=dtype).repeat(B, 1, 1)
    m[:, 2, 3] = -4.0
    return m


def base_sample_rays():
    return dict(c2w=_c2w(), intrinsics=torch.tensor([[4.0, 4.0, 2.0, 2.0]]), height=4, width=4, n_samples=6, near=1.0,
                far=7.0, stratified=False, seed=0, sphere_radius=0.0)


def base_integrate(g=None):
    g = g or torch.Generator().manual_seed(0)
    R, S, C = 6, 5, 3
    depths = torch.linspace(1, 5, S).repeat(R, 1)
    return dict(sigma=torch.rand(R, S, generator=g), features=torch.rand(R, S, C, generator=g), depths=depths,
                deltas=torch.full((R, S), 0.8), background=torch.rand(C, generator=g), threshold=0.0)


_MODEL = {}


def _field():
    if "f" not in _MODEL:
        from dgnerf.model import HeadConfig, HeadModel
        from tests.fuzz.world import TINY

        torch.manual_seed(0)
        m = HeadModel(HeadConfig(**dict(TINY, identity_dim=8, expression_dim=4)))
        _MODEL["f"] = m
    return _MODEL["f"]


def base_field_mlp():
    from dgnerf import ops

    m = _field()
    w = m.field.weights()
    cfg = m.cfg
    g = torch.Generator().manual_seed(1)
    B, P = 2, 7
    cond0, cond_skip = ops.fold_conditioning(w, torch.randn(B, 8, generator=g), torch.randn(B, 4, generator=g))
    detached = {f.name: _detach(getattr(w, f.name)) for f in dataclasses.fields(w)}
    return dict(x_enc=torch.randn(B, P, cfg.pos_enc_dim, generator=g), d_enc=torch.randn(B, P, cfg.dir_enc_dim, generator=g),
                cond0=cond0.detach(), cond_skip=None if cond_skip is None else cond_skip.detach(),
                weights=dataclasses.replace(w, **detached), output="feature", precision="fp32")


def _detach(v):
    if torch.is_tensor(v):
        return v.detach()
    if isinstance(v, tuple):
        return tuple(t.detach() for t in v)
    return v


def base_hash_encode():
    from dgnerf import ops

    g = torch.Generator().manual_seed(2)
    return dict(x=torch.rand(9, 3, generator=g) * 2 - 1, table=ops.init_hash_table(3, 64, 2, generator=g),
                base_resolution=4, finest_resolution=16, bbox=((-1.0, -1.0, -1.0), (1.0, 1.0, 1.0)), x_grad=False,
                out_dtype=None)


def call(op: str, a: dict):
    from dgnerf import ops

    if op == "sample_rays":
        return ops.sample_rays(a["c2w"], a["intrinsics"], a["height"], a["width"], a["n_samples"], a["near"], a["far"],
                               stratified=a["stratified"], seed=a["seed"], sphere_radius=a["sphere_radius"])
    if op == "integrate_features":
        return ops.integrate_features(a["sigma"], a["features"], a["depths"], a["deltas"], a["background"],
                                      threshold=a["threshold"])
    if op == "field_mlp":
        return ops.field_mlp(a["x_enc"], a["d_enc"], a["cond0"], a["cond_skip"], a["weights"], output=a["output"],
                             precision=a["precision"])
    if op == "hash_encode":
        return ops.hash_encode(a["x"], a["table"], base_resolution=a["base_resolution"],
                               finest_resolution=a["finest_resolution"], bbox=a["bbox"], x_grad=a["x_grad"],
                               out_dtype=a["out_dtype"])
    raise AssertionError(op)


BASES = {"sample_rays": base_sample_rays, "integrate_features": base_integrate, "field_mlp": base_field_mlp,
         "hash_encode": base_hash_encode}
TENSORS = {"sample_rays": ["c2w", "intrinsics"], "integrate_features": ["sigma", "features", "depths", "deltas", "background"],
           "field_mlp": ["x_enc", "d_enc", "cond0", "cond_skip"], "hash_encode": ["x", "table"]}
SCALARS = {"sample_rays": {"height": "posint", "width": "posint", "n_samples": "posint", "near": "nonneg", "far": "far",
                           "seed": "int", "sphere_radius": "finite", "stratified": "bool"},
           "integrate_features": {"threshold": "unit"},
           "field_mlp": {"output": "output", "precision": "precision"},
           "hash_encode": {"base_resolution": "res", "finest_resolution": "res", "bbox": "bbox", "x_grad": "bool",
                           "out_dtype": "dtype"}}
WEIGHT_FIELDS = ["w0x", "hidden_w", "hidden_b", "sigma_w", "sigma_b", "dir_w", "dir_b", "out_w", "out_b", "skip_wx"]


# ------------------------------------------------------------------------------------------------ mutations

def _tensor_mutation(rng, t: torch.Tensor):
    """-> (name, new value, expectation) for one tensor argument."""
    kind = rng.choice(["type", "dtype", "meta", "rank_up", "rank_down", "size", "empty", "noncontig", "nan", "inf",
                       "huge", "tiny", "negative", "f64", "grad", "zero_stride"])
    if kind == "type":
        v = rng.choice([None, t.tolist(), t.numpy(), 3, "tensor", float("nan")])
        return f"type:{type(v).__name__}", v, "reject"
    if kind == "dtype":
        dt = rng.choice([torch.int64, torch.int32, torch.float16, torch.bfloat16, torch.complex64, torch.bool, torch.uint8])
        return f"dtype:{dt}", t.to(dt), "reject"
    if kind == "meta":
        return "device:meta", t.to("meta"), "reject"
    if kind == "rank_up":
        return "rank+1", t.unsqueeze(0), "reject"
    if kind == "rank_down":
        return "rank-1", t.reshape(-1) if t.dim() > 1 else t.reshape(-1)[0], "reject"
    if kind == "size":
        if t.dim() == 0:
            return "size0d", t.reshape(1), "reject"
        d = rng.randrange(t.dim())
        shape = list(t.shape)
        shape[d] = max(1, shape[d] + rng.choice([1, 2, 5]))
        return f"size:dim{d}={shape[d]}", torch.zeros(shape, dtype=t.dtype), "reject"
    if kind == "empty":
        d = rng.randrange(max(1, t.dim()))
        shape = list(t.shape) or [1]
        shape[d] = 0
        return f"empty:dim{d}", torch.zeros(shape, dtype=t.dtype), "any"
    if kind == "noncontig":
        if t.dim() >= 2:
            v = t.transpose(-1, -2).contiguous().transpose(-1, -2)
        else:
            v = torch.stack([t, t], -1)[..., 0]
        return "noncontiguous", v, "same"
    if kind == "zero_stride":
        return "expanded", t.reshape(-1)[:1].expand_as(t) if t.numel() else t, "any"
    if kind in ("nan", "inf"):
        v = t.clone()
        if v.numel():
            v.reshape(-1)[rng.randrange(v.numel())] = float("nan") if kind == "nan" else rng.choice([math.inf, -math.inf])
        return kind, v, "nonfinite"
    if kind == "huge":
        return "huge", t * 1e37 + rng.choice([1e38, -1e38]), "any"
    if kind == "tiny":
        return "denormal", t * 1e-44, "any"
    if kind == "negative":
        return "negative", -t - 1.0, "any"
    if kind == "f64":
        return "float64", t.double(), "any"
    return "requires_grad", t.clone().requires_grad_(True), "grad"


SCALAR_BAD = {
    "posint": [0, -1, -(2**31), 2**31, 2**40, 1.5, "4", None, True, float("nan")],
    "nonneg": [-1.0, float("nan"), float("inf"), "1", None, -1e-9],
    "far": [0.5, 1.0, float("nan"), float("inf"), -3.0, None, "7"],
    "int": ["0", None, 1.5, 2**64, -(2**70)],
    "finite": [float("nan"), float("inf"), -float("inf"), "0", None],
    "bool": ["yes", None, 2, "False"],
    "unit": [1.0, -0.1, 1.5, float("nan"), float("inf"), "0", None],
    "output": ["hiddn", "", None, 3, "FEATURE"],
    "precision": ["fp8", "", None, 16, "FP32", "fp16"],
    "res": [0, -1, 2**21, 2**40, 1.5, None, "16", True],
    "bbox": [None, ((0, 0, 0), (0, 0, 0)), ((1, 1, 1), (-1, -1, -1)), ((0, 0), (1, 1)), "cube",
             ((float("nan"), 0, 0), (1, 1, 1)), ((0, 0, 0), (float("inf"), 1, 1)), (0, 1)],
    "dtype": [torch.int32, torch.float64, "float16", torch.complex64],
}
LARGE = {  # sizes a kernel must refuse or handle without overflowing an index
    "sample_rays": [dict(height=2**16, width=2**16), dict(n_samples=2**31), dict(height=2**31 - 1, width=1),
                    dict(height=3, width=5, n_samples=2**20)],
    "hash_encode": [dict(finest_resolution=2**20, base_resolution=2**20)],
}


def op_case(rng: random.Random) -> Case:
    op = rng.choice(sorted(BASES))
    checks = rng.random() < 0.8  # the input checks on (the default) or off (kernels must still not crash)
    target = rng.random()
    if op == "field_mlp" and target < 0.25:
        return _weights_case(rng, checks)
    if target < 0.55:
        arg = rng.choice(TENSORS[op])
        seed = rng.randrange(2**31)
        probe = BASES[op]()[arg]
        if probe is None:  # cond_skip of a model without a skip layer
            return _scalar_case(rng, op, checks)
        name, _, expect = _tensor_mutation(random.Random(seed), probe)
        if (op, arg, name) == ("hash_encode", "x", "rank+1"):
            expect = "any"  # x is [..., 3]: leading dimensions are allowed
        if op == "hash_encode" and name.startswith("size:") and not (arg == "x" and name.startswith("size:dim1")):
            expect = "any"  # any number of points, levels, table entries and features is a valid call

        def run(_op=op, _arg=arg, _seed=seed):
            a = BASES[_op]()
            _, v, _e = _tensor_mutation(random.Random(_seed), a[_arg])
            ref = None
            if _e == "same":
                ref = call(_op, a)
            a[_arg] = v
            return _run(_op, a, ref, _e, checks_on=_checks)
        _checks = checks
        if expect == "nonfinite" and not checks:
            expect = "any"
        return Case("ops", f"{op}:{arg}:{name}:checks={checks}:{seed}", op=_wrap(run, checks), tokens=[op, arg],
                    op_expect=expect)
    if target < 0.9 or op not in LARGE:
        return _scalar_case(rng, op, checks)
    big = rng.choice(LARGE[op])

    def run_big(_op=op, _big=big):
        a = BASES[_op]()
        a.update(_big)
        return _run(_op, a, None, "any", checks_on=checks)
    return Case("ops", f"{op}:large:{big}:checks={checks}", op=_wrap(run_big, checks), tokens=[op] + list(big),
                op_expect="any")


def _scalar_case(rng, op, checks):
    name = rng.choice(sorted(SCALARS[op]))
    value = rng.choice(SCALAR_BAD[SCALARS[op][name]])
    expect = "reject"
    if name == "seed" and isinstance(value, int) and -(2**63) <= value < 2**64:
        expect = "any"

    def run(_op=op, _name=name, _value=value):
        a = BASES[_op]()
        a[_name] = _value
        return _run(_op, a, None, expect, checks_on=checks)
    return Case("ops", f"{op}:{name}={value!r}:checks={checks}", op=_wrap(run, checks), tokens=[op, name],
                op_expect=expect)


def _weights_case(rng, checks):
    field = rng.choice(WEIGHT_FIELDS)
    how = rng.choice(["shape", "dtype", "none", "transpose", "drop_layer"])

    def run(_field=field, _how=how):
        a = base_field_mlp()
        w = a["weights"]
        v = getattr(w, _field)
        if isinstance(v, tuple):
            if not v:
                return "skipped: empty"
            if _how == "drop_layer":
                v = v[:-1]
            else:
                v = (_break(v[0], _how),) + v[1:]
        else:
            v = _break(v, _how)
        a["weights"] = dataclasses.replace(w, **{_field: v})
        return _run("field_mlp", a, None, "reject", checks_on=checks)
    return Case("ops", f"field_mlp:weights.{field}:{how}:checks={checks}", op=_wrap(run, checks),
                tokens=["field_mlp", field], op_expect="reject")


def _break(t, how):
    if t is None:
        return torch.zeros(3, 3) if how != "none" else None
    if how == "shape":
        return torch.zeros(t.shape[0] + 1, *t.shape[1:]) if t.dim() else torch.zeros(2)
    if how == "dtype":
        return t.double() if t.dtype == torch.float32 else t.float()
    if how == "none":
        return None
    if how == "transpose":
        return t.t() if t.dim() == 2 and t.shape[0] != t.shape[1] else torch.zeros(*t.shape, 2)
    return t[:0]


def _wrap(fn, checks):
    def run():
        from dgnerf import ops

        with ops.checks(checks):
            return fn()
    return run


def _flat(out):
    if torch.is_tensor(out):
        return [out]
    if isinstance(out, (tuple, list)):
        return [t for o in out for t in _flat(o)]
    return []


def _run(op, a, ref, expect, checks_on):
    """Call the op; return a description of what came back (the worker judges it against the case's expectation)."""
    out = call(op, a)
    res = _flat(out)
    if expect == "grad":
        loss = sum(t.float().sum() for t in res if t.is_floating_point())
        if torch.is_tensor(loss) and loss.requires_grad:
            loss.backward()
    if ref is not None:
        same = all(torch.allclose(x.double(), y.double(), rtol=1e-5, atol=1e-6, equal_nan=True)
                   for x, y in zip(res, _flat(ref)))
        if not same:
            raise AssertionError(f"{op}: a non-contiguous input gave a different result than its contiguous copy")
    finite_in = all(bool(torch.isfinite(v).all()) for v in a.values() if torch.is_tensor(v) and v.is_floating_point()
                    and v.device.type != "meta")
    finite_out = all(bool(torch.isfinite(t).all()) for t in res if t.is_floating_point() and t.device.type != "meta")
    return {"returned": True, "finite_in": finite_in, "finite_out": finite_out, "checks": checks_on,
            "shapes": [list(t.shape) for t in res]}
