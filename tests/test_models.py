import pytest
import torch
from torch import nn

from mixmatch.models import build_model, wrn28_2


def test_wrn28_2_parameter_count_matches_official():
    model = wrn28_2(10)
    n = sum(p.numel() for p in model.parameters())
    assert n == 1_469_642  # 1.47M as in the paper (TF conv layers have biases)


def test_wrn28_2_shape_and_layers():
    model = wrn28_2(10)
    assert model(torch.randn(3, 3, 32, 32)).shape == (3, 10)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)]
    assert len(convs) == 25  # stem + 3 stages x 4 units x 2 convs; with the linear head: 26 weight layers
    widths = sorted({m.out_channels for m in convs})
    assert widths == [16, 32, 64, 128]
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert all(m.momentum == 0.001 and m.eps == 1e-3 for m in bns)
    assert any(isinstance(m, nn.LeakyReLU) and m.negative_slope == 0.1 for m in model.modules())


@pytest.mark.parametrize(("channels", "size"), [(1, 8), (1, 28), (3, 32)])
def test_small_cnn_fits_image_sizes(channels, size):
    model = build_model("cnn", 10, channels, size)
    assert model(torch.randn(2, channels, size, size)).shape == (2, 10)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 2


def test_unknown_architecture():
    with pytest.raises(ValueError, match="unknown architecture 'resnet9'"):
        build_model("resnet9", 10, 3, 32)


@pytest.mark.parametrize(("channels", "size"), [(1, 28), (3, 32)])
@pytest.mark.parametrize(("arch", "widths"), [("wrn10_1", [16, 32, 64]), ("wrn10_2", [16, 32, 64, 128])])
def test_wrn10_is_the_same_design_at_a_cpus_scale(channels, size, arch, widths):
    model = build_model(arch, 10, channels, size)
    assert model(torch.randn(2, channels, size, size)).shape == (2, 10)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)]
    assert len(convs) == 7  # stem + 3 stages x 1 unit x 2 convs; with the linear head: 8 weight layers, WRN-10
    assert sorted({m.out_channels for m in convs}) == widths  # the stem has 16, as WRN-28-2's
    # Runs of thousands of steps: BatchNorm statistics over ~100 steps, not WRN-28-2's ~1000 (models/wrn.py).
    assert {m.momentum for m in model.modules() if isinstance(m, nn.BatchNorm2d)} == {0.01}


def test_the_large_wrn_is_the_papers_26m_parameter_model():
    # runs/table1.sh's --filters=135: WRN-28-2's design (widths 32-64-128 at --filters=32) at 135-270-540
    model = build_model("wrn28_large", 100, 3, 32)
    assert round(sum(p.numel() for p in model.parameters()) / 1e6) == 26
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)]
    assert len(convs) == 25 and sorted({m.out_channels for m in convs}) == [16, 135, 270, 540]


def test_small_cnn_pooling_before_the_activation_changes_nothing():
    """The blocks pool before their leaky ReLU; outputs and gradients equal the usual conv-BN-act-pool order,
    also where BatchNorm's scale is negative (so the swap is not hidden by a positive affine map)."""
    torch.manual_seed(0)
    model = build_model("cnn", 10, 1, 8)
    for bn in (m for m in model.modules() if isinstance(m, nn.BatchNorm2d)):
        bn.weight.data.uniform_(-1, 1)
    usual = nn.Sequential(
        *[nn.Sequential(block[0], block[1], nn.LeakyReLU(0.1), nn.MaxPool2d(2)) for block in model.features[:2]],
        nn.Flatten(), model.classifier,
    )
    x = torch.randn(16, 1, 8, 8)
    out = model(x)
    torch.testing.assert_close(out, usual(x), rtol=0, atol=0)
    grad = torch.autograd.grad(out.square().sum(), list(model.parameters()))
    grad_usual = torch.autograd.grad(usual(x).square().sum(), list(model.parameters()))
    for g, h in zip(grad, grad_usual, strict=True):
        torch.testing.assert_close(g, h)
