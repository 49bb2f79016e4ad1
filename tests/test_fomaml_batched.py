"""FOMAML's batched path (all tasks at once, torch.func.vmap over the
backbone's own forward) equals the per-task loop."""

import numpy as np
import pytest
import torch

from fomaml_sklearn._config import resolve_task_batching
from fomaml_sklearn.algorithms import FOMAML, MAML, MetaBatch, Reptile, meta_gradient
from fomaml_sklearn.backbones import Conv4Backbone, MLPBackbone
from fomaml_sklearn.episodes import EpisodeSampler, EpisodeShape
from fomaml_sklearn.heads import MetaModel

# In float64: the two paths then agree to ~1e-13. In float32 the inner steps
# amplify rounding differences of the grouped kernels to ~1e-4 of the largest
# gradient entry, which says nothing about correctness.
DTYPE = torch.float64


def _batch(n_features, shape, n_tasks, seed=0):
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(8), 6)
    X = torch.as_tensor(rng.normal(size=(len(y), n_features)), dtype=DTYPE)
    episodes = EpisodeSampler(y, shape, rng).sample(n_tasks)
    return MetaBatch(X, episodes, X.device)


def _model(kind, head, ways):
    torch.manual_seed(0)
    if kind == "conv4":
        backbone, n_features = Conv4Backbone((1, 12, 12), n_filters=6), 144
    else:
        backbone, n_features = MLPBackbone(20, (16, 12)), 20
    return MetaModel(backbone.to(DTYPE), n_features, head=head, n_rows=ways), n_features


@pytest.mark.parametrize("kind", ["conv4", "mlp"])
@pytest.mark.parametrize("head", ["prototype", "cosine", "shared", "fixed"])
@pytest.mark.parametrize("n_steps, transductive", [(0, False), (1, False), (3, False),
                                                   (2, True)])
def test_grouped_meta_gradient_equals_the_task_loop(kind, head, n_steps, transductive):
    shape = EpisodeShape(3, 2, 3)
    meta, n_features = _model(kind, head, shape.n_ways)
    batch = _batch(n_features, shape, n_tasks=5)
    before = {k: v.clone() for k, v in meta.state_dict().items()}
    settings = dict(inner_lr=0.3, n_inner_steps=n_steps, transductive=transductive)
    ref, ref_loss, ref_acc = meta_gradient(meta, batch, 3, **settings)
    got, loss, acc = meta_gradient(meta, batch, 3, batched=True, **settings)
    assert len(got) == len(ref) == len(list(meta.parameters()))
    for (name, _), a, b in zip(meta.named_parameters(), got, ref):
        assert a.shape == b.shape, name
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11, msg=name)
    assert loss == pytest.approx(ref_loss, rel=1e-9)
    assert acc == pytest.approx(ref_acc)
    for k, v in meta.state_dict().items():  # theta is not modified
        assert torch.equal(v, before[k]), k


@pytest.mark.parametrize("kind", ["conv4", "mlp"])
def test_grouped_equals_the_loop_with_prototypes_as_constants(kind):
    shape = EpisodeShape(3, 2, 3)
    meta, n_features = _model(kind, "prototype", shape.n_ways)
    batch = _batch(n_features, shape, n_tasks=4)
    constant = FOMAML(prototype_gradient=False)
    ref = meta_gradient(meta, batch, 3, constant, inner_lr=0.3).grads
    got = meta_gradient(meta, batch, 3, constant, inner_lr=0.3, batched=True).grads
    through = meta_gradient(meta, batch, 3, FOMAML(prototype_gradient=True), inner_lr=0.3,
                            batched=True).grads
    for (name, _), a, b in zip(meta.named_parameters(), got, ref):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11, msg=name)
    assert any(not torch.allclose(a, b) for a, b in zip(got, through))


def test_grouped_path_is_for_fomaml_on_built_in_backbones():
    meta, _ = _model("conv4", "prototype", 3)
    assert FOMAML().supports_batched(meta)
    assert not MAML().supports_batched(meta)
    custom = MetaModel(torch.nn.Sequential(torch.nn.Linear(4, 3)), 4)
    assert not FOMAML().supports_batched(custom)


def test_task_batching_auto_groups_on_gpu_only_where_supported():
    meta, _ = _model("conv4", "prototype", 3)
    custom = MetaModel(torch.nn.Sequential(torch.nn.Linear(4, 3)), 4)
    # torch.device("cuda") needs no GPU: only the device type is read.
    assert resolve_task_batching("auto", FOMAML(), meta, "cpu") == "threads"
    assert resolve_task_batching("auto", FOMAML(), meta, "cuda") == "grouped"
    assert resolve_task_batching("auto", MAML(), meta, "cuda") == "loop"
    assert resolve_task_batching("auto", FOMAML(), custom, "cuda:0") == "loop"
    assert resolve_task_batching("loop", FOMAML(), meta, "cuda") == "loop"
    assert resolve_task_batching("grouped", FOMAML(), meta, "cpu") == "grouped"
    with pytest.raises(ValueError, match="got algorithm=Reptile and a Conv4Backbone"):
        resolve_task_batching("grouped", Reptile(), meta, "cpu")


def test_estimator_trains_identically_with_grouped_and_looped_tasks():
    from sklearn.datasets import load_digits

    from fomaml_sklearn import FOMAMLClassifier

    X, y = load_digits(return_X_y=True)
    X = (X / 16).astype("float32")
    params = dict(n_ways=3, n_query=4, max_epochs=2, meta_batches_per_epoch=4,
                  meta_batch_size=3, device="cpu", precision="float32", random_state=0)
    grouped = FOMAMLClassifier(task_batching="grouped", **params).fit(X[y < 6], y[y < 6])
    loop = FOMAMLClassifier(task_batching="loop", **params).fit(X[y < 6], y[y < 6])
    auto = FOMAMLClassifier(**params).fit(X[y < 6], y[y < 6])
    # On a CPU "auto" runs the tasks on threads (the batched path was
    # measured slower there except with 1 query).
    assert (grouped.task_batching_, loop.task_batching_, auto.task_batching_) == (
        "grouped", "loop", "threads")
    for (name, a), b in zip(grouped.meta_model_.named_parameters(),
                            loop.meta_model_.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=name)


def test_grouped_request_that_cannot_run_is_a_clear_error():
    from sklearn.datasets import load_digits

    from fomaml_sklearn import FOMAMLClassifier

    X, y = load_digits(return_X_y=True)
    clf = FOMAMLClassifier(algorithm="maml", task_batching="grouped", max_epochs=1,
                           meta_batches_per_epoch=1, device="cpu")
    with pytest.raises(ValueError, match="task_batching='grouped' needs a rule with a batched"):
        clf.fit(X[y < 4], y[y < 4])
    assert FOMAMLClassifier(algorithm="maml", max_epochs=1, meta_batches_per_epoch=1,
                            device="cpu").fit(X[y < 4], y[y < 4]).task_batching_ == "threads"
    with pytest.raises(ValueError, match="task_batching must be one of .*; got 'vmap'"):
        FOMAMLClassifier(task_batching="vmap").fit(X[y < 4], y[y < 4])
