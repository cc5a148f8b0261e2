"""UltraAD's multitask loss: Dice + Focal on the anomaly maps, cross-entropy on the classes (paper Sec. 2.4)."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from monai_ultraad.networks.ultraad import UltraADOutput


class _SigmoidMapSums(torch.autograd.Function):
    """Per-row sums over a full-resolution map of logits ``d`` against a binary target ``g``, with ``p = sigmoid(d)``:
    ``sum p*g``, ``sum p`` and the focal sum ``sum sigmoid(z)**gamma * softplus(z)``, ``z = d * (1 - 2g)``
    (``1 - pt = sigmoid(z)`` and ``-log pt = softplus(z)``).

    The backward pass is written out: it touches each full-resolution pixel a few times, where autograd through
    the same expressions keeps and revisits a dozen intermediate maps (this is the largest elementwise cost of a
    training step on CPU). ``torch.autograd.gradcheck`` checks it in the tests.
    """

    @staticmethod
    def forward(ctx, logits: torch.Tensor, target: torch.Tensor, gamma: float):  # type: ignore[override]
        p = torch.sigmoid(logits)
        z = logits * (1.0 - 2.0 * target)
        s = torch.sigmoid(z)
        # softplus(z) = max(z, 0) - log(sigmoid(|z|)), and sigmoid(|z|) = max(s, 1 - s) lies in [0.5, 1], so the log
        # is well conditioned; several times faster on CPU than F.softplus / log1p, which are not vectorised there
        sp = z.clamp_min(0.0) - torch.maximum(s, 1.0 - s).log()
        s_gamma = s.square() if gamma == 2.0 else s.pow(gamma)
        ctx.save_for_backward(p, s, sp, s_gamma, target)
        ctx.gamma = gamma
        return (p * target).sum(1), p.sum(1), (s_gamma * sp).sum(1)

    @staticmethod
    def backward(ctx, g_inter: torch.Tensor, g_psum: torch.Tensor, g_focal: torch.Tensor):  # type: ignore[override]
        p, s, sp, s_gamma, target = ctx.saved_tensors
        # d/dd of sum p*g and sum p: p(1-p) * (g_inter * g + g_psum)
        grad = (p * (1.0 - p)) * (g_inter[:, None] * target + g_psum[:, None])
        # d/dz of s^gamma * softplus(z) = s^gamma * (gamma * (1 - s) * softplus(z) + s); dz/dd = 1 - 2g
        focal = s_gamma * (ctx.gamma * (1.0 - s) * sp + s) * (1.0 - 2.0 * target)
        grad = grad + g_focal[:, None] * focal
        return grad, None, None


def binary_dice_focal(
    logits: torch.Tensor, target: torch.Tensor, gamma: float = 2.0, smooth: float = 1e-5
) -> torch.Tensor:
    """MONAI's 2-class softmax ``DiceLoss`` + ``FocalLoss`` of the logits ``[0, logits]`` against one-hot ``target``.

    Args:
        logits: (N, H, W) or (N, H*W) abnormal-minus-normal logits (a 2-class softmax is the sigmoid of their
            difference).
        target: binary lesion mask of the same shape.
        gamma: focal focusing parameter.
        smooth: Dice smoothing (MONAI's ``smooth_nr = smooth_dr`` default).

    Equal to ``DiceLoss(to_onehot_y=True, softmax=True)(x, y) + FocalLoss(to_onehot_y=True, use_softmax=True,
    gamma=gamma)(x, y)`` on the 2-channel logits ``x`` (a test checks it): the background channel's Dice terms
    follow from the lesion channel's sums, and the Focal loss's other channel has a zero one-hot target.
    """
    logits = logits.flatten(1).float()
    target = target.flatten(1).to(logits)
    n_pixels = logits.shape[1]
    inter, p_sum, focal = _SigmoidMapSums.apply(logits, target, float(gamma))
    g_sum = target.sum(1)
    dice_lesion = 1.0 - (2.0 * inter + smooth) / (p_sum + g_sum + smooth)
    inter_bg = n_pixels - p_sum - g_sum + inter  # sum (1 - p)(1 - g)
    dice_bg = 1.0 - (2.0 * inter_bg + smooth) / (2.0 * n_pixels - p_sum - g_sum + smooth)
    dice = 0.5 * (dice_lesion.mean() + dice_bg.mean())  # mean over samples and both channels
    return dice + 0.5 * focal.sum() / focal.new_tensor(logits.numel())  # mean over both channels, one is zero


def bilinear_upsample(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``F.interpolate(x, size, mode="bilinear", align_corners=False)`` as two matrix products.

    Bilinear interpolation is separable, so it is ``A_h @ x @ A_w^T`` with PyTorch's own 1D interpolation weights
    (taken by interpolating the identity). The same values (a test checks it), but the backward pass is two small
    matrix products instead of CPU upsampling's single-threaded scatter.
    """
    a_h = _linear_interpolation_matrix(x.shape[-2], size[0], x)
    a_w = _linear_interpolation_matrix(x.shape[-1], size[1], x)
    return a_h @ x @ a_w.T


def _linear_interpolation_matrix(n_in: int, n_out: int, like: torch.Tensor) -> torch.Tensor:
    basis = torch.eye(n_in, dtype=like.dtype, device=like.device).unsqueeze(1)  # each row a 1D signal
    return F.interpolate(basis, size=n_out, mode="linear", align_corners=False).squeeze(1).T  # (n_out, n_in)


class UltraADLoss(nn.Module):
    """``seg_weight * mean_layers(Dice + Focal) + cls_weight * CE``, equally weighted by default as in the paper.

    The segmentation terms are MONAI's 2-class softmax Dice (background included) and Focal loss on every tapped
    layer's normal / abnormal patch logits, upsampled (bilinear) to the mask's resolution as April-GAN and UltraAD
    do; the layer losses are averaged. They are computed by :func:`binary_dice_focal`: bilinear upsampling is linear,
    so only the logit difference is upsampled (:func:`bilinear_upsample`), once for all layers.

    Args:
        seg_weight: weight of the Dice + Focal term.
        cls_weight: weight of the cross-entropy term (0 gives the "without multitask" ablation).
        focal_gamma: focusing parameter of the focal loss.
    """

    def __init__(self, seg_weight: float = 1.0, cls_weight: float = 1.0, focal_gamma: float = 2.0) -> None:
        super().__init__()
        self.seg_weight, self.cls_weight, self.focal_gamma = seg_weight, cls_weight, focal_gamma

    def forward(self, output: UltraADOutput, masks: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        """Return the total loss and its parts.

        Args:
            output: the model output for the batch.
            masks: (B, 1, H, W) binary lesion masks (normal images: all zero).
            labels: (B,) class indices.
        """
        if masks.ndim != 4 or masks.shape[1] != 1:
            raise ValueError(f"masks must have shape (B, 1, H, W), got {tuple(masks.shape)}")
        layer_logits = output.layer_logits.float()  # float32 also after a bfloat16-autocast forward: (B, L, 2, g, g)
        masks = masks.to(layer_logits.device, torch.float32)
        n_layers = layer_logits.shape[1]
        # each (image, layer) is one sample of the Dice / Focal means, ordered image-major
        diff = (layer_logits[:, :, 1] - layer_logits[:, :, 0]).flatten(0, 1).unsqueeze(1)
        diff = bilinear_upsample(diff, tuple(masks.shape[-2:]))
        seg = binary_dice_focal(diff, masks.repeat_interleave(n_layers, dim=0), gamma=self.focal_gamma)
        ce = F.cross_entropy(output.class_logits.float(), labels.to(output.class_logits.device).long())
        total = self.seg_weight * seg + self.cls_weight * ce
        return {"loss": total, "seg_loss": seg.detach(), "cls_loss": ce.detach()}
