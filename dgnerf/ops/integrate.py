"""Feature volume integration (docs/design.md, "The model").

    feature, opacity, depth = integrate_features(sigma, features, depths, deltas, background, threshold=0.0)

For each ray (leading dims ...), samples i = 0..S-1 in order:
    tau_i = sigma_i delta_i,  T_i = exp(-sum_{j<i} tau_j)   (log space),  w_i = T_i (1 - exp(-tau_i))
    feature = sum_i w_i F_i + (1 - sum_i w_i) F_bg,  opacity = sum_i w_i,  depth = sum_i w_i t_i
sigma [...,S], features [...,S,C], depths [...,S], deltas [...,S], background [C]
-> feature [...,C], opacity [...], depth [...].

threshold > 0 enables early ray termination: the first sample with T_i < threshold and all later ones
are dropped (an approximation; threshold = 0 is exact). Gradients flow to sigma, features, depths,
deltas and background; the backward pass never divides by (1 - alpha).

Example:
    >>> import torch, dgnerf
    >>> R, S, C = 4, 8, 16
    >>> f, o, d = dgnerf.ops.integrate_features(torch.rand(R, S), torch.randn(R, S, C),
    ...     torch.linspace(1, 2, S).expand(R, S).contiguous(), torch.full((R, S), 1 / S), torch.zeros(C))
    >>> f.shape, o.shape
    (torch.Size([4, 16]), torch.Size([4]))
"""
from __future__ import annotations

import torch

from dgnerf.ops import _common
from dgnerf.ops.reference import integrate_features_reference

OP = "integrate_features"
_FLOATS = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def _check(sigma, features, depths, deltas, background, threshold):
    _common.check_tensor(OP, "features", features, dtypes=_FLOATS)
    if features.dim() < 2:
        _common.fail(OP, f"argument 'features' expected shape [..., samples, channels], got {list(features.shape)}")
    if features.numel() == 0:
        _common.fail(OP, f"argument 'features' is empty (shape {list(features.shape)}); expected at least one element")
    lead, S, C = tuple(features.shape[:-2]), features.shape[-2], features.shape[-1]
    for name, t in (("sigma", sigma), ("depths", depths), ("deltas", deltas)):
        _common.check_tensor(OP, name, t, lead + (S,), "[..., samples] matching 'features'", like=features, like_name="features")
    _common.check_tensor(OP, "background", background, (C,), "[channels] matching 'features'", like=features, like_name="features")
    _common.check_scalar(OP, "threshold", threshold, lambda x: 0 <= x < 1, "a number in [0, 1)")
    return lead, S, C


def integrate_features(sigma: torch.Tensor, features: torch.Tensor, depths: torch.Tensor, deltas: torch.Tensor,
                       background: torch.Tensor, threshold: float = 0.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Volume-integrate per-sample features along rays (the formula is in the module docstring).

    Args:
        sigma: densities [..., S] (after the activation), float32 or float64.
        features: per-sample features [..., S, C], the same dtype.
        depths: sample depths t_i [..., S]; deltas: t_{i+1} - t_i [..., S] (the last closes the interval).
        background: the background feature [C].
        threshold: 0 (exact) or a transmittance in (0, 1) below which a ray stops (early termination).
    Returns:
        feature [..., C], opacity [...], depth [...].
    """
    lead, S, C = _check(sigma, features, depths, deltas, background, threshold)
    if features.device.type == "cpu" and features.dtype not in (torch.float32, torch.float64):
        _common.fail(OP, f"argument 'features' expected float32 or float64 on CPU, got {features.dtype}")
    checks = _common.checks_enabled()
    if checks:  # the per-sample inputs are small ([..., S]); the large features are checked via the output
        _common.check_finite(OP, {"sigma": sigma, "depths": depths, "deltas": deltas, "background": background})
    if _common.use_kernel(OP, features.device):
        f, o, d = torch.ops.dgnerf.integrate_features(
            sigma.reshape(-1, S).contiguous(),
            features.reshape(-1, S, C).contiguous(),
            depths.reshape(-1, S).contiguous(),
            deltas.reshape(-1, S).contiguous(),
            background.contiguous(),
            float(threshold),
        )
        f, o, d = f.reshape(lead + (C,)), o.reshape(lead), d.reshape(lead)
    else:
        f, o, d = integrate_features_reference(sigma, features, depths, deltas, background, threshold)
    if checks and not _common.all_finite(f):
        _common.check_finite(OP, {"features": features})
        _common.fail(OP, "the result is not finite although every input is")
    return f, o, d


if hasattr(torch.ops, "dgnerf") and hasattr(torch.ops.dgnerf, "integrate_features"):

    @torch.library.register_fake("dgnerf::integrate_features")
    def _fake(sigma, features, depths, deltas, background, threshold):
        R, S, C = features.shape
        torch._check(sigma.shape == (R, S), lambda: "dgnerf.integrate_features: 'sigma' must be [rays, samples]")
        return features.new_empty((R, C)), features.new_empty((R,)), features.new_empty((R,))

    @torch.library.register_fake("dgnerf::integrate_features_backward")
    def _fake_bwd(g_f, g_o, g_d, sigma, features, depths, deltas, background, threshold):
        R, S, C = features.shape
        return (
            sigma.new_empty((R, S)),
            features.new_empty((R, S, C)),
            depths.new_empty((R, S)),
            deltas.new_empty((R, S)),
            background.new_empty((C,)),
        )

    def _setup(ctx, inputs, output):
        sigma, features, depths, deltas, background, threshold = inputs
        ctx.save_for_backward(sigma, features, depths, deltas, background)
        ctx.threshold = threshold
        ctx.set_materialize_grads(False)  # _backward zero-fills only what it needs

    def _backward(ctx, g_f, g_o, g_d):
        sigma, features, depths, deltas, background = ctx.saved_tensors
        R, C = features.shape[0], features.shape[2]
        g_f = features.new_zeros((R, C)) if g_f is None else g_f.contiguous()
        g_o = features.new_zeros((R,)) if g_o is None else g_o.contiguous()
        g_d = features.new_zeros((R,)) if g_d is None else g_d.contiguous()
        gs, gF, gt, gdl, gbg = torch.ops.dgnerf.integrate_features_backward(
            g_f, g_o, g_d, sigma, features, depths, deltas, background, ctx.threshold
        )
        return gs, gF, gt, gdl, gbg, None

    torch.library.register_autograd("dgnerf::integrate_features", _backward, setup_context=_setup)
