"""Videos / image directories -> a dgnerf dataset (docs/dataset.md), see docs/preprocess.md.

Per source (one person each), two passes over the frames:
1. track: MediaPipe face mesh (478 landmarks; stills without a face found are searched again tile by tile),
   the one tracked face per frame (sources.TrackSelector, `--face`), head pose by PnP of the 468 face
   landmarks against the canonical metric face mesh, then Gaussian temporal smoothing of a video's poses;
2. crop: a square crop that follows the smoothed head pose (a fixed 33 cm wide at the head's depth,
   so the head has the same size in every crop), intrinsics adjusted to the crop; head mask = selfie
   segmentation of the crop inside the projected head ellipsoid; identity code from the source frame.
Then, over the whole set: the expression basis (expression.py) and every frame's code, gaze features,
the dataset through dgnerf.data.DatasetWriter, an optional preview sheet, and the summary.

Every detector is injectable (`faces_fn`, `segment_fn`, `encoder`, `geometry`), so the accounting is
tested without MediaPipe or OpenCV.
"""
from __future__ import annotations

import contextlib
import json
import re
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dgnerf.assets import load_face_geometry, preprocess_package_problems
from dgnerf.data import DatasetWriter
from dgnerf.errors import DgnerfError
from dgnerf.face import geometry as G
from dgnerf.face.imaging import convex_hull, crop_square, erode, fill_polygon, warp_affine
from dgnerf.face.recognition import make_encoder
from dgnerf.preprocess.expression import N_FACE, ExpressionBasis, to_shape_frame
from dgnerf.preprocess.features import GAZE_DIM, GAZE_NAMES, gaze_features, head_mask, head_region
from dgnerf.preprocess.preview import contact_sheet
from dgnerf.preprocess.sources import (
    MediaPipeFaces,
    MediaPipeSegmenter,
    Source,
    TrackSelector,
    parse_face,
    quiet_native_stderr,
    resolve_sources,
    tiled_faces,
)

UNIT_CM = 12.0  # one unit of the dataset's translations
# a sphere about the face origin that holds the head region the masks are cut to (features.HEAD_*:
# 15.7 cm at most), in those units
HEAD_RADIUS = 1.35
DROP_REASONS = {
    "unreadable": "the frame could not be decoded / read",
    "no_face": "no face found",
    "several_faces": "several faces of similar size and no track yet",
    "face_index": "fewer faces than --face N asks for",
    "lost_track": "no face near the tracked person",
    "face_out_of_frame": "over 20% of the face landmarks outside the image",
    "pose_failed": "PnP did not fit the landmarks (reprojection error too large)",
    "error": "an unexpected error on this frame (see the notes)",
}
# What to do about an input none of whose frames was kept, by the reason most of them were dropped for.
DROP_HINTS = {
    "no_face": "no face found: the face detector misses faces much smaller than the picture (stills are searched "
               "again tile by tile, which finds faces down to about 1/40 of the picture's width); crop the picture "
               "around the head",
    "several_faces": "several faces of similar size: pick one with --face largest or --face N (N-th face from the "
                     "left, 0 = leftmost)",
    "face_index": "fewer faces than --face N asks for (N counts from 0, left to right); try --face largest",
    "lost_track": "the tracked face was lost; try --face largest or --face N",
    "face_out_of_frame": "the face is cut by the picture's border (over 20% of it outside)",
    "pose_failed": "the head pose did not fit the landmarks (an extreme view, or not a real face?)",
    "unreadable": "no frame could be decoded",
    "error": "every frame failed (see the notes)",
}


def drop_hint(dropped) -> str:
    """The hint for the commonest drop reason of an input that kept nothing."""
    if not dropped:
        return "no frame in this input"
    reason = max(dropped, key=lambda k: dropped[k])
    return DROP_HINTS.get(reason, DROP_REASONS.get(reason, reason))


@dataclass
class Options:
    resolution: int = 256
    fov_deg: float = 50.0
    smooth_sigma: float = 1.0
    crop_extent_cm: float = 33.0
    expression_dim: int = 46
    split: str = "train"
    max_frames: int | None = None
    stride: int = 1
    max_reproj_frac: float = 0.06  # of the face box size
    identity: str = "facenet"
    adaface: str | None = None
    face: str | int = "auto"  # which face of a frame is the person: auto, largest, or N (N-th from the left)
    expression_basis: str | None = None
    preview: bool = False
    overwrite: bool = False
    progress: bool = True


@dataclass
class Frame:
    source: int
    number: int
    label: str
    hw: tuple
    K: np.ndarray
    lm: np.ndarray  # [478, 3] normalised MediaPipe landmarks
    R_raw: np.ndarray
    t_raw: np.ndarray
    err_raw: float
    R: np.ndarray = None
    t: np.ndarray = None
    err: float = float("nan")
    crop: tuple = None
    K_crop: np.ndarray = None
    identity: np.ndarray = None
    mask_cover: float = float("nan")
    staged: str = ""


@dataclass
class SourceReport:
    name: str
    person: str
    input: str = ""  # the input as typed
    index: int = 0
    total: int = 0
    kept: int = 0
    dropped: Counter = field(default_factory=Counter)
    notes: list = field(default_factory=list)
    examples: dict = field(default_factory=dict)  # reason -> first few frame numbers

    def drop(self, reason: str, n: int, note: str | None = None):
        self.dropped[reason] += 1
        self.examples.setdefault(reason, [])
        if len(self.examples[reason]) < 5:
            self.examples[reason].append(n)
        if note and len(self.notes) < 20:
            self.notes.append(f"frame {n}: {note}")


@dataclass
class Summary:
    sources: list = field(default_factory=list)
    problems: list = field(default_factory=list)  # inputs that could not be used at all
    reproj_px: float = float("nan")  # mean over kept frames, source-image pixels, smoothed poses
    reproj_raw_px: float = float("nan")
    reproj_crop_px: float = float("nan")
    mask_cover: float = float("nan")
    identity_cos: dict = field(default_factory=dict)
    out: str = ""
    preview: str = ""

    @property
    def total(self):
        return sum(s.total for s in self.sources)

    @property
    def kept(self):
        return sum(s.kept for s in self.sources)

    def dropped(self) -> Counter:
        c = Counter()
        for s in self.sources:
            c.update(s.dropped)
        return c

    def as_dict(self) -> dict:
        return {
            "frames_total": self.total,
            "frames_kept": self.kept,
            "dropped": dict(self.dropped()),
            "mean_reprojection_error_px": self.reproj_px,
            "mean_reprojection_error_raw_px": self.reproj_raw_px,
            "mean_reprojection_error_crop_px": self.reproj_crop_px,
            "mask_face_coverage": self.mask_cover,
            "identity_mean_pairwise_cosine": self.identity_cos,
            "sources": [
                {"name": s.name, "person": s.person, "total": s.total, "kept": s.kept, "dropped": dict(s.dropped), "notes": s.notes}
                for s in self.sources
            ],
            "problems": self.problems,
        }

    def format(self) -> str:
        lines = ["preprocess summary:"]
        for s in self.sources:
            d = ", ".join(f"{k} {v} (e.g. frames {s.examples.get(k, [])})" for k, v in sorted(s.dropped.items()))
            lines.append(f"  {s.name} -> {s.person}: kept {s.kept}/{s.total}" + (f"; dropped: {d}" if d else ""))
            lines += [f"    note: {n}" for n in s.notes[:8]]
        for p in self.problems:
            lines.append(f"  skipped input: {p}")
        dr = self.dropped()
        lines.append(
            f"  total: kept {self.kept}/{self.total} frames"
            + (f"; dropped {sum(dr.values())}: " + ", ".join(f"{k} {v}" for k, v in sorted(dr.items())) if dr else "")
        )
        if self.kept:
            lines.append(
                f"  mean landmark reprojection error: {self.reproj_px:.3f} px in the source frames "
                f"({self.reproj_raw_px:.3f} px before smoothing; {self.reproj_crop_px:.3f} px in the crops)"
            )
            lines.append(f"  mask covers {100 * self.mask_cover:.1f}% of the face-landmark hull (mean)")
            if self.identity_cos:
                lines.append(
                    "  identity codes, mean pairwise cosine per person: "
                    + ", ".join(f"{k} {v:.3f}" for k, v in self.identity_cos.items())
                )
        if self.out:
            lines.append(f"  dataset: {self.out}")
        if self.preview:
            lines.append(f"  preview: {self.preview}")
        return "\n".join(lines)


def _person_id(name: str, used: set) -> str:
    base = re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._") or "person"
    pid, k = base, 1
    while pid in used:
        k += 1
        pid = f"{base}_{k}"
    used.add(pid)
    return pid


def _weights(geometry: dict) -> np.ndarray:
    w = np.zeros(N_FACE)
    ids = np.asarray(geometry.get("procrustes_ids", []), int)
    if len(ids):
        w[ids] = np.asarray(geometry["procrustes_weights"], np.float64)
    if w.sum() <= 0:
        w[:] = 1.0
    return w


def _used_components(p: Path) -> int | None:
    """How many leading expression components a model trained on this basis saw: the basis file's metadata
    `components`, else the `meta.realvideo.expression_components` of the dataset it lies in (`dgnerf realvideo`
    zeroes the others in its training set); None = all."""
    try:
        from safetensors import safe_open

        with safe_open(str(p), "np") as f:
            k = (f.metadata() or {}).get("components")
        if k is not None:
            return int(k)
        man = p.parent / "manifest.json"
        if man.is_file():
            k = ((json.loads(man.read_text()).get("meta") or {}).get("realvideo") or {}).get("expression_components")
            return None if k is None else int(k)
    except Exception:  # noqa: BLE001 - unreadable files are reported by ExpressionBasis.load / the dataset check
        return None
    return None


def _load_basis(path: str) -> ExpressionBasis:
    """The basis to project new videos into. When the training set used only its first K components (a
    `dgnerf realvideo` set), the projected codes keep those K and are 0 beyond, as in the training frames."""
    p = Path(path)
    if p.is_dir():
        p = p / "expression_basis.safetensors"
    if not p.is_file():
        raise DgnerfError(f"--expression-basis {path}: no such file (expected a dataset directory or an expression_basis.safetensors)")
    try:
        b = ExpressionBasis.load(p)
        bad = [k for k in ("basis", "stddev", "reference", "weights") if not np.isfinite(getattr(b, k)).all()]
        if bad:
            raise DgnerfError(f"{bad} hold NaN/Inf values")
    except Exception as e:  # noqa: BLE001 - any damage of the file given: named with the flag
        text = str(e).replace(f"{p}: ", "")
        raise DgnerfError(f"--expression-basis {path}: not a usable expression basis ({text[:200]})") from None
    k = _used_components(p)
    if k is not None and 0 < k < len(b.stddev):
        b.stddev = b.stddev.copy()
        b.stddev[k:] = 0.0  # _codes gives 0 where stddev is 0
        b.rank = min(b.rank, k)
    return b


def load_expression_basis(path: str) -> ExpressionBasis:
    """The basis to project new frames into (a dataset directory or its expression_basis.safetensors), keeping only
    the components a model trained on it saw (as `--expression-basis` does; used by live driving)."""
    return _load_basis(path)


def track_source(src: Source, report: SourceReport, opts: Options, faces_fn, geometry, tqdm=None) -> list[Frame]:
    """Pass 1: landmarks, selection, raw PnP. Never raises for a bad frame."""
    verts = np.asarray(geometry["vertices"], np.float64)
    sel = TrackSelector(face=opts.face)
    frames, prev_pose, prev_hw = [], None, None
    it = src.frames(opts.max_frames, opts.stride)
    bar = tqdm(it, desc=f"track {src.name}", unit="frame", leave=False, disable=not opts.progress) if tqdm else it
    for n, rgb, problem in bar:
        report.total += 1
        if problem is not None:
            report.drop("unreadable", n, problem)
            continue
        try:
            H, W = rgb.shape[:2]
            faces = faces_fn(rgb)
            if not faces and not src.is_sequence:
                faces = tiled_faces(faces_fn, rgb)  # small faces of a group / full-body photo
            lm, why = sel.select(faces)
            if why:
                report.drop(why, n)
                continue
            lm = np.asarray(lm, np.float64)
            inside = (lm[:N_FACE, 0] >= 0) & (lm[:N_FACE, 0] <= 1) & (lm[:N_FACE, 1] >= 0) & (lm[:N_FACE, 1] <= 1)
            if inside.mean() < 0.8:
                report.drop("face_out_of_frame", n)
                continue
            K = G.default_intrinsics(W, H, opts.fov_deg)
            uv = lm[:N_FACE, :2] * np.array([W, H])
            init = prev_pose if prev_hw == (H, W) else None
            R, t, err = G.solve_pnp(verts, uv, K, init=init)
            if init is not None:  # a bad warm start (e.g. after a jump) must not decide
                R2, t2, err2 = G.solve_pnp(verts, uv, K)
                if err2 < err - 1e-6:
                    R, t, err = R2, t2, err2
            face = float(np.linalg.norm(uv.max(0) - uv.min(0)))
            if not (np.isfinite(err) and np.isfinite(t).all() and t[2] > 0) or err > opts.max_reproj_frac * face:
                report.drop("pose_failed", n, f"reprojection error {err:.2f} px for a {face:.0f} px face")
                continue
            prev_pose, prev_hw = (R, t), (H, W)
            frames.append(Frame(report.index, n, src.frame_label(n), (H, W), K, lm, R, t, err))
        except Exception as e:  # noqa: BLE001 - one bad frame never stops the run
            report.drop("error", n, f"{type(e).__name__}: {str(e)[:120]}")
    if sel.forced_starts:
        report.notes.append(
            f"several faces of similar size for {sel.reacquire_after} frames: the track started on the largest "
            f"({sel.forced_starts} time(s)); check the preview"
        )
    if sel.reacquired:
        report.notes.append(f"track re-acquired {sel.reacquired} time(s) after being lost; check the preview")
    # temporal smoothing: a video's frames only (the photos of a folder are unrelated views, whatever their sizes)
    sizes = {f.hw for f in frames}
    if len(sizes) > 1:
        report.notes.append(f"images of {len(sizes)} different sizes: each keeps its own intrinsics")
    if frames and src.is_sequence and len(sizes) == 1 and opts.smooth_sigma > 0:
        # sigma is in sampled frames (frame numbers / stride)
        times = np.array([f.number for f in frames], np.float64) / max(opts.stride, 1)
        Rs, ts = G.smooth_poses(np.stack([f.R_raw for f in frames]), np.stack([f.t_raw for f in frames]), times, opts.smooth_sigma)
    else:
        Rs = [f.R_raw for f in frames]
        ts = [f.t_raw for f in frames]
    for f, R, t in zip(frames, Rs, ts):
        f.R, f.t = np.asarray(R), np.asarray(t)
        uv = f.lm[:N_FACE, :2] * np.array([f.hw[1], f.hw[0]])
        f.err = float(np.linalg.norm(G.project(verts, f.R, f.t, f.K) - uv, axis=1).mean())
    return frames


def crop_source(src, frames, report, opts, segment_fn, encoder, stage: Path, tqdm=None):
    """Pass 2: crop, mask, identity; frames that fail here are dropped from `frames` (returned)."""
    by_n = {f.number: f for f in frames}
    done = []
    res = opts.resolution
    seen = set()
    it = src.frames(opts.max_frames, opts.stride)
    bar = tqdm(it, desc=f"crop {src.name}", unit="frame", leave=False, disable=not opts.progress) if tqdm else it
    for n, rgb, problem in bar:
        f = by_n.get(n)
        if f is None:
            continue
        seen.add(n)
        if problem is not None or rgb.shape[:2] != f.hw:
            report.drop("unreadable", n, problem or "the frame changed between passes")
            continue
        try:
            x0, y0, size = G.crop_from_pose(f.R, f.t, f.K, extent_cm=opts.crop_extent_cm)
            f.crop = (x0, y0, size)
            f.K_crop = G.crop_intrinsics(f.K, x0, y0, size, res)
            img = crop_square(rgb, x0, y0, size, res)
            uv_src = f.lm[:, :2] * np.array([f.hw[1], f.hw[0]])
            uv_crop = G.to_crop(uv_src, x0, y0, size, res)
            prob = segment_fn(img)
            prob = np.asarray(prob, np.float32)
            if prob.shape != (res, res):
                A = np.array([[res / prob.shape[1], 0, 0], [0, res / prob.shape[0], 0]])
                prob = warp_affine(prob, A, (res, res))
            region = head_region(f.R, f.t, f.K_crop, (res, res), uv_crop[:N_FACE])
            face = fill_polygon((res, res), convex_hull(uv_crop[:N_FACE]))
            # the face's own hull is head whatever the segmenter says (it misses open mouths)
            seg_mask = head_mask(prob, region)
            mask = np.maximum(seg_mask, np.where(face, 255, 0).astype(np.uint8))
            hull = erode(face, 1)
            # coverage is measured on the segmenter's own mask, before the hull is added
            f.mask_cover = float((seg_mask[hull] >= 128).mean()) if hull.any() else float("nan")
            f.identity = np.asarray(encoder(rgb, uv_src), np.float32)
            if not np.isfinite(f.identity).all():
                raise ValueError("identity code is not finite")
            p = stage / f"{report.index:05d}-{n:07d}.npz"
            np.savez(p, image=img, mask=mask)
            f.staged = str(p)
            done.append(f)
        except Exception as e:  # noqa: BLE001
            report.drop("error", n, f"{type(e).__name__}: {str(e)[:120]}")
    for n in sorted(set(by_n) - seen):  # decoded in pass 1 but not in pass 2: still accounted for
        report.drop("unreadable", n, "not decoded again in the second pass")
    return done


def run(
    inputs: list[str],
    out: str,
    opts: Options | None = None,
    faces_fn_factory=None,
    segment_fn=None,
    encoder=None,
    geometry: dict | None = None,
    log=print,
) -> Summary:
    opts = opts or Options()
    if opts.resolution < 16 or opts.resolution > 4096:
        raise DgnerfError(f"--resolution: expected 16..4096, got {opts.resolution}")
    if not (5 <= opts.fov_deg <= 150):
        raise DgnerfError(f"--fov: expected 5..150 degrees, got {opts.fov_deg}")
    if not (np.isfinite(opts.smooth_sigma) and 0 <= opts.smooth_sigma <= 1000):
        raise DgnerfError(f"--smooth: expected a sigma in 0..1000 frames (0 = off), got {opts.smooth_sigma}")
    opts.face = parse_face(opts.face)
    out_p = Path(out)
    if out_p.exists() and (not out_p.is_dir() or any(out_p.iterdir())) and not opts.overwrite:
        raise DgnerfError(f"--out {out}: exists and is not empty (pass --overwrite to replace a dataset)")
    sources, problems = resolve_sources(inputs)
    summary = Summary(problems=list(problems))
    if not sources:
        raise DgnerfError("no usable input: " + "; ".join(problems) if problems else "no inputs given")
    # the packages the real detectors need, checked before anything is read or written (a wrong protobuf
    # would otherwise fail inside mediapipe, after the inputs were decoded once)
    need = []
    if faces_fn_factory is None or segment_fn is None:
        need.append("mediapipe")
    if encoder is None and opts.identity == "facenet":
        need.append("cv2")
    if need:
        missing = preprocess_package_problems(need_cv2="cv2" in need)
        if "mediapipe" not in need:
            missing = [p for p in missing if "OpenCV" in p]
        if missing:
            raise DgnerfError("preprocessing needs the preprocess extra (docs/preprocess.md): " + "; ".join(missing))

    # MediaPipe's graphs log INFO/WARNING lines from their own threads for as long as they run
    quiet = quiet_native_stderr() if "mediapipe" in need else contextlib.nullcontext()
    with quiet:
        return _run_sources(sources, summary, out_p, opts, faces_fn_factory, segment_fn, encoder, geometry, log)


def _run_sources(sources, summary, out_p, opts, faces_fn_factory, segment_fn, encoder, geometry, log) -> Summary:
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover
        tqdm = None
    if geometry is None:
        geometry = load_face_geometry()
    wts = _weights(geometry)
    basis_in = _load_basis(opts.expression_basis) if opts.expression_basis else None
    if faces_fn_factory is None:
        faces_fn_factory = lambda static: MediaPipeFaces(static)  # noqa: E731
    own_segmenter = None
    if segment_fn is None:
        own_segmenter = segment_fn = MediaPipeSegmenter(0)
    if encoder is None:
        encoder = make_encoder(opts.identity, opts.adaface)

    used: set = set()
    all_frames: list[Frame] = []
    persons: list[str] = []
    stage_parent = out_p.resolve().parent
    stage_parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{out_p.name}.staging-", dir=stage_parent) as td:
        stage = Path(td)
        for si, src in enumerate(sources):
            rep = SourceReport(src.name, _person_id(src.name, used), input=src.typed or str(src.path), index=si)
            summary.sources.append(rep)
            persons.append(rep.person)
            try:
                faces_fn = faces_fn_factory(src.kind == "images")
                try:
                    frames = track_source(src, rep, opts, faces_fn, geometry, tqdm)
                finally:
                    if hasattr(faces_fn, "close"):
                        faces_fn.close()
                if not frames:
                    if rep.total == 0:  # opened, but not one frame came out (a damaged or empty video)
                        summary.problems.append(f"{rep.input}: no frame could be decoded (an empty or damaged file?)")
                    rep.notes.append("no frame kept: " + drop_hint(rep.dropped))
                    continue
                frames = crop_source(src, frames, rep, opts, segment_fn, encoder, stage, tqdm)
            except DgnerfError as e:
                # an unreadable file is reported and the rest goes on
                summary.problems.append(str(e))
                continue
            rep.kept = len(frames)
            all_frames += frames
        if own_segmenter is not None:
            own_segmenter.close()
        if not all_frames:
            log(summary.format())
            why = list(summary.problems) + [f"{r.input or r.name}: " + ", ".join(f"{k} x{v}" for k, v in r.dropped.items())
                                            for r in summary.sources if r.dropped]
            hints = list(dict.fromkeys(drop_hint(r.dropped) for r in summary.sources if r.dropped))
            raise DgnerfError("no frame was kept from any input" + (f" ({'; '.join(why[:3])})" if why else "")
                              + "".join(f"; {h}" for h in hints[:2]) + "; nothing written (see the summary above)")

        # ---- expression codes over the whole set
        shapes = {}
        for f in all_frames:
            shapes.setdefault(f.source, []).append(to_shape_frame(f.lm[:N_FACE], f.hw[1], f.hw[0]))
        ref = np.asarray(geometry["vertices"], np.float64)
        if basis_in is not None:
            basis = basis_in
            codes = {k: basis.project(np.stack(v)) for k, v in shapes.items()}
        else:
            basis, codes = ExpressionBasis.build({k: np.stack(v) for k, v in shapes.items()}, opts.expression_dim, wts, ref)
        code_iter = {k: iter(v) for k, v in codes.items()}

        # ---- write

        summary.reproj_px = float(np.mean([f.err for f in all_frames]))
        summary.reproj_raw_px = float(np.mean([f.err_raw for f in all_frames]))
        summary.reproj_crop_px = float(np.mean([f.err * opts.resolution / f.crop[2] for f in all_frames]))
        covers = [f.mask_cover for f in all_frames if np.isfinite(f.mask_cover)]
        summary.mask_cover = float(np.mean(covers)) if covers else float("nan")
        for si, rep in enumerate(summary.sources):
            ids = np.stack([f.identity for f in all_frames if f.source == si]) if rep.kept else None
            if ids is not None and len(ids) > 1:
                C = ids @ ids.T / np.outer(np.linalg.norm(ids, axis=1), np.linalg.norm(ids, axis=1))
                summary.identity_cos[rep.person] = float((C.sum() - np.trace(C)) / (len(ids) * (len(ids) - 1)))

        if opts.overwrite and (out_p / "tracking.safetensors").is_file() and (out_p / "manifest.json").is_file():
            (out_p / "tracking.safetensors").unlink()
        meta = {
            "generator": "dgnerf preprocess",
            "units_cm": UNIT_CM,
            "tracker": "mediapipe face_mesh (legacy, 478 landmarks) + PnP on the canonical metric face mesh",
            "identity": opts.identity if opts.identity != "adaface" else f"adaface:{Path(opts.adaface).name}",
            "expression": "landmark_offsets_pca" + (f" (projected into {opts.expression_basis})" if basis_in is not None else ""),
            "gaze_names": GAZE_NAMES,
            "smooth_sigma_frames": opts.smooth_sigma,  # videos only
            "face": opts.face,
            "fov_deg": opts.fov_deg,
            "summary": summary.as_dict(),
        }
        meta = json.loads(json.dumps(meta, default=float))
        with DatasetWriter(
            out_p,
            resolution=opts.resolution,
            expression_dim=basis.dim,
            identity_dim=len(all_frames[0].identity),
            gaze_dim=GAZE_DIM,
            head_radius=HEAD_RADIUS,
            background=None,
            meta=meta,
            overwrite=opts.overwrite,
        ) as w:
            track = {"landmarks": [], "crop_box": [], "source_intrinsics": [], "reprojection_error": [], "w2c_raw": [], "frame_number": []}
            for f in all_frames:
                z = np.load(f.staged, allow_pickle=False)
                code = next(code_iter[f.source])
                shape = to_shape_frame(f.lm, f.hw[1], f.hw[0])
                gz = gaze_features(shape, ref, wts)
                K = f.K_crop
                w.add_frame(
                    z["image"],
                    z["mask"],
                    G.w2c_to_c2w(f.R, f.t, 1.0 / UNIT_CM),
                    (K[0, 0], K[1, 1], K[0, 2], K[1, 2]),
                    code.astype(np.float32),
                    f.identity,
                    person=summary.sources[f.source].person,
                    split=opts.split,
                    gaze=gz,
                    source=f.label,
                )
                track["landmarks"].append(np.asarray(f.lm, np.float32))
                track["crop_box"].append(np.asarray(f.crop, np.float32))
                Ks = f.K
                track["source_intrinsics"].append(np.array([Ks[0, 0], Ks[1, 1], Ks[0, 2], Ks[1, 2]], np.float32))
                track["reprojection_error"].append(np.float32(f.err))
                w2c = np.eye(4)
                w2c[:3, :3], w2c[:3, 3] = f.R_raw, f.t_raw
                track["w2c_raw"].append(w2c.astype(np.float32))
                track["frame_number"].append(np.int64(f.number))
            w.set_expression_basis(basis.tensors(), basis.metadata())
        from safetensors.numpy import save_file

        save_file(
            {k: np.stack(v) for k, v in track.items()},
            str(out_p / "tracking.safetensors"),
            metadata={"landmarks": "mediapipe normalised (x, y, z), 478", "crop_box": "x0, y0, size in source pixels", "w2c_raw": "unsmoothed head pose, cm"},
        )
        summary.out = str(out_p)
        if opts.preview:
            summary.preview = str(contact_sheet(out_p, all_frames, opts.resolution))
    return summary
