"""Backbones: shapes, BatchNorm conversion, construction errors."""

import pickle

import pytest
import torch
from torch import nn

from fomaml_sklearn.backbones import (
    Conv4Backbone,
    MLPBackbone,
    SupportBatchNorm,
    build_backbone,
    convert_batchnorm,
    support_rows,
)


def test_conv4_is_the_maml_network():
    net = Conv4Backbone((1, 28, 28), 64)
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size) for c in convs] == [
        (1, 64, (3, 3))] + [(64, 64, (3, 3))] * 3
    assert sum(isinstance(m, nn.MaxPool2d) for m in net.modules()) == 4
    assert sum(isinstance(m, SupportBatchNorm) for m in net.modules()) == 4
    out = net(torch.rand(5, 784))  # rows are reshaped to images
    assert out.shape == (5, 64) and net.out_features == 64
    images = torch.rand(5, 1, 28, 28)
    torch.testing.assert_close(net(images), net(images.reshape(5, -1)))


def test_scaled_unit_features_have_the_learnt_norm():
    from fomaml_sklearn.backbones import ScaledUnitFeatures, is_built_in

    body = MLPBackbone(6, (8, 5), batch_norm=False)
    net = ScaledUnitFeatures(body, scale=2.0)
    x = torch.randn(4, 6)
    torch.testing.assert_close(net(x).norm(dim=1), torch.full((4,), 2.0))
    # The same direction as the body's features; the norm follows log_scale.
    torch.testing.assert_close(torch.cosine_similarity(net(x), body(x)), torch.ones(4))
    with torch.no_grad():
        net.log_scale.fill_(0.0)
    torch.testing.assert_close(net(x).norm(dim=1), torch.ones(4))
    assert net.out_features == 5 and is_built_in(net)
    assert not is_built_in(ScaledUnitFeatures(nn.Linear(6, 3)))
    with pytest.raises(ValueError, match="scale must be > 0.*got 0"):
        ScaledUnitFeatures(body, scale=0)


def test_conv4_on_small_images_stops_pooling():
    net = Conv4Backbone((1, 8, 8), 16)
    assert net(torch.rand(3, 64)).shape == (3, 16 * 1 * 1)
    assert sum(isinstance(m, nn.MaxPool2d) for m in net.modules()) == 3


def test_mlp_features_and_pickling():
    net = MLPBackbone(10, (16, 8))
    assert net(torch.rand(4, 10)).shape == (4, 8)
    clone = pickle.loads(pickle.dumps(net))
    x = torch.rand(4, 10)
    net.eval(), clone.eval()
    torch.testing.assert_close(clone(x), net(x))


def test_build_backbone_and_conversion():
    assert isinstance(build_backbone("mlp", 12), MLPBackbone)
    conv = build_backbone("conv4", 3 * 10 * 10, input_shape=(3, 10, 10))
    assert conv.input_shape == (3, 10, 10)
    user = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6))
    with torch.no_grad():
        user[1].weight.fill_(2.0)
    built = build_backbone(user, 4)
    assert isinstance(built[1], SupportBatchNorm) and isinstance(user[1], nn.BatchNorm1d)
    assert torch.all(built[1].weight == 2.0)
    converted = convert_batchnorm(nn.Sequential(nn.Sequential(nn.BatchNorm2d(3))))
    assert isinstance(converted[0][0], SupportBatchNorm)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(module="vgg", n_features=4), ValueError, "not a known backbone"),
        (dict(module=3, n_features=4), TypeError, "got 3 of type int"),
        (dict(module="conv4", n_features=50), ValueError, "input_shape"),
        (dict(module="conv4", n_features=50, input_shape=(1, 7, 7)), ValueError,
         "does not fit the data"),
    ],
)
def test_build_backbone_errors(kwargs, error, match):
    module = kwargs.pop("module")
    n = kwargs.pop("n_features")
    with pytest.raises(error, match=match):
        build_backbone(module, n, **kwargs)


def test_image_shape_resolves_and_checks_the_shape():
    from fomaml_sklearn.backbones import image_shape

    assert image_shape(784) == (1, 28, 28)
    assert image_shape(64, (8, 8)) == (1, 8, 8)
    assert image_shape(3 * 32 * 32, [3, 32, 32]) == (3, 32, 32)
    with pytest.raises(ValueError, match=r"input_shape=\(3, 8, 8\) does not fit the data.* 64"):
        image_shape(64, (3, 8, 8))
    with pytest.raises(ValueError, match=r"image_shape=\(1, 2, 3, 4\) does not fit"):
        image_shape(24, (1, 2, 3, 4), argument="image_shape")
    with pytest.raises(ValueError, match=r"50 features.*pass image_shape=\(channels"):
        image_shape(50, argument="image_shape")
    with pytest.raises(ValueError, match="module='conv4' needs images: the data has 50"):
        build_backbone("conv4", 50)


@pytest.mark.parametrize("make, shape", [
    (lambda: MLPBackbone(6, (8, 5)), (6,)),
    (lambda: Conv4Backbone((1, 12, 12), 4), (1, 12, 12)),
])
def test_support_rows_gives_the_evaluation_features_and_leaves_the_layers_as_they_were(
        make, shape):
    torch.manual_seed(0)
    body = make().double()
    xs, xq = torch.randn(7, *shape, dtype=torch.float64), torch.randn(4, *shape,
                                                                       dtype=torch.float64)
    body.train()(xs)  # records the support statistics
    stored = [b.clone() for b in body.buffers()]
    expected = body.eval()(xq)
    with support_rows(body, len(xs)):
        both = body(torch.cat([xs, xq]))
        body.train()
        in_training_mode = body(torch.cat([xs, xq]))
    torch.testing.assert_close(both[7:], expected, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(in_training_mode, both, rtol=1e-10, atol=1e-12)
    for before, after in zip(stored, body.buffers()):  # the stored statistics are untouched
        torch.testing.assert_close(before, after, rtol=0, atol=0)
    assert all(m.support_rows is None for m in body.modules()
               if isinstance(m, SupportBatchNorm))
    with pytest.raises(ValueError, match=r"n=0 is not a positive int"):
        with support_rows(body, 0):
            pass


@pytest.mark.parametrize("shape", [(9, 3), (9, 3, 4, 4)])
def test_support_rows_gradient_runs_through_the_support_statistics(shape):
    """float64 gradcheck of the fused layer, and the same gradient as a
    hand-written normalisation (statistics of the first rows in the graph)."""
    torch.manual_seed(1)
    bn = SupportBatchNorm(3).double()
    x = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, dtype=torch.float64, requires_grad=True)
    n = 4

    def fused(x, w, b):
        with support_rows(bn, n):
            return torch.func.functional_call(bn, {"weight": w, "bias": b}, (x,))

    def by_hand(x, w, b, held=False):
        dims = [0] + list(range(2, x.dim()))
        view = (1, -1) + (1,) * (x.dim() - 2)
        support = x[:n].detach() if held else x[:n]
        mean = support.mean(dims).view(view)
        var = support.var(dims, unbiased=False).view(view)
        return (x - mean) / torch.sqrt(var + bn.eps) * w.view(view) + b.view(view)

    assert torch.autograd.gradcheck(fused, (x, w, b))
    r = torch.randn(shape, dtype=torch.float64)
    got = torch.autograd.grad((fused(x, w, b) * r).sum(), (x, w, b))
    want = torch.autograd.grad((by_hand(x, w, b) * r).sum(), (x, w, b))
    for g, e in zip(got, want):
        torch.testing.assert_close(g, e, rtol=1e-9, atol=1e-11)
    # The statistics' term reaches the support rows only: with the
    # statistics held constant the queries' gradient is the same, the
    # support rows' is not.
    held = torch.autograd.grad((by_hand(x, w, b, held=True) * r).sum(), x)[0]
    torch.testing.assert_close(got[0][n:], held[n:], rtol=1e-9, atol=1e-11)
    assert not torch.allclose(got[0][:n], held[:n])
