"""Task heads, and the meta-model that holds a backbone with its head initialisation.

A task with ``n`` classes needs ``n`` rows of output weights; the
meta-learned head initialisation provides them:

- ``"shared"``: one meta-learned row (and bias) copied for every class. The
  inner loop's first step breaks the symmetry. Because every task row starts
  as the same meta-parameter, the meta-gradient of that row is the sum of the
  task rows' gradients (the identity Jacobian of the copy). Serves any number
  of classes.
- ``"fixed"``: ``n_rows`` meta-learned rows, the classic N-way head of the
  MAML paper; task class ``j`` starts from row ``j % n_rows``.
- ``"prototype"``: rows built from the support embeddings at ``theta``
  (``w_j = 2 mu_j``, ``b_j = -|mu_j|^2``, as in Proto-MAML), no head
  meta-parameters.
- ``"cosine"``: the same rows, built from features scaled to a learnt norm
  ``s`` (:class:`~fomaml_sklearn.backbones.ScaledUnitFeatures` around the
  backbone, starting at ``COSINE_SCALE``), so that classes are ranked by
  cosine similarity at a learnt scale (Gidaris & Komodakis 2018; Oreshkin et
  al. 2018). ``s`` is a parameter of the backbone: the inner loop adapts it
  and every rule meta-learns it. Measured on Omniglot's within-alphabet
  task in ``docs/performance.md``.

Every head is a plain ``(weight, bias)`` pair: logits are
``features @ weight.T + bias``.
"""

import torch
from torch import nn

from .backbones import (
    COSINE_SCALE,
    ScaledUnitFeatures,
    init_parameters,
    normalises_flat_features,
    placement,
)
from .names import HEADS, PROTOTYPE_HEADS

__all__ = [
    "COSINE_SCALE",
    "HEADS",
    "MetaModel",
    "TaskModel",
    "prototype_head",
    "resolve_prototype_gradient",
]

# HEADS: the names of the heads below, from fomaml_sklearn.names (torch-free).
# COSINE_SCALE: the norm head="cosine" starts at, from fomaml_sklearn.backbones.


def _feature_dim(backbone, n_features):
    """The backbone's output size, from a forward pass on two zero rows (which
    also checks that it takes rows of ``n_features``)."""
    was_training = backbone.training
    backbone.eval()
    try:
        with torch.no_grad():
            try:
                z = backbone(torch.zeros(2, n_features, **placement(backbone)))
            except (RuntimeError, ValueError, TypeError) as exc:
                raise ValueError(
                    f"The backbone module {type(backbone).__name__} does not accept rows of "
                    f"{n_features} features ({type(exc).__name__}: "
                    f"{str(exc).splitlines()[0][:200]}). Its input layer must take "
                    f"{n_features} inputs (the number of features of X), or reshape rows "
                    "in its forward."
                ) from exc
    finally:
        backbone.train(was_training)
    if z.dim() != 2 or z.shape[0] != 2:
        raise ValueError(
            "A backbone module must map a batch of shape (n_samples, n_features) to "
            f"features of shape (n_samples, n_outputs); got shape {tuple(z.shape)}. "
            "Reshape inside the module's forward."
        )
    return int(z.shape[1])


def prototype_head(feats, y, n_classes):
    """Prototype head of support features: ``w_j = 2 mu_j``, ``b_j = -|mu_j|^2``.

    ``mu_j`` is the mean feature of class ``j``'s support examples, so the
    logits ``w_j . f + b_j = |f|^2 - |f - mu_j|^2`` rank the classes by
    squared distance to their prototype.

    Parameters
    ----------
    feats : torch.Tensor of shape (..., n, d)
        Support features, with any leading (task) axes.
    y : torch.Tensor of shape (n,)
        Class codes ``0 .. n_classes-1``, shared by the leading axes.
    n_classes : int
        Number of classes (rows of the head).

    Returns
    -------
    weight, bias : torch.Tensor
        ``(..., n_classes, d)`` and ``(..., n_classes)``, differentiable
        with respect to ``feats``.
    """
    protos = feats.new_zeros(feats.shape[:-2] + (n_classes, feats.shape[-1]))
    protos = protos.index_add(feats.dim() - 2, y, feats)
    # Counted with index_add rather than bincount, which reads a value from the
    # device (a host-device synchronisation on a GPU).
    counts = feats.new_zeros(n_classes).index_add_(0, y, feats.new_ones(y.shape)).clamp_min(1)
    protos = protos / counts[:, None]
    return 2 * protos, -(protos**2).sum(-1)


def resolve_prototype_gradient(value, backbone):
    """Resolve a rule's ``prototype_gradient`` option.

    ``"auto"`` is False only for a backbone that batch-normalises flat
    features (a :class:`~fomaml_sklearn.backbones.SupportBatchNorm` and no
    convolution, :func:`~fomaml_sklearn.backbones.normalises_flat_features`),
    True otherwise. Such a backbone's BatchNorm statistics come from the few
    support examples alone (in 1-shot, one per class), and the meta-gradient
    holds them constant there (``MetaConfig.statistics_gradient``); the
    gradient through the prototypes then hurt. The measurements behind this
    rule are in ``docs/design.md`` (``benchmarks/prototype_gradient.py``).

    Parameters
    ----------
    value : {"auto", True, False}
        The requested setting.
    backbone : torch.nn.Module
        The meta-model's body, after :func:`~fomaml_sklearn.backbones.build_backbone`
        (which converts ``nn.BatchNorm*`` layers to ``SupportBatchNorm``).

    Returns
    -------
    through : bool
        Whether the meta-gradient goes through the prototypes.
    """
    if value == "auto":
        return not normalises_flat_features(backbone)
    return bool(value)


class MetaModel(nn.Module):
    """Meta-parameters: a backbone and the initialisation of the task head.

    Parameters
    ----------
    backbone : torch.nn.Module
        Feature extractor, ``(n, n_features) -> (n, d)``.
    n_features : int
        Flattened input size (used to infer ``d`` when the backbone does not
        say it in ``out_features``).
    head : {"prototype", "cosine", "shared", "fixed"}, default="shared"
        How task heads are initialised (see the module docstring). With
        ``"cosine"`` the backbone is wrapped in
        :class:`~fomaml_sklearn.backbones.ScaledUnitFeatures`, and
        ``self.backbone`` is the wrapper.
    n_rows : int, default=1
        Number of meta-learned head rows for ``head="fixed"``.
    generator : torch.Generator or None, default=None
        Initialises the ``"fixed"`` rows (torch's default for a linear
        layer); ``None`` draws from the global generator.
    """

    def __init__(self, backbone, n_features, head="shared", n_rows=1, generator=None):
        super().__init__()
        if head not in HEADS:
            raise ValueError(f"head={head!r} is not one of {HEADS}.")
        if head == "cosine":
            backbone = ScaledUnitFeatures(backbone)  # starts at COSINE_SCALE
        self.backbone = backbone
        self.head = head
        self.feature_dim = _feature_dim(backbone, n_features)
        if head in PROTOTYPE_HEADS:
            self.head_weight = None
            self.head_bias = None
        else:
            rows = 1 if head == "shared" else int(n_rows)
            # skip_init: no random draw; the rows are set explicitly below.
            linear = torch.nn.utils.skip_init(nn.Linear, self.feature_dim, rows,
                                              **placement(backbone))
            with torch.no_grad():
                if head == "shared":
                    linear.weight.zero_()
                    linear.bias.zero_()
                elif generator is not None:
                    init_parameters(linear, generator)
                else:
                    linear.reset_parameters()
            self.head_weight = nn.Parameter(linear.weight.detach().clone())
            self.head_bias = nn.Parameter(linear.bias.detach().clone())

    @property
    def has_head_parameters(self):
        """Whether the head initialisation has meta-parameters of its own."""
        return self.head not in PROTOTYPE_HEADS

    def head_rows(self, n_classes):
        """Row of the meta-head that initialises each of ``n_classes`` classes."""
        rows = self.head_weight.shape[0]
        return torch.arange(n_classes, device=self.head_weight.device) % rows

    def head_with_graph(self, support_features, y_support, n_classes):
        """Task head at ``theta``, differentiable with respect to ``theta``.

        ``support_features`` is ``(..., n, d)``: with leading task axes, every
        task gets its own head, ``(..., n_classes, d)`` and ``(..., n_classes)``.
        """
        if self.head in PROTOTYPE_HEADS:
            return prototype_head(support_features, y_support, n_classes)
        rows = self.head_rows(n_classes)
        lead = support_features.shape[:-2]
        return (self.head_weight[rows].expand(lead + (-1, -1)),
                self.head_bias[rows].expand(lead + (-1,)))

    def initial_head(self, support_features, y_support, n_classes):
        """Task head ``(W0, b0)`` as fresh leaf tensors requiring grad."""
        weight, bias = self.head_with_graph(support_features.detach(), y_support, n_classes)
        return (weight.detach().clone().requires_grad_(True),
                bias.detach().clone().requires_grad_(True))

    def head_gradients(self, n_classes, grad_weight, grad_bias):
        """Meta-gradient of the head rows from a task head's gradient.

        A task row copied from meta-row ``r`` passes its gradient to ``r``
        (the copy's Jacobian is the identity); rows copied from the same
        meta-row add up. Empty for the prototype head.

        Returns
        -------
        grads : dict
            ``{head_weight: ..., head_bias: ...}``.
        """
        if self.head in PROTOTYPE_HEADS:
            return {}
        rows = self.head_rows(n_classes)
        return {
            self.head_weight: torch.zeros_like(self.head_weight).index_add_(0, rows, grad_weight),
            self.head_bias: torch.zeros_like(self.head_bias).index_add_(0, rows, grad_bias),
        }


class TaskModel(nn.Module):
    """An adapted network: the task's backbone and its linear head.

    Parameters
    ----------
    backbone : torch.nn.Module
        The adapted feature extractor (in evaluation mode its BatchNorm layers
        use the support statistics).
    weight, bias : torch.Tensor
        The adapted head, ``(n_outputs, d)`` and ``(n_outputs,)``.
    """

    def __init__(self, backbone, weight, bias):
        super().__init__()
        self.backbone = backbone
        # skip_init: no random initialisation (it would draw from the global RNG).
        self.head = torch.nn.utils.skip_init(
            nn.Linear, weight.shape[1], weight.shape[0], device=weight.device,
            dtype=weight.dtype,
        )
        with torch.no_grad():
            self.head.weight.copy_(weight)
            self.head.bias.copy_(bias)

    def forward(self, x):
        feats = self.backbone(x)
        return self.head(feats.to(self.head.weight.dtype))
