"""HeadConfig: every number of the head model (docs/design.md, "The model"), with the paper's defaults.

Geometry conventions (docs/design.md, "Conventions"; dgnerf.camera): the head is centred at the world origin and roughly fills
the unit sphere; the default camera sits `camera_distance` from the origin and looks at it, and rays
are sampled in [near, far] along the view direction. Intrinsics are pinhole with the principal point
at the centre, given at feature-map resolution (feature_size x feature_size).
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass

from dgnerf.codes import EXPRESSION_DIM, IDENTITY_DIM
from dgnerf.errors import DgnerfError

SIGMA_ACTIVATIONS = ("softplus", "relu")
POSITION_ENCODINGS = ("frequency", "hashgrid")
HASH_FIELDS = ("hash_levels", "hash_table_size", "hash_features", "hash_base_resolution", "hash_finest_resolution",
               "hash_bound")
# Named model sizes: HeadConfig overrides with the paper's structure (the codes' sizes come from the data).
# "tiny" for tests; "small" for minutes on a CPU (the demo); "small128" the same at 128x128 images (realvideo).
PRESETS = {
    "tiny": dict(pos_freqs=4, dir_freqs=2, mlp_depth=4, mlp_width=32, skip_layer=2, dir_width=16, feature_dim=24,
                 feature_size=8, n_samples=12, renderer_channels=(16, 8), image_size=32),
    "small": dict(feature_size=16, image_size=64, renderer_channels=(64, 32), mlp_depth=4, mlp_width=96, skip_layer=2,
                  dir_width=48, feature_dim=64, n_samples=24, pos_freqs=6, dir_freqs=2),
}
PRESETS["small128"] = dict(PRESETS["small"], image_size=128, renderer_channels=(64, 32, 16))
# Field names of configs written before the codes had one name everywhere (checkpoints keep loading).
LEGACY_NAMES = {"z_id_dim": "identity_dim", "beta_dim": "expression_dim"}


@dataclass
class HeadConfig:
    # Conditioning codes.
    identity_dim: int = IDENTITY_DIM  # identity code (face-recognition feature)
    expression_dim: int = EXPRESSION_DIM  # expression coefficients
    # Position encoding of x: "frequency" = the paper's gamma(x); "hashgrid" = a learnable multiresolution hash
    # grid (dgnerf.ops.hash_encode) of hash_levels x hash_table_size x hash_features over the cube
    # [-hash_bound, hash_bound]^3 (0 = the head's sphere_radius, or 1.5 without one), grid resolutions from
    # hash_base_resolution to hash_finest_resolution. The hash fields are left out of to_dict() for "frequency".
    position_encoding: str = "frequency"
    hash_levels: int = 16
    hash_table_size: int = 2**19
    hash_features: int = 2
    hash_base_resolution: int = 16
    hash_finest_resolution: int = 1024
    hash_bound: float = 0.0
    # Identity-mixed hash grid (beyond the paper; 0 = off, one grid shared by everyone): K >= 2 tables per level
    # (hash_features * K features per row), combined per image with weights w = b + A z computed from the identity
    # code z, enc_l(x, z) = sum_k w_k T_lk(x). Each person gets a combination of K learned fields before the MLP:
    # identity-specific detail without a wider MLP (docs/convergence.md). Left out of to_dict() when 0.
    hash_identity_bases: int = 0
    # Field MLP (the layout of dgnerf.ops.field_mlp).
    pos_freqs: int = 10  # gamma(x): x, sin/cos(2^k x), k < 10 -> 63-d
    dir_freqs: int = 4  # gamma(d): d, sin/cos(2^k d), k < 4 -> 27-d
    mlp_depth: int = 8
    mlp_width: int = 256
    skip_layer: int = 5  # this layer's input is cat([u, h]) with u = [gamma(x), identity, expression]
    dir_width: int = 128
    feature_dim: int = 512
    # softplus keeps a gradient everywhere (a ReLU density can die during training); "relu" is the
    # original NeRF choice. Applied outside the MLP, to the raw sigma head output.
    sigma_activation: str = "softplus"
    # Volume rendering of the feature map.
    feature_size: int = 32  # feature map is feature_size x feature_size
    n_samples: int = 64
    near: float = 2.5
    far: float = 5.5
    sphere_radius: float = 0.0  # > 0 clips each ray's [near, far] to this sphere around the head
    background_init_std: float = 0.1  # the learned background feature F_bg starts as N(0, std^2)
    # Camera defaults (dgnerf.camera.default_intrinsics / orbit_c2w).
    camera_distance: float = 4.0
    fov_deg: float = 30.0
    # Neural renderer: per block 2x upsample, 3x3 conv, LeakyReLU; feature_dim -> channels[0] -> ...
    renderer_channels: tuple = (256, 128, 64)
    leaky_slope: float = 0.2
    image_size: int = 256
    # Optional gaze conditioning (beyond the paper; 0 = off, the paper's model). A gaze code [G] (the
    # dataset's `gaze` features) joins the conditioning as u = [gamma(x), z_id, beta, g], normalised
    # g = (gaze - gaze_mean) / gaze_std with the training set's statistics (empty = 0 / 1), so "no gaze
    # given" (g = 0) is the training set's mean gaze. Left out of to_dict() when 0: configs, and so
    # checkpoints, of models without gaze are what they were before the option existed.
    gaze_dim: int = 0
    gaze_mean: tuple = ()
    gaze_std: tuple = ()
    # Gains on the codes before they enter the MLP (beyond the paper; 1 = the paper's raw codes). A unit-norm
    # 512-d identity has per-dimension spread ~0.04 and a 46-d expression code ~0.13, against ~0.7 for gamma(x),
    # so at the default initialisation they carry a few percent of the first layer's input variance and a short
    # training run learns to use them late. Left out of to_dict() when 1 (existing configs unchanged).
    identity_gain: float = 1.0
    expression_gain: float = 1.0
    # The training data's world frame: the rotation W (9 numbers, row-major) that turns `orbit_c2w`'s frontal
    # view into the data's (dgnerf.camera.world_frame: I for the built-in set, diag(1, -1, -1) for a
    # preprocessed video). Recorded by the trainer; empty = unknown (the built-in convention). Left out of
    # to_dict() when empty.
    world_frame: tuple = ()

    def __post_init__(self):
        self.renderer_channels = tuple(int(c) for c in self.renderer_channels)
        if isinstance(self.gaze_mean, (list, tuple)):
            self.gaze_mean = tuple(float(v) for v in self.gaze_mean)
        if isinstance(self.gaze_std, (list, tuple)):
            self.gaze_std = tuple(float(v) for v in self.gaze_std)
        if isinstance(self.world_frame, (list, tuple)):
            self.world_frame = tuple(float(v) for row in self.world_frame
                                     for v in (row if isinstance(row, (list, tuple)) else (row,)))
        self.validate()

    # ------------------------------------------------------------------ derived sizes
    @property
    def pos_enc_dim(self) -> int:
        """Width of the encoded position enc(x)."""
        if self.position_encoding == "hashgrid":
            return self.hash_levels * self.hash_features
        return 3 + 6 * self.pos_freqs

    @property
    def hash_half_size(self) -> float:
        """Half the edge of the cube the hash grid covers."""
        if self.hash_bound > 0:
            return float(self.hash_bound)
        return float(self.sphere_radius) if self.sphere_radius > 0 else 1.5

    @property
    def dir_enc_dim(self) -> int:
        return 3 + 6 * self.dir_freqs

    @property
    def cond_dim(self) -> int:
        """Width of the conditioning [identity, expression(, gaze)]."""
        return self.identity_dim + self.expression_dim + self.gaze_dim

    @property
    def input_dim(self) -> int:
        """Width of the unfolded MLP input u = [gamma(x), identity, expression(, gaze)]."""
        return self.pos_enc_dim + self.cond_dim

    @property
    def world_rotation(self):
        """world_frame as a float32 tensor [3, 3], or None when the config has none."""
        if not self.world_frame:
            return None
        import torch

        return torch.tensor(self.world_frame, dtype=torch.float32).reshape(3, 3)

    @property
    def focal(self) -> float:
        """Focal length in feature-map pixels for the default field of view."""
        return 0.5 * self.feature_size / math.tan(math.radians(self.fov_deg) / 2)

    # ------------------------------------------------------------------ checks and (de)serialisation
    def validate(self) -> None:
        def need(cond, name, expected):
            if not cond:
                raise DgnerfError(f"HeadConfig: '{name}' expected {expected}, got {getattr(self, name)!r}")

        for name in ("identity_dim", "expression_dim", "mlp_depth", "mlp_width", "dir_width", "feature_dim",
                     "feature_size", "n_samples", "image_size"):
            v = getattr(self, name)
            need(isinstance(v, int) and not isinstance(v, bool) and v > 0, name, "a positive int")
        for name in ("pos_freqs", "dir_freqs"):
            v = getattr(self, name)
            need(isinstance(v, int) and not isinstance(v, bool) and v >= 0, name, "an int >= 0")
        need(1 <= self.skip_layer < self.mlp_depth or self.skip_layer == -1, "skip_layer",
             f"-1 (no skip) or an index in [1, mlp_depth={self.mlp_depth})")
        need(self.sigma_activation in SIGMA_ACTIVATIONS, "sigma_activation", f"one of {SIGMA_ACTIVATIONS}")
        need(self.position_encoding in POSITION_ENCODINGS, "position_encoding", f"one of {POSITION_ENCODINGS}")
        for name in ("hash_levels", "hash_table_size", "hash_features", "hash_base_resolution", "hash_finest_resolution"):
            v = getattr(self, name)
            need(isinstance(v, int) and not isinstance(v, bool) and v > 0, name, "a positive int")
        need(self.hash_levels <= 64, "hash_levels", "at most 64")
        need(self.hash_table_size <= 2**31, "hash_table_size", "at most 2^31")
        need(self.hash_base_resolution <= self.hash_finest_resolution <= 2**20, "hash_finest_resolution",
             f"an int in [hash_base_resolution={self.hash_base_resolution}, 2^20]")
        need(isinstance(self.hash_bound, (int, float)) and not isinstance(self.hash_bound, bool)
             and math.isfinite(self.hash_bound) and self.hash_bound >= 0, "hash_bound",
             "a finite number >= 0 (0 = the head's sphere_radius)")
        need(isinstance(self.hash_identity_bases, int) and not isinstance(self.hash_identity_bases, bool)
             and (self.hash_identity_bases == 0 or 2 <= self.hash_identity_bases <= 64), "hash_identity_bases",
             "0 (off) or an int in [2, 64]")
        need(self.hash_identity_bases == 0 or self.position_encoding == "hashgrid", "hash_identity_bases",
             f"0 with position_encoding {self.position_encoding!r} (it mixes hash-grid tables)")
        need(0 <= self.near < self.far, "near", f"0 <= near < far ({self.far})")
        need(0 < self.fov_deg < 180, "fov_deg", "a field of view in (0, 180) degrees")
        need(self.camera_distance > 0, "camera_distance", "> 0")
        need(self.sphere_radius >= 0, "sphere_radius", ">= 0")
        need(len(self.renderer_channels) >= 1 and all(c > 0 for c in self.renderer_channels),
             "renderer_channels", "a non-empty tuple of positive ints")
        scale = 2 ** len(self.renderer_channels)
        need(self.image_size == self.feature_size * scale, "image_size",
             f"feature_size * 2^len(renderer_channels) = {self.feature_size} * {scale} = {self.feature_size * scale}")
        need(isinstance(self.gaze_dim, int) and not isinstance(self.gaze_dim, bool) and self.gaze_dim >= 0, "gaze_dim",
             "an int >= 0 (0 = no gaze conditioning)")
        for name in ("gaze_mean", "gaze_std"):
            v = getattr(self, name)
            need(isinstance(v, tuple) and len(v) in (0, self.gaze_dim) and all(math.isfinite(x) for x in v), name,
                 f"an empty list or {self.gaze_dim} finite numbers (gaze_dim)")
        need(all(x > 0 for x in self.gaze_std), "gaze_std", "positive numbers")
        for name in ("identity_gain", "expression_gain"):
            v = getattr(self, name)
            need(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0, name,
                 "a finite number > 0 (1 = the paper's raw codes)")
        need(isinstance(self.world_frame, tuple) and len(self.world_frame) in (0, 9)
             and all(math.isfinite(v) for v in self.world_frame), "world_frame",
             "an empty list or a 3x3 rotation (9 finite numbers)")

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["renderer_channels"] = list(self.renderer_channels)
        if self.gaze_dim == 0 and not self.gaze_mean and not self.gaze_std:
            for k in ("gaze_dim", "gaze_mean", "gaze_std"):
                del d[k]
        else:
            d["gaze_mean"], d["gaze_std"] = list(self.gaze_mean), list(self.gaze_std)
        for k in ("identity_gain", "expression_gain"):
            if d[k] == 1.0:
                del d[k]
        if self.hash_identity_bases == 0:
            del d["hash_identity_bases"]
        if self.world_frame:
            d["world_frame"] = list(self.world_frame)
        else:
            del d["world_frame"]
        if self.position_encoding == "frequency":
            for k in ("position_encoding",) + HASH_FIELDS:
                del d[k]
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict) -> "HeadConfig":
        if not isinstance(d, dict):
            raise DgnerfError(f"HeadConfig: expected a JSON object, got {type(d).__name__}")
        d = {LEGACY_NAMES.get(k, k): v for k, v in d.items()}
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise DgnerfError(f"HeadConfig: unknown field(s) {unknown}; known fields are {sorted(known)}")
        try:
            return cls(**d)
        except TypeError as e:
            raise DgnerfError(f"HeadConfig: {e}") from None

    @classmethod
    def from_json(cls, s: str) -> "HeadConfig":
        try:
            d = json.loads(s)
        except ValueError as e:
            raise DgnerfError(f"HeadConfig: the config is not valid JSON ({e})") from None
        return cls.from_dict(d)

    @classmethod
    def tiny(cls, **overrides) -> "HeadConfig":
        """The "tiny" preset with 16-d identity and 6-d expression codes, for tests and quick experiments."""
        base = dict(PRESETS["tiny"], identity_dim=16, expression_dim=6)
        base.update(overrides)
        return cls(**base)


__all__ = ["HeadConfig", "PRESETS", "POSITION_ENCODINGS", "SIGMA_ACTIVATIONS"]
