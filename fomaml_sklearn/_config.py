"""Every ``"auto"`` setting, resolved once in ``fit`` into one frozen object.

:func:`resolve_config` turns an estimator's parameters and its freshly built
meta-model into a :class:`MetaConfig`: the device, the precision, the inner
rate, the rule (with its own ``"auto"`` options decided) and the task
batching. ``fit`` passes it down to the training loop and keeps it; nothing
is read back from the skorch net.
"""

import dataclasses
from typing import Callable, Optional

import torch
from torch.nn import functional as F

from . import names

__all__ = [
    "MetaConfig",
    "PRECISIONS",
    "resolve_config",
    "resolve_device",
    "resolve_precision",
    "resolve_task_batching",
]

# The autocast dtype of each precision of fomaml_sklearn.names (None: float32).
PRECISIONS = {name: None if name == "float32" else getattr(torch, name)
              for name in names.PRECISIONS}
TASK_BATCHING = names.TASK_BATCHING


@dataclasses.dataclass(frozen=True)
class MetaConfig:
    """The resolved settings of meta-training and adaptation.

    Attributes
    ----------
    algorithm : MetaAlgorithm or None
        The rule, its options resolved (``None``: FOMAML's defaults).
    inner_lr : float
        Inner SGD rate alpha.
    n_inner_steps : int
        Inner steps per task in meta-training.
    n_inner_steps_test : int
        Inner steps when adapting to a new task.
    transductive : bool
        Normalise queries with their own batch statistics.
    device : torch.device
        Where the network runs.
    precision : str
        ``"float32"``, ``"bfloat16"`` or ``"float16"``.
    task_batching : {"loop", "threads", "grouped"}
        How a meta-batch's tasks run: one after the other, on threads (one
        intra-op thread each), or through the rule's batched path.
    loss : callable
        ``loss(outputs, targets)``, a scalar mean over the examples.
    statistics_gradient : bool or None
        Whether the meta-gradient runs through the support set's BatchNorm
        statistics (the queries' normalisation and the prototypes at
        ``theta``) or holds them constant. None: decided per backbone by
        :func:`~fomaml_sklearn.backbones.statistics_gradient_auto` (through
        them with convolutions, constant for BatchNorm over flat features).
    """

    algorithm: Optional[object] = None
    inner_lr: float = 0.4
    n_inner_steps: int = 1
    n_inner_steps_test: int = 3
    transductive: bool = False
    device: torch.device = torch.device("cpu")
    precision: str = "float32"
    task_batching: str = "loop"
    loss: Callable = F.cross_entropy
    statistics_gradient: Optional[bool] = None

    @property
    def autocast_dtype(self):
        """The ``torch.autocast`` dtype, None for float32."""
        return PRECISIONS[self.precision]

    def replace(self, **changes):
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)


def resolve_device(device):
    """Turn ``"auto"``/``"cpu"``/``"cuda[:i]"``/``torch.device`` into a torch.device."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(
            f"device={device!r} is not a valid device; use 'cpu', 'cuda', 'cuda:N' "
            "or 'auto'."
        ) from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"device={device!r} was requested, but CUDA is not available on this "
            "machine (torch.cuda.is_available() is False); use device='cpu', or "
            "device='auto' to take a GPU only where there is one."
        )
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device={device!r} is not supported; use 'cpu', 'cuda' or 'auto'.")
    return dev


def _cpu_has_fast_bf16():
    """True where the CPU runs bfloat16 natively (AMX or AVX512-BF16)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def resolve_precision(precision, device):
    """The precision name for ``precision`` on ``device`` (``"auto"`` decided)."""
    if precision == "auto":
        if device.type == "cuda":
            # Native bf16 only: emulated bf16 on older GPUs is slow.
            fast = torch.cuda.is_bf16_supported(including_emulation=False)
        else:
            fast = _cpu_has_fast_bf16()
        precision = "bfloat16" if fast else "float32"
    if precision not in PRECISIONS:
        raise ValueError(
            f"precision={precision!r} is not supported; use "
            f"{names.quoted(('auto',) + names.PRECISIONS)} (float16 on a GPU only)."
        )
    if precision == "float16" and device.type != "cuda":
        raise ValueError(
            "precision='float16' runs only on a GPU; on the CPU use 'bfloat16' "
            "or 'auto'."
        )
    return precision


def resolve_task_batching(task_batching, algorithm, meta_model, device, precision="float32",
                          loss=F.cross_entropy):
    """Resolve the ``task_batching`` parameter to ``"loop"``, ``"threads"``
    or ``"grouped"``.

    ``"auto"`` takes the rule's batched path on a GPU where the rule has one
    for this model; on a CPU it runs the tasks on threads (one intra-op
    thread each) where the rule allows it
    (:attr:`~fomaml_sklearn.algorithms.MetaAlgorithm.concurrent_tasks`) and
    the backbone is a built-in one, and the loop elsewhere (a user's module
    may draw random numbers, whose order threads would change; ask for
    ``"threads"`` to run it on threads anyway). On the 2-core CPUs
    measured, tasks on 2 threads ran 1.1-1.3x faster than the loop on 2
    intra-op threads, and the batched path slower than both
    (``docs/performance.md``).

    Parameters
    ----------
    task_batching : {"auto", "loop", "threads", "grouped"}
        The requested mode.
    algorithm : MetaAlgorithm
        The rule.
    meta_model : MetaModel
        The model to meta-train.
    device : str or torch.device
        Where meta-training runs.
    precision : str, default="float32"
        The resolved precision: the batched path runs only in float32
        (``torch.autocast`` does not reach into ``torch.func.vmap``).
    loss : callable, default=torch.nn.functional.cross_entropy
        The task loss: the batched path computes the cross-entropy only.

    Returns
    -------
    mode : {"grouped", "threads", "loop"}

    Raises
    ------
    ValueError
        If ``"grouped"`` is asked for a rule or model without a batched
        path, or ``"threads"`` for a rule whose tasks cannot run at once or
        on a device other than the CPU.
    """
    if task_batching not in TASK_BATCHING:
        raise ValueError(
            f"task_batching={task_batching!r} is not supported; use one of {TASK_BATCHING}."
        )
    kind = torch.device(device).type
    on_cpu = kind == "cpu"
    concurrent = bool(getattr(algorithm, "concurrent_tasks", False))
    if task_batching == "threads" and not (on_cpu and concurrent):
        why = (f"the rule {type(algorithm).__name__} keeps state across tasks "
               "(its concurrent_tasks is False)" if on_cpu else
               f"it runs tasks on CPU threads, and the device is {torch.device(device)}")
        raise ValueError(
            f"task_batching='threads' cannot be used here: {why}. Use task_batching='auto' "
            "or 'loop'."
        )
    supported = algorithm.supports_batched(meta_model) and loss is F.cross_entropy
    if task_batching == "grouped" and supported and precision != "float32":
        raise ValueError(
            f"task_batching='grouped' runs in float32 only (autocast does not reach "
            f"into torch.func.vmap); got precision={precision!r}. Use "
            "precision='float32' or task_batching='loop'."
        )
    supported = supported and precision == "float32"
    if task_batching == "grouped" and not supported:
        raise ValueError(
            f"task_batching='grouped' needs a rule with a batched path for this model "
            f"(FOMAML with the built-in 'mlp' and 'conv4' backbones, classification); got "
            f"algorithm={type(algorithm).__name__} and a "
            f"{type(meta_model.backbone).__name__} backbone. Use task_batching='auto' "
            "(grouped on a GPU where supported) or 'loop'."
        )
    if task_batching != "auto":
        return task_batching
    if supported and kind == "cuda":
        return "grouped"
    from .backbones import is_built_in

    # Only the built-in backbones: a module of the user's may draw random
    # numbers (dropout) from torch's global generator, in an order that
    # threads would change.
    built_in = is_built_in(meta_model.backbone)
    return "threads" if on_cpu and concurrent and built_in else "loop"


def resolve_inner_lr(inner_lr, head):
    """``"auto"``: 0.01 with a prototype head (``"prototype"``, ``"cosine"``),
    0.4 (the MAML paper's) otherwise."""
    if isinstance(inner_lr, str):
        return 0.01 if head in names.PROTOTYPE_HEADS else 0.4
    return float(inner_lr)


def resolve_config(params, algorithm, meta_model, device, loss=F.cross_entropy):
    """Resolve an estimator's settings into a :class:`MetaConfig`.

    Parameters
    ----------
    params : dict
        The estimator's ``get_params()`` (validated); ``transductive``,
        ``statistics_gradient`` and ``task_batching`` default to False,
        ``"auto"`` and ``"loop"`` where absent.
    algorithm : MetaAlgorithm
        The rule instance named by ``params["algorithm"]``.
    meta_model : MetaModel
        The freshly built meta-model (its backbone decides ``"auto"`` options).
    device : torch.device
        The resolved device.
    loss : callable, default=torch.nn.functional.cross_entropy
        The task loss.

    Returns
    -------
    config : MetaConfig
    """
    rule = algorithm.resolve(meta_model)
    precision = resolve_precision(params["precision"], device)
    return MetaConfig(
        algorithm=rule,
        inner_lr=resolve_inner_lr(params["inner_lr"], meta_model.head),
        n_inner_steps=int(params["n_inner_steps"]),
        n_inner_steps_test=int(params["n_inner_steps_test"]),
        transductive=bool(params.get("transductive", False)),
        statistics_gradient=(None if params.get("statistics_gradient", "auto") == "auto"
                             else bool(params["statistics_gradient"])),
        device=device,
        precision=precision,
        task_batching=resolve_task_batching(params.get("task_batching", "loop"), rule,
                                            meta_model, device, precision, loss),
        loss=loss,
    )
