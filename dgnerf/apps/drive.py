"""Driving: the target's identity, the driver's head pose and expression, frame by frame.

    from dgnerf.apps.drive import driver_from_dataset, drive_frames
    drv = driver_from_dataset("heads", model.cfg, person="p0011")
    frames = drive_frames(model, z_target, drv)        # list of [H, 2W, 3] uint8: driver | result

The driver's expression codes must be coefficients of the model's expression basis: a dataset made by
`dgnerf preprocess VIDEO --expression-basis TRAIN_SET` (or a raw video, preprocessed here the same way
when the preprocess extra is installed), or any person of the training set's own dataset.
The driver's camera (its tracked head pose and intrinsics) is used as is: the result is seen as the
driver's head is seen.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from dgnerf.apps.fit import is_dataset, preprocess_inputs, targets_from_dataset
from dgnerf.apps.fit import parse_source as _parse_source
from dgnerf.codes import load_code, load_identity
from dgnerf.data import HeadDataset
from dgnerf.errors import DgnerfError
from dgnerf.media import to_uint8
from dgnerf.model import RenderOptions
from dgnerf.preprocess.sources import IMAGE_EXT, VIDEO_EXT, is_image_file

VIDEO_EXTS = tuple(sorted(VIDEO_EXT))


def parse_source(spec: str, flag: str) -> tuple[str, str | None]:
    """'DIR' or 'DIR:person' (apps.fit.parse_source), its errors naming `flag`."""
    try:
        return _parse_source(spec)
    except DgnerfError as e:
        raise DgnerfError(f"{flag} {e}") from None


@dataclass
class Driver:
    image: torch.Tensor  # [N,3,S,S] the driver's frames at the model's image size
    c2w: torch.Tensor  # [N,4,4]
    intrinsics: torch.Tensor  # [N,4] feature-map pixels
    expression: torch.Tensor  # [N,E]
    person: str
    gaze: torch.Tensor | None = None  # [N,G] the driver's gaze (drives a model with gaze conditioning)

    def __len__(self):
        return self.image.shape[0]


def driver_from_dataset(root: str, cfg, person: str | None = None, split: str | None = None,
                        max_frames: int | None = None) -> Driver:
    """The frames of one person of a dataset in manifest order (temporal order for a video); person None:
    the dataset must hold one person (in `split` when given)."""
    if person is None:
        have = HeadDataset(root, split=split, check="none").split_persons
        if len(have) != 1:
            raise DgnerfError(f"--driver {root}: holds {len(have)} persons {have}; pick one with DATASET:PERSON")
        person = have[0]
    tg = targets_from_dataset(root, cfg, persons=[person], split=split, what="--driver")[0]
    n = len(tg) if max_frames is None else min(len(tg), max_frames)
    if max_frames is not None and max_frames < 1:
        raise DgnerfError(f"--max-frames: expected >= 1, got {max_frames}")
    return Driver(tg.image[:n], tg.c2w[:n], tg.intrinsics[:n], tg.expression[:n], person,
                  None if tg.gaze is None else tg.gaze[:n])


def dataset_identity(root: str, person: str | None, cfg, flag: str, spec: str) -> tuple[torch.Tensor, str]:
    """The mean identity code [1, I] of one person of a dataset (person None: its only person)."""
    ds = HeadDataset(root, check="none")
    if ds.identity_dim != cfg.identity_dim:
        raise DgnerfError(f"{flag} {spec!r}: identity codes are {ds.identity_dim}-d, the checkpoint expects {cfg.identity_dim}")
    if person is None:
        if len(ds.persons) != 1:
            raise DgnerfError(f"{flag} {spec!r}: the dataset holds {len(ds.persons)} persons; pick one with "
                              f"DATASET:PERSON (one of {ds.persons[:8]}{'...' if len(ds.persons) > 8 else ''})")
        person = ds.persons[0]
    rows = [j for j, f in enumerate(ds.frames) if f.person == person]
    if not rows:
        raise DgnerfError(f"{flag} {spec!r}: no person {person!r} in {root} (it has {ds.persons[:8]}"
                          f"{'...' if len(ds.persons) > 8 else ''})")
    z = ds.arrays["identity"][rows].mean(0, keepdim=True)
    if not bool(torch.isfinite(z).all()):
        raise DgnerfError(f"{flag} {spec!r}: the dataset's identity codes of {person!r} contain NaN/Inf values "
                          f"(`dgnerf dataset check {root}`)")
    return z, f"{root}:{person}"


def identity_spec(spec: str, cfg, flag: str = "--identity") -> torch.Tensor:
    """An identity code [1, I] from what `dgnerf render --identity` takes: a code file, DATASET:PERSON (the
    person's mean code, as `drive --target` reads it), zeros or random[:SEED]. Errors name `flag`."""
    if spec in ("zeros", "random") or spec.startswith("random:"):
        return load_code(spec, cfg.identity_dim, "identity", flag=flag)
    root, person = parse_source(spec, flag)
    if is_dataset(root):
        return dataset_identity(root, person, cfg, flag, spec)[0]
    if person is not None:
        raise DgnerfError(f"{flag} {spec!r}: ':{person}' selects a person of a dataset, but {root!r} is not one "
                          "(no manifest.json)")
    return load_identity(root, cfg.identity_dim, flag=flag)


def is_media(path: str) -> bool:
    """A video or a still image (by extension; a still with an unusual extension by its header), i.e. something
    to run the encoders on rather than a code file."""
    ext = os.path.splitext(path)[1].lower()
    if ext in VIDEO_EXT or ext in IMAGE_EXT:
        return True
    if ext in (".npy", ".txt", ".safetensors"):
        return False
    return is_image_file(path)


def target_identity(spec: str, cfg, flag: str = "--target") -> tuple[torch.Tensor, str]:
    """--target: a code file (fit's identity_<person>.safetensors / codes.safetensors of one person, or any
    file `dgnerf render --identity` reads), DATASET:person (mean of the person's identity codes), or an image
    folder / a photo / a video of the target (preprocessed here: the identity encoder's mean code; needs the
    preprocess extra) -> ([1, I], description). Errors name `flag`."""
    root, person = parse_source(spec, flag)
    if is_dataset(root):
        return dataset_identity(root, person, cfg, flag, spec)
    if person is not None:
        raise DgnerfError(f"{flag} {spec!r}: ':{person}' selects a person of a dataset, but {root!r} is not one "
                          "(no manifest.json)")
    if not os.path.exists(root):
        raise DgnerfError(f"{flag} {spec!r}: no such file or directory (expected a code file, DATASET:PERSON, "
                          "an image folder, a photo or a video)")
    if os.path.isdir(root) or is_media(root):
        # photos or a video of the target: the identity encoder's mean code over its frames (no fitting)
        import tempfile

        with tempfile.TemporaryDirectory(prefix="dgnerf-target-") as td:
            pre = preprocess_inputs([root], os.path.join(td, "target"), None, resolution=max(64, cfg.image_size),
                                    require_basis=False, what=flag)
            ds = HeadDataset(pre, check="none")
            return ds.arrays["identity"].mean(0, keepdim=True), f"{root} (encoder)"
    return load_identity(root, cfg.identity_dim, flag=flag), root


@torch.no_grad()
def drive_frames(model, z: torch.Tensor, driver: Driver, batch: int = 8, path: str = "fast", progress: bool = False,
                 scale: int = 1) -> list:
    """Side-by-side frames [S*scale, 2*S*scale (+gap), 3] uint8: driver | result."""
    # checked before the first frame: a bad value would otherwise fail deep in numpy, after the progress bar
    if isinstance(scale, bool) or not isinstance(scale, int) or scale < 1:
        raise DgnerfError(f"scale: expected an integer >= 1, got {scale!r}")
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise DgnerfError(f"batch: expected an integer >= 1, got {batch!r}")
    import numpy as np
    from tqdm import tqdm

    dev = next(model.parameters()).device
    model.eval()
    z = z.to(dev).reshape(1, -1)
    frames = []
    bar = tqdm(total=len(driver), desc="driving", unit="frame", disable=not progress, leave=False)
    for i in range(0, len(driver), batch):
        sl = slice(i, i + batch)
        n = driver.c2w[sl].shape[0]
        gaze = driver.gaze[sl].to(dev) if driver.gaze is not None and model.cfg.gaze_dim else None
        out = model(z.expand(n, -1), driver.expression[sl].to(dev), driver.c2w[sl].to(dev),
                    driver.intrinsics[sl].to(dev), gaze=gaze, options=RenderOptions(path=path)).image.float().cpu()
        for k in range(n):
            left, right = to_uint8(driver.image[i + k]), to_uint8(out[k])
            gap = np.full((left.shape[0], 2, 3), 255, np.uint8)
            f = np.concatenate([left, gap, right], 1)
            frames.append(np.ascontiguousarray(f.repeat(scale, 0).repeat(scale, 1)))
        bar.update(n)
    bar.close()
    return frames
