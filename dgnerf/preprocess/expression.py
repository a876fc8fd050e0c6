"""Expression codes from landmarks, built the way a 3DMM expression basis is built.

1. Every frame's 3D face landmarks (MediaPipe's 468, in image units with y and z flipped so the frame is
   right-handed with +y up and +z towards the camera, like the canonical mesh) are aligned to a reference
   shape by a weighted similarity Procrustes on the rigid landmarks (MediaPipe's Procrustes landmark
   basis: nose bridge, forehead, cheekbones; uniform weights when it is not given). Rotation, translation
   and scale go away; what stays is shape.
2. A person's neutral shape is the per-coordinate median of their aligned frames (robust: a talking
   person is near neutral most of the time). The offsets expressive - neutral remove identity.
3. The basis is the principal axes of all persons' offsets pooled (uncentred: code 0 = neutral face),
   the first E (46) of them, each with the RMS of its coefficient (`stddev`).
4. code = (basis @ offset) / stddev, so every component has about unit spread over the training set.
   A new video is projected into an existing basis with its own neutral (or a given one).

Stored with the dataset as expression_basis.safetensors: `basis` [E, D] (orthonormal rows), `mean` [D]
(zeros: the offsets are already relative to the neutral), `stddev` [E], `reference` [468, 3] and
`weights` [468] (the alignment target and weights), as dgnerf.data.DatasetWriter.set_expression_basis
takes them.
"""
from __future__ import annotations

import numpy as np

from dgnerf.errors import DgnerfError
from dgnerf.face.geometry import apply_similarity, procrustes

N_FACE = 468


def to_shape_frame(landmarks: np.ndarray, width: int, height: int) -> np.ndarray:
    """MediaPipe normalised landmarks [N, 3] (x, y in [0,1], z relative depth in units of the width)
    -> [N, 3] in pixels with +y up and +z towards the camera (a proper rotation of MediaPipe's axes)."""
    lm = np.asarray(landmarks, np.float64)
    return np.stack([lm[:, 0] * width, -lm[:, 1] * height, -lm[:, 2] * width], 1)


def align_shapes(shapes: np.ndarray, reference: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """Similarity-align each shape [F, N, 3] to `reference` [N, 3] (on the weighted points)."""
    out = np.empty((len(shapes), reference.shape[0], 3))
    for i, s in enumerate(shapes):
        sc, R, t = procrustes(s[: len(reference)], reference, weights)
        out[i] = apply_similarity(sc, R, t, s[: len(reference)])
    return out


def generalized_procrustes(shapes: np.ndarray, weights: np.ndarray | None = None, iters: int = 3, reference=None):
    """Align shapes to their own mean, iteratively (the mean is re-normalised to the reference's scale)."""
    ref = np.asarray(reference if reference is not None else shapes[0], np.float64)
    aligned = align_shapes(shapes, ref, weights)
    for _ in range(iters):
        mean = aligned.mean(0)
        sc, R, t = procrustes(mean, ref, weights)
        ref = apply_similarity(sc, R, t, mean)
        aligned = align_shapes(shapes, ref, weights)
    return aligned, ref


class ExpressionBasis:
    def __init__(self, basis: np.ndarray, stddev: np.ndarray, reference: np.ndarray, weights: np.ndarray, rank: int | None = None):
        self.basis = np.asarray(basis, np.float64)  # [E, D]
        self.stddev = np.asarray(stddev, np.float64)  # [E]
        self.reference = np.asarray(reference, np.float64)  # [N, 3]
        self.weights = np.asarray(weights, np.float64)  # [N]
        self.rank = int(rank if rank is not None else (self.stddev > 0).sum())
        E, D = self.basis.shape
        if D != self.reference.size or self.stddev.shape != (E,) or self.weights.shape != (self.reference.shape[0],):
            raise DgnerfError(
                f"expression basis: inconsistent shapes basis {self.basis.shape}, stddev {self.stddev.shape}, "
                f"reference {self.reference.shape}, weights {self.weights.shape}"
            )

    @property
    def dim(self) -> int:
        return self.basis.shape[0]

    # -- building
    @classmethod
    def build(cls, shapes_by_person: dict, dim: int = 46, weights: np.ndarray | None = None, reference: np.ndarray | None = None):
        """shapes_by_person: {person: [F, N, 3] shapes (to_shape_frame)}. Returns (basis, {person: codes [F, E]})."""
        if not shapes_by_person:
            raise DgnerfError("expression basis: no frames to build it from")
        first = np.asarray(next(iter(shapes_by_person.values())), np.float64)
        n = first.shape[1]
        w = np.ones(n) if weights is None else np.asarray(weights, np.float64)
        # one common reference: the first person's mean shape, unless given (e.g. the canonical mesh)
        ref = reference
        if ref is None:
            _, ref = generalized_procrustes(first, w)
        ref = np.asarray(ref, np.float64)[:n]
        offsets = []
        for p, S in shapes_by_person.items():
            S = np.asarray(S, np.float64)
            if S.ndim != 3 or S.shape[1:] != (n, 3):
                raise DgnerfError(f"expression basis: person {p!r}: expected shapes [F, {n}, 3], got {list(S.shape)}")
            A = align_shapes(S, ref, w)
            neutral = np.median(A, 0)
            off = (A - neutral).reshape(len(S), -1)
            offsets.append(off)
        Xall = np.concatenate(offsets, 0)
        # principal axes of the (uncentred) offsets
        _, S, Vt = np.linalg.svd(Xall, full_matrices=False)
        k = min(dim, Vt.shape[0])
        tol = S[0] * 1e-9 if S.size and S[0] > 0 else 0.0
        rank = int((S[:k] > tol).sum())
        basis = np.zeros((dim, Xall.shape[1]))
        basis[:rank] = Vt[:rank]
        # a fixed sign per axis (largest |entry| positive) so rebuilding on the same data agrees
        for i in range(rank):
            j = np.argmax(np.abs(basis[i]))
            if basis[i, j] < 0:
                basis[i] = -basis[i]
        coeff = Xall @ basis.T
        std = np.sqrt((coeff**2).mean(0))
        std[rank:] = 0.0
        b = cls(basis, std, ref, w, rank)
        codes = {p: b._codes(off) for p, off in zip(shapes_by_person, offsets)}
        return b, codes

    # -- projecting
    def _codes(self, offsets_flat: np.ndarray) -> np.ndarray:
        c = offsets_flat @ self.basis.T
        safe = np.where(self.stddev > 0, self.stddev, 1.0)
        return np.where(self.stddev > 0, c / safe, 0.0)

    def align(self, shapes: np.ndarray) -> np.ndarray:
        return align_shapes(np.asarray(shapes, np.float64), self.reference, self.weights)

    def project(self, shapes: np.ndarray, neutral: np.ndarray | None = None) -> np.ndarray:
        """Codes [F, E] of new frames [F, N, 3] (to_shape_frame). neutral: that person's neutral shape
        [N, 3] (aligned or not); default: the median of these frames after alignment."""
        A = self.align(shapes)
        if neutral is None:
            nt = np.median(A, 0)
        else:
            nt = self.align(np.asarray(neutral, np.float64)[None])[0]
        return self._codes((A - nt).reshape(len(A), -1))

    def reconstruct_offsets(self, codes: np.ndarray) -> np.ndarray:
        return ((np.asarray(codes) * self.stddev) @ self.basis).reshape(len(codes), -1, 3)

    # -- storing
    def tensors(self) -> dict:
        return {
            "basis": self.basis.astype(np.float32),
            "mean": np.zeros(self.basis.shape[1], np.float32),
            "stddev": self.stddev.astype(np.float32),
            "reference": self.reference.astype(np.float32),
            "weights": self.weights.astype(np.float32),
        }

    def metadata(self) -> dict:
        return {
            "kind": "landmark_offsets_pca",
            "landmarks": f"mediapipe_face_mesh_{self.reference.shape[0]}",
            "code": "(basis @ (aligned - neutral)) / stddev; neutral = per-person median of aligned frames",
            "rank": str(self.rank),
        }

    def save(self, path) -> None:
        from safetensors.numpy import save_file

        save_file(self.tensors(), str(path), metadata=self.metadata())

    @classmethod
    def from_tensors(cls, t: dict, metadata: dict | None = None):
        for k in ("basis", "stddev", "reference", "weights"):
            if k not in t:
                raise DgnerfError(f"expression basis: missing tensor {k!r} (is it a landmark basis made by dgnerf preprocess?)")
        rank = int(metadata["rank"]) if metadata and "rank" in metadata else None
        return cls(t["basis"], t["stddev"], t["reference"], t["weights"], rank)

    @classmethod
    def load(cls, path):
        from safetensors import safe_open

        try:
            with safe_open(str(path), "np") as f:
                t = {k: f.get_tensor(k) for k in f.keys()}
                meta = f.metadata() or {}
        except Exception as e:  # noqa: BLE001 - any failure to read is the user's file
            raise DgnerfError(f"{path}: not a readable safetensors expression basis ({e})") from None
        return cls.from_tensors(t, meta)
