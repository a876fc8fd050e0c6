"""`dgnerf dataset check DIR` and `dgnerf dataset build-synthetic --out DIR --size ... --seed N`."""
from __future__ import annotations

import os
import sys
import time

from dgnerf.commands._common import check_int, check_seed, removed_on_error, resolve_device
from dgnerf.data.format import check_dataset, read_manifest
from dgnerf.data.synthetic import SIZES, build_synthetic_dataset
from dgnerf.errors import DgnerfError

MAX_PERSONS = 100_000
MAX_FRAMES = 10_000_000  # persons x frames per person


def register(sub):
    p = sub.add_parser("dataset", help="check a dataset directory, or build the built-in synthetic head set")
    dsub = p.add_subparsers(dest="dataset_command", metavar="ACTION")

    c = dsub.add_parser("check", help="report every problem of a dataset (each naming the file); exit 1 if any")
    c.add_argument("dir", help="dataset directory (holds manifest.json)")
    c.add_argument("--level", choices=["full", "header", "arrays"], default="full",
                   help="full: decode every PNG (default); header: only open them; arrays: only check they exist")
    c.set_defaults(func=run_check)

    b = dsub.add_parser("build-synthetic", help="generate the built-in procedural multi-identity head set")
    b.add_argument("--out", required=True, help="output dataset directory")
    b.add_argument("--size", default="small", choices=list(SIZES), help="tiny | small | medium | large (default small)")
    b.add_argument("--seed", type=int, default=0, help="seed: the same seed gives the same bytes")
    b.add_argument("--resolution", type=int, default=None, help="image size in pixels (default: per size)")
    b.add_argument("--persons", type=int, default=None, help="override the number of people")
    b.add_argument("--frames-per-person", type=int, default=None, help="override frames per person")
    b.add_argument("--test-persons", type=int, default=None, help="override the number of held-out people")
    b.add_argument("--supersample", type=int, default=1, help="s x s rays per pixel: anti-aliased images, soft mask edges (default 1)")
    b.add_argument("--workers", type=int, default=1, help="rendering processes; 0 = one per CPU core (default 1)")
    b.add_argument("--device", default="cpu", help="torch device for the sphere tracing, e.g. cuda (default cpu)")
    b.add_argument("--identity", choices=["params", "facenet"], default="params",
                   help="identity code: params = ground-truth parameters through a fixed random projection (default); "
                        "facenet = FaceNet feature of each frame's face (needs the facenet asset and OpenCV 5)")
    b.add_argument("--gaze-separate", action="store_true",
                   help="leave the gaze out of the expression code (only the gaze array has it): the set for training "
                        "a model with gaze conditioning (--model '{\"gaze_dim\": 2}')")
    b.add_argument("--preview", action="store_true", help="also write DIR/preview.png, a contact sheet of sample frames")
    b.add_argument("--overwrite", action="store_true", help="replace an existing dataset in --out")
    b.set_defaults(func=run_build)

    p.set_defaults(func=lambda args: (p.print_help(), 1)[1])


def run_check(args):
    # what the path is, said plainly, before the dataset's own problems are listed
    if not os.path.exists(args.dir):
        raise DgnerfError(f"{args.dir!r}: no such directory (a dataset is a directory holding manifest.json)")
    if not os.path.isdir(args.dir):
        raise DgnerfError(f"{args.dir!r}: is a file, not a dataset (a dataset is a directory holding manifest.json)")
    problems = check_dataset(args.dir, level=args.level, progress=sys.stderr.isatty())
    if problems:
        for line in problems:
            print(line)
        print(f"{args.dir}: {len(problems)} problem{'s' if len(problems) != 1 else ''}", file=sys.stderr)
        return 1
    m = read_manifest(args.dir)
    splits = {}
    for pr in m["persons"]:
        splits[pr["split"]] = splits.get(pr["split"], 0) + 1
    r = m["resolution"]
    print(
        f"{args.dir}: ok: {len(m['frames'])} frames, {len(m['persons'])} persons "
        f"({', '.join(f'{k}: {v}' for k, v in sorted(splits.items()))}), {r['height']}x{r['width']}, "
        f"expression {m['expression_dim']}, identity {m['identity_dim']}"
        + (f", gaze {m['gaze_dim']}" if m.get("gaze_dim") else "")
        + (f", basis {m['expression_basis']}" if m.get("expression_basis") else "")
    )
    return 0


def check_build_flags(args):
    check_seed(args.seed)
    check_int(args.resolution, "--resolution", 8, 2048, "image size in pixels")
    check_int(args.persons, "--persons", 1, MAX_PERSONS, "people")
    check_int(args.frames_per_person, "--frames-per-person", 1, MAX_FRAMES, "frames")
    pre = SIZES[args.size]
    persons = pre.persons if args.persons is None else args.persons
    frames = pre.frames_per_person if args.frames_per_person is None else args.frames_per_person
    if persons * frames > MAX_FRAMES:
        raise DgnerfError(f"--persons x --frames-per-person: {persons * frames} frames, at most {MAX_FRAMES}")
    check_int(args.test_persons, "--test-persons", 0, persons - 1,
              f"a number of held-out people (someone must train: {persons} people)")
    check_int(args.supersample, "--supersample", 1, 8, "rays per pixel side")
    check_int(args.workers, "--workers", 0, 1024, "processes, 0 = one per core")
    resolve_device(args.device)
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        raise DgnerfError(f"--out {args.out!r}: exists and is not a directory")
    if os.path.isdir(args.out) and os.listdir(args.out) and not args.overwrite:
        raise DgnerfError(f"--out {args.out!r}: directory is not empty (pass --overwrite to replace a dataset)")


def run_build(args):
    check_build_flags(args)
    t0 = time.perf_counter()
    with removed_on_error(args.out):
        info = _build(args)
    dt = time.perf_counter() - t0
    print(
        f"{args.out}: {info['num_frames']} frames of {info['num_persons']} persons "
        f"({info['num_test_persons']} held out for test) at {info['resolution']}px in {dt:.1f} s"
    )
    if info.get("preview"):
        print(f"preview: {info['preview']}")
    return 0


def _build(args):
    return build_synthetic_dataset(
        args.out,
        size=args.size,
        seed=args.seed,
        resolution=args.resolution,
        persons=args.persons,
        frames_per_person=args.frames_per_person,
        test_persons=args.test_persons,
        preview=args.preview,
        supersample=args.supersample,
        workers=args.workers,
        device=args.device,
        identity=args.identity,
        gaze_in_expression=not args.gaze_separate,
        overwrite=args.overwrite,
        progress=True,
    )
