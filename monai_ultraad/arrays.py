"""One conversion of arrays to numpy for the whole package: MONAI's :func:`monai.utils.convert_to_numpy`."""

from __future__ import annotations

from typing import Any

import numpy as np


def as_numpy(x: Any, dtype: Any = None) -> np.ndarray:
    """``x`` (a torch tensor or MetaTensor on any device, a numpy array, a nested list or a scalar) as a numpy array.

    The conversion is :func:`monai.utils.convert_to_numpy` (detach, copy to the CPU, drop MetaTensor metadata). The one
    step added: a bfloat16 tensor is widened to float32 first, because numpy has no bfloat16 and ``convert_to_numpy``
    raises on it. MONAI is imported only when a tensor arrives, so numpy-only callers (the overlay renderer) stay light.
    """
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # torch.Tensor / MetaTensor, without importing torch here
        from monai.utils import convert_to_numpy

        if str(x.dtype) == "torch.bfloat16":
            x = x.float()
        return np.asarray(convert_to_numpy(x), dtype=dtype)
    return np.asarray(x, dtype=dtype)
