"""HeadModel: (identity code, expression code, camera) -> feature map -> image (docs/design.md, "The model").

    model = HeadModel(HeadConfig())
    out = model(identity, expression, c2w, intrinsics)                 # options=RenderOptions(path="fast")
    out.image [B,3,256,256] in [0,1], out.feature_map [B,512,32,32], out.opacity / out.depth [B,32,32]

Two paths over the same weights:
- "reference": the paper's plain formulation. Unfolded input u = [gamma(x), identity, expression] per sample
  through the field's nn.Linear layers (FieldMLP.forward), the 512-d F per sample, integrated by the reference
  integrator (dgnerf.ops.reference); rays from the reference sampler.
- "fast": the fused ops (sample_rays, field_mlp, integrate_features) and the exact speed-ups: conditioning
  folded into one bias per image, integrate the 128-d hdir and project once per ray:
  sum w F = A (sum w hdir) + b sum w, plus (1 - sum w) F_bg; in the renderer, each upsample + 3x3 conv
  runs as four 2x2 phase convolutions of the small map. It equals the reference up to float rounding.

Approximate options of the fast path (off by default): early ray termination and empty-space skipping
(dgnerf.model.marching), bf16/fp16 arithmetic. CUDA graphs of a whole frame: dgnerf.model.graphs.
Every stage runs in a torch.cuda.nvtx range (sampling, mlp, integration, renderer); RenderOptions(timed=True)
returns per-stage milliseconds (synchronising CUDA between stages).
"""
from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as Fn
from torch import nn

from dgnerf import ops
from dgnerf.camera import intrinsics_from_fov
from dgnerf.model import marching
from dgnerf.model.config import HeadConfig
from dgnerf.model.encoding import positional_encoding
from dgnerf.model.field import FieldMLP
from dgnerf.model.renderer import NeuralRenderer
from dgnerf.ops import Precision
from dgnerf.ops.reference import integrate_features_reference, sample_rays_reference

PATHS = ("reference", "fast")
STAGES = ("sampling", "mlp", "integration", "renderer")
RENDERER_FORMS = ("auto", "phase", "upsample")


@dataclass(frozen=True)
class RenderOptions:
    """How to render (engine settings; what to render are the forward's arguments).

    path: "fast" (fused ops, exact speed-ups) or "reference" (the plain formulation, float32 only).
    precision: arithmetic of the MLP and renderer on the fast path (Precision: fp32 exact, bf16, fp16 on CUDA).
    ert_threshold: > 0 stops a ray once its transmittance is below it (early termination; approximate).
    ert_chunk: samples evaluated at a time along the rays with early termination.
    skip_stride: k > 0 skips empty space by a density pass at every k-th sample (approximate).
    skip_eps: a sample is empty when its coarse neighbourhood has sigma * delta below this.
    stratified, seed: jittered sample depths (training), reproducible from the seed.
    render_image: False stops after the feature map (image None).
    renderer_form: "phase" (each upsample + 3x3 conv as four 2x2 convolutions, exact), "upsample", or "auto"
        (CPU: phase; CUDA: upsample below 8 images, phase from 8; measured in docs/design.md).
    channels_last: NHWC layout in the renderer.
    timed: return per-stage milliseconds in the result's `timings`.
    """

    path: str = "fast"
    precision: Precision | str = Precision.FP32
    ert_threshold: float = 0.0
    ert_chunk: int = 16
    skip_stride: int = 0
    skip_eps: float = 1e-3
    stratified: bool = False
    seed: int = 0
    render_image: bool = True
    renderer_form: str = "auto"
    channels_last: bool = False
    timed: bool = False

    def __post_init__(self):
        def bad(name, expected):
            raise ValueError(f"RenderOptions: '{name}' expected {expected}, got {getattr(self, name)!r}")

        if self.path not in PATHS:
            bad("path", f"one of {PATHS}")
        object.__setattr__(self, "precision", Precision.parse(self.precision, "RenderOptions"))
        t = self.ert_threshold
        if not (isinstance(t, (int, float)) and not isinstance(t, bool) and 0.0 <= t < 1.0):
            bad("ert_threshold", "a number in [0, 1)")
        if not (isinstance(self.skip_stride, int) and not isinstance(self.skip_stride, bool) and self.skip_stride >= 0):
            bad("skip_stride", "an int >= 0")
        if not (isinstance(self.ert_chunk, int) and not isinstance(self.ert_chunk, bool) and self.ert_chunk > 0):
            bad("ert_chunk", "a positive int")
        e = self.skip_eps
        if not (isinstance(e, (int, float)) and not isinstance(e, bool) and math.isfinite(e) and e >= 0):
            bad("skip_eps", "a finite number >= 0")
        if self.renderer_form not in RENDERER_FORMS:
            bad("renderer_form", f"one of {RENDERER_FORMS}")
        if self.path == "reference" and (self.precision != Precision.FP32 or self.ert_threshold > 0 or self.skip_stride > 0):
            raise ValueError("RenderOptions: the reference path is exact fp32; precision, ert_threshold and "
                             "skip_stride apply to path='fast'")


@dataclass
class Render:
    """What HeadModel.forward returns: image [B,3,H,W] in [0,1] (None without render_image), feature_map
    [B,C,h,w], opacity and depth [B,h,w], and per-stage milliseconds when RenderOptions.timed."""

    image: torch.Tensor | None
    feature_map: torch.Tensor
    opacity: torch.Tensor
    depth: torch.Tensor
    timings: dict[str, float] = field(default_factory=dict)


@contextlib.contextmanager
def _stage(name: str, timings: dict | None, device: torch.device):
    """nvtx range (no-op without CUDA) plus optional wall-clock timing of one stage."""
    use_nvtx = device.type == "cuda"
    if use_nvtx:
        torch.cuda.nvtx.range_push(name)
    if timings is not None and device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    try:
        yield
    finally:
        if timings is not None:
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            timings[name] = timings.get(name, 0.0) + (time.perf_counter() - t0) * 1e3
        if use_nvtx:
            torch.cuda.nvtx.range_pop()


def _capturing() -> bool:
    return torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()


class HeadModel(nn.Module):
    def __init__(self, cfg: HeadConfig | None = None):
        super().__init__()
        self.cfg = cfg = cfg if cfg is not None else HeadConfig()
        self.field = FieldMLP(cfg)
        self.background = nn.Parameter(torch.randn(cfg.feature_dim) * cfg.background_init_std)
        self.renderer = NeuralRenderer(cfg.feature_dim, cfg.renderer_channels, cfg.leaky_slope)

    # ------------------------------------------------------------------ helpers
    def density(self, sigma_raw: torch.Tensor) -> torch.Tensor:
        if self.cfg.sigma_activation == "softplus":
            return Fn.softplus(sigma_raw)
        return torch.relu(sigma_raw)

    def default_intrinsics(self, batch: int = 1, device=None, dtype=torch.float32) -> torch.Tensor:
        """The config's intrinsics at feature-map resolution -> [batch, 4]."""
        return intrinsics_from_fov(self.cfg.fov_deg, self.cfg.feature_size, batch, dtype, device)

    def check_inputs(self, identity, expression, c2w, intrinsics) -> int:
        """Raise ValueError naming the first bad argument; -> batch size."""
        cfg = self.cfg
        dev = self.background.device

        def chk(name, t, shape, meaning):
            if not isinstance(t, torch.Tensor):
                raise ValueError(f"HeadModel: argument '{name}' expected a torch.Tensor, got {type(t).__name__}")
            if not t.is_floating_point():
                raise ValueError(f"HeadModel: argument '{name}' expected a floating-point tensor, got {t.dtype}")
            if t.device != dev:
                raise ValueError(f"HeadModel: argument '{name}' is on {t.device} but the model is on {dev}")
            ok = t.dim() == len(shape) and all(e is None or t.shape[i] == e for i, e in enumerate(shape))
            if not ok:
                exp = "[" + ", ".join("B" if e is None else str(e) for e in shape) + "]"
                raise ValueError(f"HeadModel: argument '{name}' expected shape {exp} {meaning}, got {list(t.shape)}")

        chk("identity", identity, (None, cfg.identity_dim), "(identity code)")
        B = identity.shape[0]
        chk("expression", expression, (B, cfg.expression_dim), "(expression code)")
        if not (isinstance(c2w, torch.Tensor) and c2w.dim() == 3 and c2w.shape[0] == B and c2w.shape[1] in (3, 4) and c2w.shape[2] == 4):
            got = list(c2w.shape) if isinstance(c2w, torch.Tensor) else type(c2w).__name__
            raise ValueError(f"HeadModel: argument 'c2w' expected shape [{B}, 3, 4] or [{B}, 4, 4] (camera-to-world), got {got}")
        chk("c2w", c2w, (B, None, 4), "")
        chk("intrinsics", intrinsics, (B, 4), "= (fx, fy, cx, cy) at feature-map resolution")
        if not _capturing():
            named = (("identity", identity), ("expression", expression), ("c2w", c2w), ("intrinsics", intrinsics))
            for name, t in named:
                if not bool(torch.isfinite(t).all()):
                    raise ValueError(f"HeadModel: argument '{name}' contains NaN or Inf values")
        return B

    # ------------------------------------------------------------------ forward
    def forward(self, identity: torch.Tensor, expression: torch.Tensor, c2w: torch.Tensor,
                intrinsics: torch.Tensor | None = None, gaze: torch.Tensor | None = None,
                options: RenderOptions | None = None) -> Render:
        """Render heads.

        Args:
            identity: [B, identity_dim] identity codes.
            expression: [B, expression_dim] expression codes.
            c2w: [B, 3, 4] or [B, 4, 4] camera-to-world (OpenCV axes; docs/design.md, "Conventions").
            intrinsics: [B, 4] (fx, fy, cx, cy) at feature-map resolution; None: the config's.
            gaze: [B, gaze_dim] for a model with gaze conditioning (None: the training set's mean gaze).
            options: RenderOptions (default: the fast path, exact fp32).
        Returns:
            Render (image, feature_map, opacity, depth, timings).
        """
        opt = options if options is not None else RenderOptions()
        if not isinstance(opt, RenderOptions):
            raise ValueError(f"HeadModel: argument 'options' expected a RenderOptions, got {type(opt).__name__}")
        if intrinsics is None:
            intrinsics = self.default_intrinsics(identity.shape[0] if isinstance(identity, torch.Tensor) else 1,
                                                 device=self.background.device, dtype=self.background.dtype)
        B = self.check_inputs(identity, expression, c2w, intrinsics)
        if self.cfg.identity_gain != 1.0:
            identity = identity * self.cfg.identity_gain
        if self.cfg.expression_gain != 1.0:
            expression = expression * self.cfg.expression_gain
        expression = self.field.condition(expression, gaze)
        timings = {} if opt.timed else None
        if opt.path == "reference":
            feat, opacity, depth = self._features_reference(identity, expression, c2w, intrinsics, opt, timings)
        else:
            if opt.precision == Precision.FP16 and identity.device.type == "cpu":
                raise ValueError("HeadModel: precision 'fp16' is for CUDA; use 'bf16' on CPU")
            feat, opacity, depth = self._features_fast(identity, expression, c2w, intrinsics, opt, timings)
        H = Wd = self.cfg.feature_size
        feature_map = feat.transpose(1, 2).reshape(B, -1, H, Wd)
        image = None
        if opt.render_image:
            with _stage("renderer", timings, feature_map.device):
                if opt.path == "fast":
                    form = opt.renderer_form
                    if form == "auto":
                        form = "phase" if feature_map.device.type != "cuda" or B >= 8 else "upsample"
                    dtype = opt.precision.dtype
                    image = self.renderer(feature_map, None if dtype == torch.float32 else dtype,
                                          channels_last=opt.channels_last, fast=form == "phase")
                else:
                    image = self.renderer(feature_map)
        return Render(image=image, feature_map=feature_map, opacity=opacity.reshape(B, H, Wd),
                      depth=depth.reshape(B, H, Wd), timings=timings or {})

    # ------------------------------------------------------------------ reference path
    def _features_reference(self, identity, expression, c2w, K, opt: RenderOptions, timings):
        cfg, dev = self.cfg, identity.device
        H = Wd = cfg.feature_size
        with _stage("sampling", timings, dev):
            pts, dirs, depths, deltas = sample_rays_reference(c2w, K, H, Wd, cfg.n_samples, cfg.near, cfg.far,
                                                              opt.stratified, opt.seed, cfg.sphere_radius)
            B, R, S = depths.shape
            x_enc = self.field.encoding(pts, identity, reference=True)
            d_enc = positional_encoding(dirs, cfg.dir_freqs)[:, :, None, :].expand(B, R, S, cfg.dir_enc_dim)
            cond = torch.cat([identity, expression], dim=-1)[:, None, None, :].expand(B, R, S, cfg.cond_dim)
            u = torch.cat([x_enc, cond], dim=-1)
        with _stage("mlp", timings, dev):
            sigma_raw, F = self.field(u, d_enc)
            sigma = self.density(sigma_raw)
        with _stage("integration", timings, dev):
            return integrate_features_reference(sigma, F, depths, deltas, self.background)

    # ------------------------------------------------------------------ fast path
    def _features_fast(self, identity, expression, c2w, K, opt: RenderOptions, timings):
        cfg, dev = self.cfg, identity.device
        H = Wd = cfg.feature_size
        with _stage("sampling", timings, dev):
            pts, dirs, depths, deltas = ops.sample_rays(c2w, K, H, Wd, cfg.n_samples, cfg.near, cfg.far,
                                                        opt.stratified, opt.seed, cfg.sphere_radius)
            x_enc = self.field.encoding(pts, identity)
            d_enc = positional_encoding(dirs, cfg.dir_freqs)
        base = deltas.dtype
        weights = self.field.weights()

        def field_fn(x, d, cond0, cond_skip):
            sigma_raw, hdir = ops.field_mlp(x, d, cond0, cond_skip, weights, output="hidden", precision=opt.precision)
            return self.density(sigma_raw.to(base)), hdir.to(base)

        with _stage("mlp", timings, dev):
            cond0, cond_skip = ops.fold_conditioning(weights, identity, expression)
            if opt.skip_stride > 0:
                sigma, hdir = marching.skip_empty(field_fn, x_enc, d_enc, cond0, cond_skip, deltas, opt.skip_stride,
                                                  opt.skip_eps, opt.ert_threshold, cfg.dir_width)
            elif opt.ert_threshold > 0:
                sigma, hdir = marching.early_termination(field_fn, x_enc, d_enc, cond0, cond_skip, deltas,
                                                         opt.ert_threshold, opt.ert_chunk, cfg.dir_width)
            else:
                sigma, hdir = marching.dense(field_fn, x_enc, d_enc, cond0, cond_skip)
        with _stage("integration", timings, dev):
            zero_bg = hdir.new_zeros(hdir.shape[-1])
            hsum, opacity, depth = ops.integrate_features(sigma, hdir, depths, deltas, zero_bg, opt.ert_threshold)
            out = self.field.out
            feat = Fn.linear(hsum, out.weight) + opacity[..., None] * out.bias + (1 - opacity)[..., None] * self.background
        return feat, opacity, depth


__all__ = ["HeadModel", "HeadConfig", "Render", "RenderOptions", "PATHS", "STAGES", "RENDERER_FORMS"]
