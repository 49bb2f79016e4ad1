"""Feature extractors ("bodies") used by the meta-learner.

A backbone maps a batch of inputs to a batch of feature vectors. The task
head (one row of weights per class) is *not* part of the backbone: the
learner builds it per task, so one meta-learned network serves tasks with any
number of classes.

BatchNorm in few-shot learning needs care: with plain ``nn.BatchNorm`` the
prediction for one query sample depends on the other samples in the batch.
:class:`SupportBatchNorm` normalises with the statistics of the last batch it
saw in training mode (the support set) when it is in evaluation mode, so
predictions are per-sample functions of the support set. In meta-training,
:func:`support_rows` runs the support set and the queries in one pass that
normalises both with the support statistics *inside* the graph, so that the
query loss's gradient includes how those statistics move with the weights.
"""

import contextlib
import math
import threading

import torch
from torch import nn
from torch.nn import functional as F

from .names import BACKBONES, backbone_name

#: What ``module=`` accepts, for messages: the names of
#: :data:`fomaml_sklearn.names.BACKBONES` or a torch module.
BACKBONE_CHOICES = (", ".join(repr(n) for n in BACKBONES)
                    + ", a torch.nn.Module subclass or a torch.nn.Module instance")

__all__ = [
    "BACKBONE_CHOICES",
    "COSINE_SCALE",
    "SupportBatchNorm",
    "support_rows",
    "normalises_flat_features",
    "placement",
    "statistics_gradient_auto",
    "MLPBackbone",
    "Conv4Backbone",
    "ScaledUnitFeatures",
    "build_backbone",
    "convert_batchnorm",
    "image_shape",
    "init_parameters",
]


class SupportBatchNorm(nn.Module):
    """Batch normalisation that remembers the support-set statistics.

    In training mode it normalises with the statistics of the current batch
    (the gradient flows through them, as in MAML) and stores a detached copy.
    In evaluation mode it normalises with the stored copy, so a query sample's
    output does not depend on the other query samples.

    Parameters
    ----------
    num_features : int
        Number of channels (dimension 1 of the input).
    eps : float, default=1e-5
        Added to the variance for numerical stability.

    Attributes
    ----------
    support_rows : int or None
        Set by :func:`support_rows`: while it is an int ``n``, in either
        mode, the layer normalises its whole input with the mean and variance
        of the input's first ``n`` rows, computed with their graph, and
        leaves the stored statistics alone.
    """

    support_rows = None  # a class default: models saved before it existed load as they were

    def __init__(self, num_features, eps=1e-5):
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))
        self.register_buffer("support_mean", torch.zeros(num_features))
        self.register_buffer("support_var", torch.ones(num_features))

    def forward(self, x):
        if self.support_rows is not None:
            return self._normalise_by_leading_rows(x, self.support_rows)
        if self.training:
            # One fused kernel that also returns the batch statistics.
            out, mean, rstd = torch.native_batch_norm(
                x, self.weight, self.bias, None, None, True, 0.0, self.eps
            )
            with torch.no_grad():
                self.support_mean.copy_(mean)
                self.support_var.copy_(rstd.pow(-2) - self.eps)
            return out
        return F.batch_norm(
            x, self.support_mean, self.support_var, self.weight, self.bias,
            False, 0.0, self.eps,
        )

    def _normalise_by_leading_rows(self, x, n):
        # In float32 at least (bfloat16 under autocast), as torch's batch norm.
        xf = x.to(torch.promote_types(x.dtype, torch.float32))
        return _LeadingRowsNorm.apply(xf, self.weight, self.bias, n, self.eps)[0].to(x.dtype)

    def extra_repr(self):
        return f"{self.num_features}, eps={self.eps}"


class _LeadingRowsNorm(torch.autograd.Function):
    """Batch norm of all rows with the mean and variance of the first ``n``
    rows, differentiable through those statistics, on torch's fused kernels
    (a forward and a backward pass of evaluation-mode batch norm over all rows,
    plus the statistics' term on the first ``n`` rows)."""

    generate_vmap_rule = True  # torch.func.vmap (FOMAML's batched path)

    @staticmethod
    def forward(x, weight, bias, n, eps):
        _, mean, invstd = torch.native_batch_norm(x[:n], None, None, None, None, True, 0.0, eps)
        out = torch.native_batch_norm(x, weight, bias, mean, invstd.pow(-2) - eps, False,
                                      0.0, eps)[0]
        return out, mean, invstd

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, weight, _, n, eps = inputs
        _, mean, invstd = output
        ctx.mark_non_differentiable(mean, invstd)
        ctx.save_for_backward(x, weight, mean, invstd)
        ctx.n, ctx.eps = n, eps

    @staticmethod
    def backward(ctx, grad_out, _grad_mean, _grad_invstd):
        x, weight, mean, invstd = ctx.saved_tensors
        n, eps = ctx.n, ctx.eps
        # With the statistics held fixed: grad_x = g w s, and the per-channel
        # sums sum(g) (= grad_bias) and sum(g (x - mean)) s (= grad_weight).
        grad_x, grad_w, grad_b = torch.ops.aten.native_batch_norm_backward(
            grad_out, x, weight, mean, invstd.pow(-2) - eps, mean, invstd, False, eps,
            [True, True, True])
        # The statistics' term: mean and s = 1/sqrt(var + eps) of the first n
        # rows move with them; over the m = n * (spatial size) values of a
        # channel, d mean / dx_i = 1/m and d s / dx_i = -s^3 (x_i - mean) / m.
        shape = (1, -1) + (1,) * (x.dim() - 2)
        m = n * math.prod(x.shape[2:])
        slope = -(weight * invstd.pow(2) * grad_w) / m  # -(w s^3 sum(g (x - mean))) / m
        offset = -(weight * invstd * grad_b) / m - slope * mean
        grad_x[:n] += torch.addcmul(offset.view(shape), x[:n], slope.view(shape))
        return grad_x, grad_w, grad_b, None, None


def normalises_flat_features(backbone):
    """Whether ``backbone`` batch-normalises flat features: it has a
    :class:`SupportBatchNorm` layer and no convolution, so that each
    statistic comes from the support examples alone (in 1-shot, one per
    class), not pooled over the positions of feature maps."""
    modules = list(backbone.modules())
    has_conv = any(isinstance(m, nn.modules.conv._ConvNd) for m in modules)
    return not has_conv and any(isinstance(m, SupportBatchNorm) for m in modules)


def statistics_gradient_auto(backbone):
    """Whether meta-training differentiates through the support BatchNorm
    statistics by default (:func:`support_rows`): yes for a backbone with
    SupportBatchNorm layers, unless it normalises flat features
    (:func:`normalises_flat_features`), where holding them constant learnt
    faster (measurements in ``docs/design.md``, "The support statistics
    inside the graph")."""
    has_norm = any(isinstance(m, SupportBatchNorm) for m in backbone.modules())
    return has_norm and not normalises_flat_features(backbone)


@contextlib.contextmanager
def support_rows(module, n):
    """Within the block, every :class:`SupportBatchNorm` of ``module``
    normalises its input with the statistics of the input's first ``n`` rows,
    computed inside the graph.

    Pass the support set and the queries of a task as one batch, support
    first: the query features are those of evaluation mode (normalised with
    the support statistics), but their gradient also flows through the
    statistics into the weights. The layers' stored statistics and their
    training flag are not touched.

    Parameters
    ----------
    module : torch.nn.Module
        The backbone (any module; layers other than ``SupportBatchNorm`` are
        not affected).
    n : int
        The number of leading rows (the support set's size), at least 1.

    Examples
    --------
    >>> import torch
    >>> from fomaml_sklearn.backbones import MLPBackbone, support_rows
    >>> body = MLPBackbone(4, (8,))
    >>> xs, xq = torch.randn(6, 4), torch.randn(3, 4)
    >>> _ = body.train()(xs)  # records the support statistics
    >>> with support_rows(body, len(xs)):
    ...     both = body(torch.cat([xs, xq]))
    >>> torch.allclose(both[6:], body.eval()(xq), atol=1e-5)
    True
    """
    if not (isinstance(n, int) and n >= 1):
        raise ValueError(f"n={n!r} is not a positive int (the number of support rows).")
    layers = [m for m in module.modules() if isinstance(m, SupportBatchNorm)]
    previous = [m.support_rows for m in layers]
    for m in layers:
        m.support_rows = n
    try:
        yield module
    finally:
        for m, p in zip(layers, previous):
            m.support_rows = p


class MLPBackbone(nn.Module):
    """Fully connected feature extractor.

    Each hidden layer is ``Linear -> SupportBatchNorm -> ReLU``, or
    ``Linear -> ReLU`` without ``batch_norm`` (the MAML paper's sinusoid
    network).

    Parameters
    ----------
    n_features : int
        Number of input features.
    hidden_layer_sizes : tuple of int, default=(64, 64)
        Width of each hidden layer; the last one is the feature dimension.
    batch_norm : bool, default=True
        Normalise each hidden layer (with the support statistics).
    """

    def __init__(self, n_features, hidden_layer_sizes=(64, 64), batch_norm=True):
        super().__init__()
        layers = []
        width = n_features
        for size in hidden_layer_sizes:
            norm = [SupportBatchNorm(size)] if batch_norm else []
            layers += [nn.Linear(width, size), *norm, nn.ReLU()]
            width = size
        self.layers = nn.Sequential(*layers)
        self.out_features = width

    def forward(self, x):
        return self.layers(x.reshape(x.shape[0], -1))


class Conv4Backbone(nn.Module):
    """The four-block convolutional network of the MAML paper.

    Four blocks of ``[conv 3x3 (n_filters), BatchNorm, ReLU, 2x2 max-pool]``
    (Finn et al., 2017; Vinyals et al., 2016), followed by flattening. For
    images smaller than 16x16 the pooling stops once the map is 1x1.

    Parameters
    ----------
    input_shape : tuple of int
        ``(channels, height, width)`` of one input image. Flat rows are
        reshaped to it, so the network works inside scikit-learn pipelines.
    n_filters : int, default=64
        Number of filters of every convolution.
    """

    def __init__(self, input_shape, n_filters=64):
        super().__init__()
        self.input_shape = tuple(int(s) for s in input_shape)
        channels, height, width = self.input_shape
        blocks = []
        for _ in range(4):
            blocks += [nn.Conv2d(channels, n_filters, 3, padding=1), SupportBatchNorm(n_filters)]
            # Max-pooling before the ReLU computes the same function (ReLU is
            # monotone) with the ReLU on 4x fewer values.
            if height >= 2 and width >= 2:  # small images: stop pooling at 1x1
                blocks.append(nn.MaxPool2d(2))
                height, width = height // 2, width // 2
            blocks.append(nn.ReLU())
            channels = n_filters
        self.blocks = nn.Sequential(*blocks)
        self.out_features = n_filters * height * width
        # channels_last runs the convolutions faster on CPU (oneDNN), most of
        # all with bfloat16; weights and inputs use it consistently.
        self.to(memory_format=torch.channels_last)

    def forward(self, x):
        x = x.reshape((x.shape[0],) + self.input_shape)
        if not torch._C._functorch.is_batchedtensor(x):
            x = x.contiguous(memory_format=torch.channels_last)
        return self.blocks(x).flatten(1)


def placement(module):
    """``{"dtype": ..., "device": ...}`` of ``module``'s first parameter
    (float32 on the CPU for a module without parameters): where new tensors
    that go with it belong."""
    param = next(module.parameters(), None)
    if param is None:
        return {"dtype": torch.float32, "device": torch.device("cpu")}
    return {"dtype": param.dtype, "device": param.device}


#: The features' norm at the start of :class:`ScaledUnitFeatures`, and so of
#: ``head="cosine"`` (the scale that was measured: ``docs/performance.md``,
#: issue #27).
COSINE_SCALE = 3.0


class ScaledUnitFeatures(nn.Module):
    """A backbone whose features are scaled to a learnt norm.

    ``forward(x) = s * body(x) / |body(x)|`` with ``s = exp(log_scale)``, a
    parameter like the body's (so the inner loop adapts it too, and every
    rule meta-learns it). The prototype head on such features ranks the
    classes by cosine similarity at the scale ``s``: the logit gap between
    two classes is ``2 s^2`` times their gap in cosine similarity to the
    support drawing (in 1-shot exactly; with more shots the prototypes'
    norms also count). The head ``"cosine"`` builds this around the
    backbone (:class:`~fomaml_sklearn.heads.MetaModel`).

    Parameters
    ----------
    body : torch.nn.Module
        The feature extractor whose output is normalised.
    scale : float, default=COSINE_SCALE (3.0)
        The norm at the start.
    """

    def __init__(self, body, scale=COSINE_SCALE):
        super().__init__()
        if not scale > 0:
            raise ValueError(f"scale must be > 0 (the features' norm at the start); got {scale!r}")
        self.body = body
        self.log_scale = nn.Parameter(torch.tensor(math.log(scale), **placement(body)))
        if hasattr(body, "out_features"):
            self.out_features = body.out_features

    def forward(self, x):
        feats = self.body(x)
        return F.normalize(feats, dim=-1) * self.log_scale.exp().to(feats.dtype)


def is_built_in(module):
    """Whether ``module`` is one of the package's own backbones (exactly, not
    a subclass), possibly with its features scaled to a learnt norm
    (:class:`ScaledUnitFeatures`): their forward passes draw no random
    numbers and keep no state but the BatchNorm statistics."""
    if type(module) is ScaledUnitFeatures:
        module = module.body
    return type(module) in (MLPBackbone, Conv4Backbone)


def convert_batchnorm(module):
    """Replace ``nn.BatchNorm1d/2d/3d`` layers by :class:`SupportBatchNorm`.

    Affine parameters are copied. The module is changed in place and returned.

    Parameters
    ----------
    module : torch.nn.Module
        The network to convert.

    Returns
    -------
    module : torch.nn.Module
        The same object, converted.
    """
    for name, child in module.named_children():
        if isinstance(child, nn.modules.batchnorm._BatchNorm):
            new = SupportBatchNorm(child.num_features, eps=child.eps)
            if child.affine:
                with torch.no_grad():
                    new.weight.copy_(child.weight)
                    new.bias.copy_(child.bias)
            setattr(module, name, new)
        else:
            convert_batchnorm(child)
    return module


def image_shape(n_features, input_shape=None, *, argument="input_shape"):
    """Resolve the ``(channels, height, width)`` of one image of ``n_features``.

    Parameters
    ----------
    n_features : int
        Number of features of a flattened image.
    input_shape : tuple of int or None, default=None
        The shape, if known: ``(channels, height, width)``, or ``(height,
        width)`` for one channel; checked against ``n_features``. None: a
        square single-channel image, when ``n_features`` is a square.
    argument : str, default="input_shape"
        The caller's name for ``input_shape``, used in the error messages.

    Returns
    -------
    shape : tuple of int
        ``(channels, height, width)`` with ``channels * height * width ==
        n_features``.

    Raises
    ------
    ValueError
        ``input_shape`` does not have 2 or 3 entries or does not fit
        ``n_features``; or it is None and ``n_features`` is not a square.

    Examples
    --------
    >>> from fomaml_sklearn.backbones import image_shape
    >>> image_shape(784), image_shape(64, (8, 8)), image_shape(3072, (3, 32, 32))
    ((1, 28, 28), (1, 8, 8), (3, 32, 32))
    """
    n_features = int(n_features)
    if input_shape is not None:
        shape = tuple(int(s) for s in input_shape)
        if len(shape) == 2:
            shape = (1,) + shape
        if len(shape) != 3 or math.prod(shape) != n_features:
            raise ValueError(
                f"{argument}={input_shape!r} does not fit the data: it must be "
                f"(channels, height, width) with channels*height*width equal to "
                f"the number of features, {n_features}."
            )
        return shape
    side = math.isqrt(n_features)
    if side * side != n_features:
        raise ValueError(
            f"the data has {n_features} features, which is not a square single-channel "
            f"image; pass {argument}=(channels, height, width)."
        )
    return (1, side, side)


_INIT_LOCK = threading.Lock()


def init_parameters(module, generator):
    """(Re-)initialise ``module``'s parameters from ``generator``, touching no
    global random state.

    Linear and convolution layers get torch's default initialisation
    (``kaiming_uniform_(a=sqrt(5))`` weights, biases uniform in
    ``+-1/sqrt(fan_in)``), drawn from ``generator``; BatchNorm layers
    (``SupportBatchNorm`` and torch's) get weights 1 and biases 0, and their
    statistics are reset. Other modules are left as they are: this serves the
    built-in backbones, whose layers are only these.

    Parameters
    ----------
    module : torch.nn.Module
        The network, on any device but "meta".
    generator : torch.Generator
        The source of randomness (on the CPU).

    Returns
    -------
    module : torch.nn.Module
        The same object.
    """
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, (nn.Linear, nn.modules.conv._ConvNd)):
                # Drawn on the CPU, so the generator's device never matters.
                w = torch.empty(m.weight.shape)
                nn.init.kaiming_uniform_(w, a=math.sqrt(5), generator=generator)
                m.weight.copy_(w)
                if m.bias is not None:
                    fan_in = m.weight[0].numel()
                    bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0
                    m.bias.copy_(torch.empty(m.bias.shape).uniform_(
                        -bound, bound, generator=generator))
            elif isinstance(m, SupportBatchNorm):
                m.weight.fill_(1)
                m.bias.fill_(0)
                m.support_mean.zero_()
                m.support_var.fill_(1)
            elif isinstance(m, nn.modules.batchnorm._NormBase):
                m.reset_parameters()
    return module


def _seeded_cpu_rng(generator):
    """A context in which torch's global CPU generator is seeded from
    ``generator`` and restored afterwards (CUDA generators untouched); a lock
    keeps two threads of this package from interleaving in it."""
    import contextlib

    seed = int(torch.randint(0, 2**62, (1,), generator=generator))

    @contextlib.contextmanager
    def scope():
        with _INIT_LOCK, torch.random.fork_rng(devices=[]):
            torch.random.default_generator.manual_seed(seed)
            yield

    return scope()


def _on_meta_device(build):
    """Build a module without drawing random numbers: on the "meta" device,
    then given (uninitialised) memory on the CPU."""
    with torch.device("meta"):
        module = build()
    return module.to_empty(device="cpu")


def build_backbone(module, n_features, *, input_shape=None,
                   hidden_layer_sizes=(64, 64), n_filters=64, module_params=None,
                   generator=None, batch_norm=True):
    """Build the feature extractor named by ``module``.

    Parameters
    ----------
    module : {"mlp", "conv4"}, torch.nn.Module class or instance
        What to build: a name of :data:`fomaml_sklearn.names.BACKBONES`
        (or an alias, ``"conv-4"``), a class or an instance. A class is
        instantiated with ``module_params``; an instance is deep-copied
        (never trained in place). Standard BatchNorm layers of user modules
        are converted to :class:`SupportBatchNorm`.
    n_features : int
        Number of input features (flattened).
    input_shape : tuple of int or None
        Image shape ``(C, H, W)`` for convolutional backbones.
    hidden_layer_sizes : tuple of int
        Hidden widths of the MLP.
    n_filters : int
        Filters of the Conv-4 network.
    module_params : dict or None
        Keyword arguments for a user module class.
    batch_norm : bool, default=True
        BatchNorm in the hidden layers of the MLP.
    generator : torch.Generator or None, default=None
        Initialise from this generator: the built-in backbones are built
        without drawing random numbers and initialised from it
        (:func:`init_parameters`); a user class is instantiated as usual while
        torch's global CPU generator is seeded from it and then restored (a
        lock serialises this between threads). ``None`` uses the global
        generator as it is. An instance keeps its own weights.

    Returns
    -------
    backbone : torch.nn.Module
        The feature extractor; ``backbone(x)`` returns a 2-D tensor.

    Examples
    --------
    >>> import torch
    >>> from fomaml_sklearn.backbones import build_backbone
    >>> net = build_backbone("conv4", 784, n_filters=8)   # rows of 28x28 images
    >>> net(torch.zeros(2, 784)).shape
    torch.Size([2, 8])
    >>> net = build_backbone("mlp", 64, hidden_layer_sizes=(32, 16))
    >>> net(torch.zeros(3, 64)).shape
    torch.Size([3, 16])
    """
    import copy

    def make(build):
        if generator is None:
            return build()
        return init_parameters(_on_meta_device(build), generator)

    if isinstance(module, str):
        name = backbone_name(module)
        if name == "mlp":
            return make(lambda: MLPBackbone(n_features, tuple(hidden_layer_sizes), batch_norm))
        if name == "conv4":
            try:
                shape = image_shape(n_features, input_shape)
            except ValueError as exc:
                raise ValueError(f"module={module!r} needs images: {exc}") from None
            return make(lambda: Conv4Backbone(shape, n_filters))
        raise ValueError(
            f"module={module!r} is not a known backbone; use {BACKBONE_CHOICES}."
        )
    if isinstance(module, nn.Module):
        return convert_batchnorm(copy.deepcopy(module))
    if isinstance(module, type) and issubclass(module, nn.Module):
        if generator is None:
            return convert_batchnorm(module(**(module_params or {})))
        with _seeded_cpu_rng(generator):
            return convert_batchnorm(module(**(module_params or {})))
    raise TypeError(
        f"module must be {BACKBONE_CHOICES}; got {module!r} of type {type(module).__name__}."
    )
