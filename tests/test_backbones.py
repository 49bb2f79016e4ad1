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
