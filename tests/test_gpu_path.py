"""The path that device="auto" and task_batching="auto" take on a CUDA GPU,
run where the tests run (the CPU here; also CUDA where present).

On CUDA, "auto" resolves to FOMAML's batched path (all tasks of a
meta-batch at once, torch.func.vmap over the backbone) for the rules that
have one, in float32. No machine of the project has a GPU, so these tests
run that same code on the CPU, check its meta-gradient against the per-task
loop, and check that a meta-step makes no host-device synchronisation
beyond the one documented: the mean loss and the accuracy, read together
once per meta-step for skorch's history (``MetaGradient.loss`` and
``.accuracy`` are host floats).
"""

import warnings

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from fomaml_sklearn._config import resolve_task_batching
from fomaml_sklearn._training import MetaBatch
from fomaml_sklearn.algorithms import FOMAML, available_algorithms, get_algorithm, meta_gradient
from fomaml_sklearn.backbones import Conv4Backbone, MLPBackbone, SupportBatchNorm
from fomaml_sklearn.episodes import EpisodeSampler, EpisodeShape
from fomaml_sklearn.heads import MetaModel

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
SHAPE = EpisodeShape(3, 2, 3)


def _model(kind, head, dtype, device):
    with torch.random.fork_rng(devices=[]):  # torch's initialisation, seeded here only
        torch.manual_seed(0)
        if kind == "conv4":
            backbone, n_features = Conv4Backbone((1, 12, 12), n_filters=6), 144
        else:
            backbone, n_features = MLPBackbone(20, (16, 12)), 20
        meta = MetaModel(backbone, n_features, head=head, n_rows=SHAPE.n_ways)
    return meta.to(device=device, dtype=dtype), n_features


def _batch(n_features, dtype, device, n_tasks=4, seed=0):
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(8), 6)
    X = torch.as_tensor(rng.normal(size=(len(y), n_features)), dtype=dtype, device=device)
    return MetaBatch(X, EpisodeSampler(y, SHAPE, rng).sample(n_tasks), X.device)


def _served(meta):
    """The built-in rules that "auto" runs batched on CUDA for this model."""
    return [name for name in available_algorithms()
            if resolve_task_batching("auto", get_algorithm(name).resolve(meta), meta,
                                     "cuda", precision="float32") == "grouped"]


@pytest.mark.parametrize("kind", ["conv4", "mlp"])
def test_auto_on_cuda_is_batched_exactly_where_a_rule_has_a_batched_path(kind):
    meta, _ = _model(kind, "prototype", torch.float32, "cpu")
    served = _served(meta)
    assert "fomaml" in served
    for name in available_algorithms():
        rule = get_algorithm(name).resolve(meta)
        on_cuda = resolve_task_batching("auto", rule, meta, "cuda", precision="float32")
        assert (on_cuda == "grouped") == rule.supports_batched(meta), name
        # bfloat16 ("auto" precision on GPUs with native bf16) keeps the loop:
        # autocast does not reach into vmap.
        assert resolve_task_batching("auto", rule, meta, "cuda", precision="bfloat16") == "loop"
        # On the CPU: the tasks on threads where the rule allows it.
        assert resolve_task_batching("auto", rule, meta, "cpu", precision="float32") == (
            "threads" if rule.concurrent_tasks else "loop"), name


# Tolerances, per tensor, of its largest entry (floored at 1e-3 of the
# largest entry of the whole meta-gradient): in float64 the batched path and
# the loop agree to ~1e-13, so 1e-9 catches any real difference. In float32
# (what CUDA runs) they differ by rounding only: within 1e-3, as
# benchmarks/throughput.py checks; the 12x12 images here have no near-tied
# max-pool windows at this seed, which could flip an argmax.
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", ["conv4", "mlp"])
@pytest.mark.parametrize("head, prototype_gradient",
                         [("prototype", True), ("prototype", False), ("shared", "auto"),
                          ("fixed", "auto")])
@pytest.mark.parametrize("n_steps, transductive", [(0, False), (2, False), (1, True)])
def test_the_cuda_auto_path_has_the_loops_meta_gradient(
        device, kind, head, prototype_gradient, n_steps, transductive):
    for dtype, rtol, floor in ((torch.float64, 1e-9, 1e-6), (torch.float32, 1e-3, 1e-4)):
        meta, n_features = _model(kind, head, dtype, device)
        batch = _batch(n_features, dtype, device)
        settings = dict(inner_lr=0.3, n_inner_steps=n_steps, transductive=transductive,
                        precision="float32")
        for name in _served(meta):
            rule = get_algorithm(name)
            if "prototype_gradient" in rule.get_params():
                rule.set_params(prototype_gradient=prototype_gradient)
            ref = meta_gradient(meta, batch, SHAPE.n_ways, rule, **settings)
            got = meta_gradient(meta, batch, SHAPE.n_ways, rule, batched=True, **settings)
            top = max(float(b.abs().max()) for b in ref.grads)
            for (pname, _), a, b in zip(meta.named_parameters(), got.grads, ref.grads):
                assert a.device.type == b.device.type == torch.device(device).type
                # Some tensors' meta-gradient is zero in exact arithmetic (a
                # bias before BatchNorm, the shared head's rows), so their
                # scale has a floor of 1e-3 of the largest entry overall (and
                # ``floor``: with the shared head and 0 steps all of it is 0).
                scale = max(float(b.abs().max()), 1e-3 * top, floor)
                err = float((a - b).abs().max() / scale)
                assert err <= rtol, f"{name} {pname} {dtype}: {err:.2e}"
            assert got.loss == pytest.approx(ref.loss, rel=rtol)
            assert got.accuracy == pytest.approx(ref.accuracy)


@pytest.mark.parametrize("device", DEVICES)
def test_fit_on_the_batched_path_trains_as_the_loop(device):
    from sklearn.datasets import load_digits

    from fomaml_sklearn import FOMAMLClassifier

    X, y = load_digits(return_X_y=True)
    keep = y < 6
    X, y = (X[keep] / 16).astype(np.float32), y[keep]
    params = dict(n_ways=3, n_query=4, max_epochs=1, meta_batches_per_epoch=3,
                  meta_batch_size=3, device=device, precision="float32", random_state=0)
    grouped = FOMAMLClassifier(task_batching="grouped", **params).fit(X, y)
    loop = FOMAMLClassifier(task_batching="loop", **params).fit(X, y)
    assert grouped.task_batching_ == "grouped"
    # A bias just before a BatchNorm layer has no effect on any output, and
    # its meta-gradient is 0 up to rounding, which Adam scales up to steps
    # of its own: the two paths round differently there, so it is left out.
    layers = grouped.meta_model_.backbone.layers
    before_norm = {f"backbone.layers.{i}.bias" for i in range(len(layers) - 1)
                   if isinstance(layers[i + 1], SupportBatchNorm)}
    assert before_norm
    for (name, a), b in zip(grouped.meta_model_.named_parameters(),
                            loop.meta_model_.parameters()):
        if name not in before_norm:
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=name)
    np.testing.assert_array_equal(grouped.predict(X[:20]), loop.predict(X[:20]))


# --------------------------------------------------- host-device synchronisation
#: Operators that make the host wait for the device: reading a value
#: (``.item()``, ``bool(t)``, ``float(t)`` all reach _local_scalar_dense) or
#: producing a shape that depends on the values.
SYNC_OPS = frozenset({
    "_local_scalar_dense", "is_nonzero", "equal", "allclose", "nonzero", "nonzero_static",
    "masked_select", "unique", "_unique", "_unique2", "unique_dim", "unique_consecutive",
    "bincount", "histc", "repeat_interleave", "_assert_async",
})


class CountSyncs(TorchDispatchMode):
    """Counts the operators of SYNC_OPS, copies to the host and ``.tolist()``/
    ``.numpy()`` calls (which read memory without an operator)."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func._overloadpacket.__name__
        if name in SYNC_OPS:
            self.calls.append(name)
        elif name in ("index", "index_put", "index_put_") and any(
                i is not None and i.dtype in (torch.bool, torch.uint8) for i in args[1]):
            self.calls.append(name + " with a mask")  # nonzero inside, on a GPU
        elif name in ("_to_copy", "copy_") and self._to_host(func, args, kwargs):
            self.calls.append(name + " to the host")
        return func(*args, **kwargs)

    @staticmethod
    def _to_host(func, args, kwargs):
        src = args[1] if func._overloadpacket.__name__ == "copy_" else args[0]
        dst = (args[0].device if func._overloadpacket.__name__ == "copy_"
               else kwargs.get("device", src.device))
        return src.device.type != "cpu" and torch.device(dst).type == "cpu"

    def __enter__(self):
        self._patched = {}
        for method in ("tolist", "numpy"):
            original = getattr(torch.Tensor, method)
            self._patched[method] = original

            def counting(tensor, *a, _method=method, _original=original, **k):
                self.calls.append(_method)
                return _original(tensor, *a, **k)

            setattr(torch.Tensor, method, counting)
        return super().__enter__()

    def __exit__(self, *exc):
        for method, original in self._patched.items():
            setattr(torch.Tensor, method, original)
        return super().__exit__(*exc)


def test_the_counter_sees_the_ways_a_value_reaches_the_host():
    x = torch.ones(3)
    with CountSyncs() as counter:
        x.sum().item()
        bool(x.sum() > 0)
        float(x.max())
        x.tolist()
        x[x > 0]  # a shape that depends on the values
        x * 2 + 1  # no sync
    assert len(counter.calls) == 5, counter.calls


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", ["conv4", "mlp"])
@pytest.mark.parametrize("head, prototype_gradient",
                         [("prototype", True), ("prototype", False), ("fixed", "auto"),
                          ("shared", "auto")])
@pytest.mark.parametrize("n_steps, transductive", [(0, False), (3, False), (1, True)])
def test_a_batched_meta_step_reads_one_value_from_the_device(
        device, kind, head, prototype_gradient, n_steps, transductive):
    meta, n_features = _model(kind, head, torch.float32, device)
    batch = _batch(n_features, torch.float32, device)
    rule = FOMAML(prototype_gradient=prototype_gradient)
    settings = dict(inner_lr=0.3, n_inner_steps=n_steps, transductive=transductive,
                    precision="float32")
    meta_gradient(meta, batch, SHAPE.n_ways, rule, batched=True, **settings)  # warm-up
    with CountSyncs() as counter:
        result = meta_gradient(meta, batch, SHAPE.n_ways, rule, batched=True, **settings)
    # The one documented read: loss and accuracy together, as host floats.
    assert counter.calls == ["tolist"], counter.calls
    assert isinstance(result.loss, float) and isinstance(result.accuracy, float)
    if device == "cuda":
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                meta_gradient(meta, batch, SHAPE.n_ways, rule, batched=True, **settings)
            finally:
                torch.cuda.set_sync_debug_mode("default")
        syncs = [w for w in caught if "synchroniz" in str(w.message)]
        assert len(syncs) == 1, [str(w.message) for w in syncs]


# ------------------------------------------------------- benchmarks/gpu_check.py
@pytest.fixture
def gpu_check(monkeypatch):
    import importlib.util
    import pathlib

    bench = pathlib.Path(__file__).resolve().parents[1] / "benchmarks"
    monkeypatch.syspath_prepend(str(bench))
    spec = importlib.util.spec_from_file_location("gpu_check_bench", bench / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gpu_check_smoke_runs_on_the_cpu(gpu_check, capsys):
    assert gpu_check.main(["--device", "cpu", "--quick", "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    assert "MISMATCH" not in out and "the batched path agrees with the loop" in out
    assert "tasks/s (precision_=" in out


def test_gpu_check_exits_1_when_the_batched_path_differs(gpu_check, monkeypatch, capsys):
    real = gpu_check.meta_gradient

    def off_by_a_little(*args, batched=False, **kwargs):
        result = real(*args, batched=batched, **kwargs)
        if batched:
            result.grads[0] = result.grads[0] * 1.001
        return result

    monkeypatch.setattr(gpu_check, "meta_gradient", off_by_a_little)
    monkeypatch.setattr(gpu_check, "throughput", lambda *a: None)
    monkeypatch.setattr(gpu_check, "fit_rate", lambda *a: None)
    assert gpu_check.main(["--device", "cpu", "--quick"]) == 1
    assert "MISMATCH between the batched path and the loop" in capsys.readouterr().out


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_gpu_check_without_cuda_says_so_and_exits_0(gpu_check, capsys):
    assert gpu_check.main([]) == 0
    assert "CUDA is not available on this machine" in capsys.readouterr().out
