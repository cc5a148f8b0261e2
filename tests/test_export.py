from __future__ import annotations

import pytest
import torch

from monai_ultraad.workflows import UltraADTensorNet
from monai_ultraad.export import check_outputs, export_program, export_torchscript
from monai_ultraad.networks import UltraAD


@pytest.fixture(scope="module")
def net(tiny_backbone):
    torch.manual_seed(0)
    model = UltraAD(tiny_backbone)
    model.setup_memory(tiny_backbone.encode_image(torch.randn(3, 3, 64, 64)), torch.tensor([0, 1, 2]))
    return UltraADTensorNet(model)


@pytest.mark.parametrize("exporter", [export_torchscript, export_program])
def test_exported_outputs_match_eager(net, exporter, tmp_path):
    path = exporter(net, tmp_path / "model.bin")
    loaded = torch.jit.load(str(path)) if exporter is export_torchscript else torch.export.load(str(path)).module()
    x = torch.randn(4, 3, 64, 64)  # a batch size the export never saw
    with torch.no_grad():
        assert check_outputs(net(x), loaded(x), atol=1e-5) <= 1e-5


def test_check_outputs_catches_a_difference():
    a = (torch.zeros(2), torch.ones(2))
    with pytest.raises(RuntimeError, match="differs from the eager model"):
        check_outputs(a, (torch.zeros(2), torch.ones(2) * 1.1))


def test_tensor_net_outputs(net):
    maps = UltraADTensorNet(net.model, outputs="anomaly_map")(torch.randn(1, 3, 64, 64))
    assert maps.shape == (1, 1, 64, 64)
    with pytest.raises(ValueError, match="outputs must be"):
        UltraADTensorNet(net.model, outputs="probs")
