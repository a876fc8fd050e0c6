"""The conditioned field MLP, fused (docs/design.md, "The model" and "Speed-ups"): the engine's hottest op.

    weights = FieldWeights.from_unfolded(layer_weights, layer_biases, sigma_w, sigma_b, dir_w, dir_b,
                                         out_w, out_b, dx=63, skip=5)
    cond0, cond_skip = fold_conditioning(weights, z_id, beta)          # once per image
    sigma, out = field_mlp(x_enc, d_enc, cond0, cond_skip, weights, output="feature", precision="fp32")

Shapes: x_enc = gamma(x) [B,P,Dx] and d_enc = gamma(d) [B,P,Dd] (P points per image, in contiguous
blocks), z_id [B,Z], beta [B,E], cond0 / cond_skip [B,W]. Unfolded layers (what nn.Linear holds):
layer 0 [W, Dx+Z+E] on u = [gamma(x), z_id, beta]; layers 1..D-1 [W, W] on h, except the skip layer
`skip` [W, Dx+Z+E+W] on [u, h] (u first); sigma head [1, W]; direction layer [Wd, W+Dd] on [h, gamma(d)];
output layer [F, Wd]. ReLU after every trunk layer and the direction layer; sigma raw.

Folding (exact): W0 u = W0x gamma(x) + (W0c [z; beta] + b0) -> cond0 [B,W] once per image, and the same
for the skip layer -> cond_skip. The op computes per point
    h_0 = relu(W0x x + cond0[b]);  h_l = relu(W_l h_{l-1} + b_l);  h_s = relu(Wsx x + Wsh h_{s-1} + cond_skip[b])
    sigma = w_sigma . h_{D-1} + b_sigma
    hdir  = relu(Wd [h_{D-1}, d] + b_d);  F = W_out hdir + b_out
and returns (sigma [B,P], F [B,P,F]) for output="feature" or (sigma, hdir [B,P,Wd]) for output="hidden"
(integrate-then-project: integrate hdir along the ray, then apply `weights.out_w`/`out_b` once per ray).

precision: "fp32" computes exactly in the inputs' dtype (float32, or float64 for gradcheck); "bf16" runs
every layer's GEMM on bf16 operands with float32 accumulation (CPU: AVX-512 BF16 through oneDNN; CUDA:
tensor cores), "fp16" likewise on CUDA. Inputs, outputs and gradients keep the inputs' dtype; activations
between layers are rounded to the compute dtype. Gradients flow to x_enc, d_enc, cond0, cond_skip and every
weight and bias (through `fold_conditioning` also to z_id, beta and the folded weight slices).

Example:
    >>> import torch, dgnerf
    >>> from dgnerf.ops.mlp import FieldWeights, fold_conditioning, field_mlp
    >>> B, P, Dx, Dd, Z, E, W, D, Wd, F, s = 2, 64, 63, 27, 512, 46, 256, 8, 128, 512, 5
    >>> ins = [Dx + Z + E] + [W] * (D - 1); ins[s] += Dx + Z + E
    >>> lin = [torch.nn.Linear(i, W) for i in ins]
    >>> sig, dirl, outl = torch.nn.Linear(W, 1), torch.nn.Linear(W + Dd, Wd), torch.nn.Linear(Wd, F)
    >>> weights = FieldWeights.from_unfolded([l.weight for l in lin], [l.bias for l in lin], sig.weight, sig.bias,
    ...                                      dirl.weight, dirl.bias, outl.weight, outl.bias, dx=Dx, skip=s)
    >>> z_id, beta = torch.randn(B, Z), torch.randn(B, E)
    >>> cond0, cond_skip = fold_conditioning(weights, z_id, beta)
    >>> sigma, feat = field_mlp(torch.randn(B, P, Dx), torch.randn(B, P, Dd), cond0, cond_skip, weights)
    >>> sigma.shape, feat.shape
    (torch.Size([2, 64]), torch.Size([2, 64, 512]))
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as tf

from dgnerf.ops import _common
from dgnerf.ops._common import Precision
from dgnerf.ops.reference import field_mlp_reference

OP = "field_mlp"
_FLOATS = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


@dataclass(frozen=True)
class FieldWeights:
    """The field MLP's parameters split for the folded op (views of the nn.Linear weights: gradients flow).

    w0x [W,Dx], w0c [W,Z+E], b0 [W]: layer 0 on gamma(x) / on [z; beta] / bias.
    hidden_w: D-1 tensors [W,W], the weight of layers 1..D-1 on h (for the skip layer its h part).
    hidden_b: the biases of layers 1..D-1 except the skip layer (its bias lives in cond_skip).
    skip_wx [W,Dx], skip_wc [W,Z+E], skip_b [W]: the skip layer's other parts (None without skip).
    sigma_w [1,W], sigma_b [1]; dir_w [Wd, W+Dd], dir_b [Wd]; out_w [F,Wd], out_b [F].
    """

    w0x: torch.Tensor
    w0c: torch.Tensor
    b0: torch.Tensor
    hidden_w: tuple
    hidden_b: tuple
    skip_wx: torch.Tensor | None
    skip_wc: torch.Tensor | None
    skip_b: torch.Tensor | None
    sigma_w: torch.Tensor
    sigma_b: torch.Tensor
    dir_w: torch.Tensor
    dir_b: torch.Tensor
    out_w: torch.Tensor
    out_b: torch.Tensor
    skip: int | None

    @property
    def depth(self) -> int:
        return len(self.hidden_w) + 1

    @property
    def width(self) -> int:
        return self.w0x.shape[0]

    @staticmethod
    def from_unfolded(layer_weights, layer_biases, sigma_w, sigma_b, dir_w, dir_b, out_w, out_b, dx, skip=5):
        """Split the unfolded nn.Linear weights (see the module docstring) at Dx = `dx` input columns.
        `skip` is the layer whose input is [u, h] (None: no skip)."""
        lw, lb = list(layer_weights), list(layer_biases)
        if len(lw) < 1 or len(lw) != len(lb):
            _common.fail(OP, f"expected as many layer weights as biases (>= 1), got {len(lw)} and {len(lb)}")
        D = len(lw)
        W = lw[0].shape[0]
        if lw[0].dim() != 2 or lw[0].shape[1] <= dx:
            _common.fail(OP, f"layer 0 weight expected shape [W, dx + cond] with dx = {dx}, got {list(lw[0].shape)}")
        nc = lw[0].shape[1] - dx
        if skip is not None and not (isinstance(skip, int) and 1 <= skip < D):
            _common.fail(OP, f"argument 'skip' expected None or a layer in [1, {D - 1}], got {skip!r}")
        hidden_w, hidden_b = [], []
        skip_wx = skip_wc = skip_b = None
        for layer in range(1, D):
            w = lw[layer]
            if layer == skip:
                if tuple(w.shape) != (W, dx + nc + W):
                    _common.fail(OP, f"skip layer {layer} weight expected shape [{W}, {dx + nc + W}] (over [u, h]), got {list(w.shape)}")
                skip_wx, skip_wc, hidden = w[:, :dx], w[:, dx : dx + nc], w[:, dx + nc :]
                skip_b = lb[layer]
            else:
                if tuple(w.shape) != (W, W):
                    _common.fail(OP, f"layer {layer} weight expected shape [{W}, {W}], got {list(w.shape)}")
                hidden = w
                hidden_b.append(lb[layer])
            hidden_w.append(hidden)
        return FieldWeights(
            w0x=lw[0][:, :dx], w0c=lw[0][:, dx:], b0=lb[0], hidden_w=tuple(hidden_w), hidden_b=tuple(hidden_b),
            skip_wx=skip_wx, skip_wc=skip_wc, skip_b=skip_b, sigma_w=sigma_w, sigma_b=sigma_b, dir_w=dir_w,
            dir_b=dir_b, out_w=out_w, out_b=out_b, skip=skip,
        )


def fold_conditioning(weights: FieldWeights, z_id: torch.Tensor, beta: torch.Tensor):
    """(cond0, cond_skip) [B,W] = W0c [z;beta] + b0, Wsc [z;beta] + bs: once per image (cond_skip None without skip)."""
    c = torch.cat([z_id, beta], dim=-1)
    cond0 = tf.linear(c, weights.w0c, weights.b0)
    cond_skip = None if weights.skip is None else tf.linear(c, weights.skip_wc, weights.skip_b)
    return cond0, cond_skip


def _check_weights(weights, x_enc, W, Dx, Dd):
    """Every tensor of the FieldWeights: a tensor of the right shape on x_enc's device, in x_enc's dtype on the CPU
    (the kernels read them as such; a wrong one would otherwise fail inside a kernel, or not at all)."""
    dtypes = (x_enc.dtype,) if x_enc.device.type == "cpu" else _FLOATS + (torch.float16, torch.bfloat16)

    def t(name, v, shape, meaning):
        _common.check_tensor(OP, f"weights.{name}", v, shape, meaning, dtypes=dtypes)
        if v.device != x_enc.device:
            _common.fail(OP, f"argument 'weights.{name}' expected device {x_enc.device} (the device of 'x_enc'), got {v.device}")

    if not isinstance(weights.hidden_w, (tuple, list)) or not isinstance(weights.hidden_b, (tuple, list)):
        _common.fail(OP, "argument 'weights' expected tuples hidden_w and hidden_b (FieldWeights.from_unfolded)")
    skip = weights.skip
    if skip is not None and not (isinstance(skip, int) and not isinstance(skip, bool) and 1 <= skip <= len(weights.hidden_w)):
        _common.fail(OP, f"argument 'weights.skip' expected None or a layer in [1, {len(weights.hidden_w)}], got {skip!r}")
    n_bias = len(weights.hidden_w) - (1 if skip is not None else 0)
    if len(weights.hidden_b) != n_bias:
        _common.fail(OP, f"argument 'weights.hidden_b' expected {n_bias} biases for {len(weights.hidden_w)} hidden layers "
                         f"(skip {skip}), got {len(weights.hidden_b)}")
    for i, w in enumerate(weights.hidden_w):
        t(f"hidden_w[{i}]", w, (W, W), "[W, W]")
    for i, b in enumerate(weights.hidden_b):
        t(f"hidden_b[{i}]", b, (W,), "[W]")
    if skip is not None:
        t("skip_wx", weights.skip_wx, (W, Dx), "[W, Dx] (the skip layer's part on gamma(x))")
    t("sigma_w", weights.sigma_w, (1, W), "[1, W]")
    t("sigma_b", weights.sigma_b, (1,), "[1]")
    t("dir_w", weights.dir_w, (None, W + Dd), "[Wd, W + Dd] with Dd from 'd_enc'")
    Wd = weights.dir_w.shape[0]
    t("dir_b", weights.dir_b, (Wd,), "[Wd]")
    t("out_w", weights.out_w, (None, Wd), "[F, Wd]")
    t("out_b", weights.out_b, (weights.out_w.shape[0],), "[F]")


def _check(x_enc, d_enc, cond0, cond_skip, weights, output, precision):
    _common.check_tensor(OP, "x_enc", x_enc, dtypes=_FLOATS)
    if x_enc.dim() != 3 or x_enc.numel() == 0:
        _common.fail(OP, f"argument 'x_enc' expected a non-empty shape [images, points, Dx], got {list(x_enc.shape)}")
    B, P, Dx = x_enc.shape
    if x_enc.device.type == "cpu" and x_enc.dtype not in (torch.float32, torch.float64):
        _common.fail(OP, f"argument 'x_enc' expected float32 or float64 on CPU, got {x_enc.dtype}")
    if not isinstance(weights, FieldWeights):
        _common.fail(OP, f"argument 'weights' expected a FieldWeights (FieldWeights.from_unfolded), got {type(weights).__name__}")
    _common.check_tensor(OP, "weights.w0x", weights.w0x)
    if weights.w0x.dim() != 2:
        _common.fail(OP, f"argument 'weights.w0x' expected shape [W, Dx], got {list(weights.w0x.shape)}")
    W = weights.width
    _common.check_tensor(OP, "d_enc", d_enc, (B, P, None), "[images, points, Dd] matching 'x_enc'", like=x_enc, like_name="x_enc")
    _common.check_tensor(OP, "cond0", cond0, (B, W), "[images, W] (fold_conditioning)", like=x_enc, like_name="x_enc")
    if weights.skip is not None:
        if cond_skip is None:
            _common.fail(OP, f"argument 'cond_skip' is None but the weights have a skip layer ({weights.skip})")
        _common.check_tensor(OP, "cond_skip", cond_skip, (B, W), "[images, W] (fold_conditioning)", like=x_enc, like_name="x_enc")
    _common.check_tensor(OP, "weights.w0x", weights.w0x, (W, Dx), "[W, Dx] with Dx from 'x_enc'", like=x_enc, like_name="x_enc")
    _check_weights(weights, x_enc, W, Dx, d_enc.shape[-1])
    if output not in ("feature", "hidden"):
        _common.fail(OP, f"argument 'output' expected 'feature' or 'hidden', got {output!r}")
    precision = Precision.parse(precision, f"dgnerf.{OP}")
    if x_enc.device.type == "cpu" and precision == "fp16":
        _common.fail(OP, "argument 'precision' 'fp16' is not supported on CPU (use 'fp32' or 'bf16')")
    if precision != "fp32" and x_enc.dtype == torch.float64:
        _common.fail(OP, f"argument 'precision' {precision.value!r} with float64 inputs; use precision='fp32' for float64")
    return precision


def field_mlp(x_enc: torch.Tensor, d_enc: torch.Tensor, cond0: torch.Tensor, cond_skip: torch.Tensor | None,
              weights: FieldWeights, output: str = "feature",
              precision: Precision | str = Precision.FP32) -> tuple[torch.Tensor, torch.Tensor]:
    """The folded field MLP on every point (formulas in the module docstring).

    Args:
        x_enc: gamma(x) [B, P, Dx], float32 or float64 (CPU), or float16/bfloat16 too on CUDA.
        d_enc: gamma(d) [B, P, Dd], same dtype and device.
        cond0: [B, W], the folded conditioning of layer 0 (`fold_conditioning`).
        cond_skip: [B, W] of the skip layer, or None when `weights.skip` is None.
        weights: the MLP's parameters (`FieldWeights.from_unfolded`).
        output: "feature" (F, the last layer applied) or "hidden" (the direction layer's output).
        precision: "fp32" (exact), "bf16" (CPU and CUDA) or "fp16" (CUDA).
    Returns:
        sigma [B, P] (raw, before the density activation) and F [B, P, F] or hidden [B, P, Wd], in x_enc's dtype.
    """
    precision = _check(x_enc, d_enc, cond0, cond_skip, weights, output, precision)
    feature = output == "feature"
    if not _common.use_kernel("field_mlp_forward", x_enc.device):
        sigma, out = field_mlp_reference(x_enc, d_enc, cond0, cond_skip, weights, output)
    else:
        tensors = [x_enc, d_enc, cond0, cond_skip, weights.w0x, *weights.hidden_w, *weights.hidden_b, weights.skip_wx,
                   weights.sigma_w, weights.sigma_b, weights.dir_w, weights.dir_b, weights.out_w, weights.out_b]
        save = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)
        c = lambda t: None if t is None else t.contiguous()  # noqa: E731
        # Weights go to the CUDA kernel as they are (views of the nn.Linear weights): it converts them itself
        # and caches the packed form keyed on these very tensors and their version counters, which a
        # .contiguous() copy per call would defeat.
        cw = (lambda t: t) if x_enc.device.type == "cuda" else c
        sigma, out, _ = torch.ops.dgnerf.field_mlp_forward(
            x_enc.contiguous(), d_enc.contiguous(), cond0.contiguous(), c(cond_skip), cw(weights.w0x),
            [cw(w) for w in weights.hidden_w], [cw(b) for b in weights.hidden_b], cw(weights.skip_wx),
            cw(weights.sigma_w), cw(weights.sigma_b), cw(weights.dir_w),
            cw(weights.dir_b), cw(weights.out_w), cw(weights.out_b),
            -1 if weights.skip is None else int(weights.skip), feature, precision.code, save,
        )
    if _common.checks_enabled() and not _common.all_finite(sigma, out):
        named = {"x_enc": x_enc, "d_enc": d_enc, "cond0": cond0, "cond_skip": cond_skip}
        named.update({f"weights.{k}": getattr(weights, k) for k in ("w0x", "sigma_w", "dir_w", "out_w")})
        named.update({f"weights.hidden_w[{i}]": w for i, w in enumerate(weights.hidden_w)})
        _common.check_finite(OP, named)
        _common.fail(OP, f"the result is not finite although every input is (overflow in precision {precision.value!r}?)")
    return sigma, out


if hasattr(torch.ops, "dgnerf") and hasattr(torch.ops.dgnerf, "field_mlp_forward"):

    _COMPUTE = {1: torch.bfloat16, 2: torch.float16}

    @torch.library.register_fake("dgnerf::field_mlp_forward")
    def _fake(x_enc, d_enc, cond0, cond_skip, w0x, hidden_w, hidden_b, skip_wx, sigma_w, sigma_b, dir_w, dir_b,
              out_w, out_b, skip, feature, precision, save):
        B, P, _ = x_enc.shape
        W, Wd, D = w0x.shape[0], dir_w.shape[0], len(hidden_w) + 1
        C = out_w.shape[0] if feature else Wd
        ct = _COMPUTE.get(precision, x_enc.dtype)
        n_acts = D * B * P * W + B * P * Wd if save else 0
        return x_enc.new_empty((B, P)), x_enc.new_empty((B, P, C)), x_enc.new_empty((n_acts,), dtype=ct)

    @torch.library.register_fake("dgnerf::field_mlp_backward")
    def _fake_bwd(grad_sigma, grad_out, x_enc, d_enc, acts, w0x, hidden_w, skip_wx, sigma_w, dir_w, out_w, skip,
                  feature, precision):
        B, P, Dx = x_enc.shape
        W, D = w0x.shape[0], len(hidden_w) + 1
        e = lambda *s: x_enc.new_empty(s)  # noqa: E731
        n_b = D - 2 if skip >= 0 else D - 1
        return (
            e(B, P, Dx), e(B, P, d_enc.shape[2]), e(B, W), e(B, W) if skip >= 0 else e(0), e(W, Dx),
            [e(W, W) for _ in hidden_w], [e(W) for _ in range(max(n_b, 0))], e(W, Dx) if skip >= 0 else e(0),
            e(1, W), e(1), e(*dir_w.shape), e(dir_w.shape[0]), e(*out_w.shape), e(out_w.shape[0]),
        )

    def _setup(ctx, inputs, output):
        (x_enc, d_enc, cond0, cond_skip, w0x, hidden_w, hidden_b, skip_wx, sigma_w, sigma_b, dir_w, dir_b, out_w,
         out_b, skip, feature, precision, save) = inputs
        ctx.save_for_backward(x_enc, d_enc, output[2], w0x, skip_wx, sigma_w, dir_w, out_w, *hidden_w)
        ctx.meta = (skip, feature, precision, save, cond_skip is not None, len(hidden_b))
        ctx.mark_non_differentiable(output[2])
        # No zero-filled gradient for outputs that get none (the activation store alone is
        # N x (D W + Wd) values: zero-filling it was ~10% of a training step); _backward handles None.
        ctx.set_materialize_grads(False)

    def _backward(ctx, g_sigma, g_out, _g_acts):
        x_enc, d_enc, acts, w0x, skip_wx, sigma_w, dir_w, out_w, *hidden_w = ctx.saved_tensors
        skip, feature, precision, save, has_cs, n_b = ctx.meta
        if not save:
            _common.fail(OP, "backward through a forward run with save=False (no saved activations); "
                             "call dgnerf.ops.field_mlp, which saves them when gradients are needed")
        B, P = x_enc.shape[:2]
        C = out_w.shape[0] if feature else dir_w.shape[0]
        g_sigma = x_enc.new_zeros((B, P)) if g_sigma is None else g_sigma.contiguous()
        g_out = x_enc.new_zeros((B, P, C)) if g_out is None else g_out.contiguous()
        (gx, gd, gc0, gcs, gw0x, ghw, ghb, gswx, gsw, gsb, gdw, gdb, gow, gob) = torch.ops.dgnerf.field_mlp_backward(
            g_sigma, g_out, x_enc, d_enc, acts, w0x, hidden_w, skip_wx, sigma_w, dir_w, out_w, skip, feature, precision
        )
        if skip < 0:
            gcs = gswx = None
        return (gx, gd, gc0, gcs, gw0x, list(ghw), list(ghb), gswx, gsw, gsb, gdw, gdb, gow, gob,
                None, None, None, None)

    torch.library.register_autograd("dgnerf::field_mlp_forward", _backward, setup_context=_setup)
