from __future__ import annotations

import sys

import pytest
import torch

from monai_ultraad.runtime import tune_cpu_allocator


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")
def test_allocator_tuning_applies_on_glibc_and_is_idempotent():
    assert tune_cpu_allocator() is True
    assert tune_cpu_allocator() is True
    x = torch.randn(4_000_000)  # 16 MB: from the heap now, still an ordinary tensor
    assert torch.isfinite((x * 2).sum())
