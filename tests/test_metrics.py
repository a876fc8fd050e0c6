"""Masked image metrics; SSIM equals scikit-image's structural_similarity on unmasked images."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dgnerf import metrics


def smooth_images(b=2, h=40, w=36):
    x = torch.rand(b, 3, h // 4, w // 4)
    return F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False).clamp(0, 1)


def test_ssim_equals_scikit_image():
    skm = pytest.importorskip("skimage.metrics")
    a = smooth_images()
    b = (a + 0.1 * torch.randn_like(a)).clamp(0, 1)
    ours = metrics.ssim(a, b)
    for i in range(a.shape[0]):
        ref = skm.structural_similarity(a[i].permute(1, 2, 0).numpy().astype(np.float64),
                                        b[i].permute(1, 2, 0).numpy().astype(np.float64), channel_axis=2, data_range=1.0)
        assert abs(float(ours[i]) - ref) <= 1e-3, (float(ours[i]), ref)


def test_masked_metrics_ignore_outside_pixels():
    a = smooth_images()
    b = a.clone()
    mask = torch.zeros(a.shape[0], 1, *a.shape[2:])
    mask[:, :, 10:30, 8:28] = 1
    b[:, :, :5] = 1 - b[:, :, :5]  # differences only outside the mask
    assert torch.all(metrics.masked_l1(a, b, mask) == 0)
    assert torch.all(metrics.masked_psnr(a, b, mask) > 100)
    assert torch.allclose(metrics.ssim(a, b, mask), torch.ones(a.shape[0]), atol=1e-6)
    assert torch.all(metrics.ssim(a, b) < 0.99)


def test_psnr_value():
    a = torch.zeros(1, 3, 8, 8)
    b = torch.full_like(a, 0.1)
    m = torch.ones(1, 1, 8, 8)
    assert abs(float(metrics.masked_psnr(a, b, m)) - 20.0) < 1e-4
    with pytest.raises(ValueError, match="mask"):
        metrics.masked_psnr(a, b, m[:, :, :4])
