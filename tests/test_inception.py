"""Optional Inception FID from a user-supplied TorchScript network (a scripted stand-in here)."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from medsynth.errors import MedsynthError
from medsynth.metrics.inception import inception_features, inception_fid, load_inception

pytestmark = pytest.mark.usefixtures("one_thread")


class _WithKeyword(nn.Module):
    """Like NVIDIA's Inception TorchScript: forward(img, return_features) on 0..255 input."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 8, 5, stride=4)
        self.seen_max = nn.Parameter(torch.zeros(()), requires_grad=False)

    def forward(self, x: torch.Tensor, return_features: bool = False) -> torch.Tensor:
        self.seen_max.copy_(x.max())
        f = torch.relu(self.conv(x / 255.0)).mean((2, 3))
        return f if return_features else f.sum(1, keepdim=True)


class _Plain(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean((2, 3))


def _images(n, shift=0.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, 1, 16, 16, generator=g) * 1.2 - 0.6 + shift).clamp(-1, 1)


def test_scripted_network_gives_features_and_fid_against_a_floor(tmp_path):
    path = tmp_path / "inception.pt"
    torch.jit.save(torch.jit.script(_WithKeyword()), str(path))
    net = load_inception(path)
    f = inception_features(net, _images(6), size=64)
    assert f.shape == (6, 8)  # the return_features=True branch, not the 1-value "logits"
    assert float(net.seen_max) > 100  # uint8-range input by default
    real, same, shifted = _images(80, seed=1), _images(40, seed=2), _images(40, shift=0.4, seed=3)
    near = inception_fid(net, real, same, repeats=3)
    far = inception_fid(net, real, shifted, repeats=3)
    assert near["n"] == 40 and near["feature_dim"] == 8
    assert far["fid"] > 5 * max(near["fid"], near["floor"])


def test_plain_network_and_input_range(tmp_path):
    path = tmp_path / "plain.pt"
    torch.jit.save(torch.jit.script(_Plain()), str(path))
    net = load_inception(path)
    x = _images(4)
    f_sym = inception_features(net, x, input_range="sym", size=16)
    f_unit = inception_features(net, x, input_range="unit", size=16)
    assert f_sym.shape == (4, 3)
    assert abs(f_unit - (f_sym + 1) / 2).max() < 1e-6
    with pytest.raises(MedsynthError, match="input"):
        inception_features(net, x, input_range="percent")


def test_bad_weights_file_is_one_line(tmp_path):
    bad = tmp_path / "weights.pkl"
    bad.write_bytes(b"not a torchscript archive")
    with pytest.raises(MedsynthError, match="TorchScript"):
        load_inception(bad)
    with pytest.raises(MedsynthError, match="not found"):
        load_inception(tmp_path / "missing.pt")
