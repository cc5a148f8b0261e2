"""The segmentation loss: equal to MONAI's 2-channel Dice + Focal, with a correct hand-written gradient."""

from __future__ import annotations

import pytest
import torch
from monai.losses import DiceLoss, FocalLoss
from torch.nn import functional as F

from monai_ultraad.losses import UltraADLoss, _SigmoidMapSums, bilinear_upsample, binary_dice_focal
from monai_ultraad.networks.ultraad import UltraADOutput


def _monai_reference(layer_logits, masks, labels, class_logits, gamma=2.0):
    """UltraAD's loss written directly with MONAI: per layer, 2-channel softmax Dice + Focal at mask resolution."""
    dice = DiceLoss(to_onehot_y=True, softmax=True)
    focal = FocalLoss(to_onehot_y=True, use_softmax=True, gamma=gamma)
    seg = 0.0
    for layer in range(layer_logits.shape[1]):
        up = F.interpolate(layer_logits[:, layer], size=masks.shape[-2:], mode="bilinear", align_corners=False)
        seg = seg + dice(up, masks) + focal(up, masks)
    seg = seg / layer_logits.shape[1]
    return seg + F.cross_entropy(class_logits, labels), seg


@pytest.mark.parametrize("gamma", [2.0, 1.5])
def test_loss_equals_monai_dice_focal(gamma):
    gen = torch.Generator().manual_seed(0)
    layer_logits = (torch.randn(3, 4, 2, 6, 6, generator=gen) * 3).requires_grad_()
    class_logits = torch.randn(3, 3, generator=gen, requires_grad=True)
    masks = torch.zeros(3, 1, 40, 30)
    masks[1, :, 5:20, 3:12] = 1
    masks[2, :, 25:, 10:] = 1  # image 0 is normal: an all-zero mask
    labels = torch.tensor([0, 1, 2])
    out = UltraADOutput(None, class_logits, None, layer_logits)
    got = UltraADLoss(focal_gamma=gamma)(out, masks, labels)
    got["loss"].backward()
    grad_got = layer_logits.grad.clone()
    layer_logits.grad = None
    want, want_seg = _monai_reference(layer_logits, masks, labels, class_logits, gamma)
    want.backward()
    torch.testing.assert_close(got["loss"], want.detach(), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(got["seg_loss"], want_seg.detach(), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(grad_got, layer_logits.grad, atol=1e-8, rtol=1e-4)


def test_hand_written_gradient_passes_gradcheck():
    gen = torch.Generator().manual_seed(1)
    logits = (torch.randn(3, 50, generator=gen, dtype=torch.float64) * 4).requires_grad_()
    target = (torch.rand(3, 50, generator=gen, dtype=torch.float64) > 0.6).double()
    for gamma in (2.0, 0.5):
        assert torch.autograd.gradcheck(lambda x, g=gamma: _SigmoidMapSums.apply(x, target, g), (logits,))


def test_dice_focal_extremes_stay_finite():
    """Confident logits (|d| = 100) must not overflow the focal term's log."""
    logits = torch.tensor([[100.0, -100.0, 100.0, -100.0]], requires_grad=True)
    target = torch.tensor([[1.0, 0.0, 0.0, 1.0]])
    loss = binary_dice_focal(logits, target)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()
    perfect = binary_dice_focal(torch.tensor([[100.0, -100.0]]), torch.tensor([[1.0, 0.0]]))
    assert perfect.item() == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("size", [(336, 336), (37, 50), (8, 8)])
def test_bilinear_upsample_equals_interpolate(size):
    x = torch.randn(5, 1, 24, 16)
    torch.testing.assert_close(
        bilinear_upsample(x, size), F.interpolate(x, size=size, mode="bilinear", align_corners=False),
        atol=1e-5, rtol=1e-5,
    )
