"""Faces, below every user of them: landmark geometry (similarity fits, projection), image warps and masks,
and the face-recognition models that give identity codes (FaceNet, AdaFace)."""
