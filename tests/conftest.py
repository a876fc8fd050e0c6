import zlib

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()
_skip_without_cuda = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU (torch.cuda.is_available() is False)")


def requires_cuda(fn):
    """Mark a test as a CUDA test (`pytest -m cuda` selects them on a GPU machine) that skips cleanly without one."""
    return pytest.mark.cuda(_skip_without_cuda(fn))


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b|| in float64 (METHOD.md); NaN never passes."""
    a = a.detach().double().cpu()
    b = b.detach().double().cpu()
    if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
        return float("inf")
    return float(torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(b).clamp_min(1e-300))


@pytest.fixture(autouse=True)
def _fresh_seed(request):
    # Fresh random inputs per test (never zeros), but reproducible from the test's name.
    torch.manual_seed(zlib.crc32(request.node.nodeid.encode()))
    yield
