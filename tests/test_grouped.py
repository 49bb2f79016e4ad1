"""The grouped (all tasks at once) FOMAML path equals the per-task loop."""

import numpy as np
import pytest
import torch

from fomaml_sklearn._training import MetaBatch
from fomaml_sklearn.backbones import Conv4Backbone, MLPBackbone
from fomaml_sklearn.episodes import EpisodeSampler, EpisodeShape
from fomaml_sklearn.grouped import (
    grouped_meta_gradient,
    resolve_task_batching,
    supports_grouped,
)
from fomaml_sklearn.learner import MetaModel, TaskRunner, meta_gradient


def _batch(n_features, shape, n_tasks, seed=0):
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(8), 6)
    X = torch.as_tensor(rng.normal(size=(len(y), n_features)), dtype=torch.float32)
    episodes = EpisodeSampler(y, shape, rng).sample(n_tasks)
    return MetaBatch(X, episodes, X.device)


def _model(kind, head, ways):
    torch.manual_seed(0)
    if kind == "conv4":
        backbone, n_features = Conv4Backbone((1, 12, 12), n_filters=6), 144
    else:
        backbone, n_features = MLPBackbone(20, (16, 12)), 20
    return MetaModel(backbone, n_features, head=head, n_rows=ways), n_features


@pytest.mark.parametrize("kind", ["conv4", "mlp"])
@pytest.mark.parametrize("head", ["prototype", "shared", "fixed"])
@pytest.mark.parametrize("n_steps, transductive", [(0, False), (1, False), (3, False),
                                                   (2, True)])
def test_grouped_meta_gradient_equals_the_task_loop(kind, head, n_steps, transductive):
    shape = EpisodeShape(3, 2, 3)
    meta, n_features = _model(kind, head, shape.n_ways)
    batch = _batch(n_features, shape, n_tasks=5)
    before = {k: v.clone() for k, v in meta.state_dict().items()}
    ref, ref_loss, ref_acc = meta_gradient(TaskRunner(meta), batch, 3, 0.3, n_steps,
                                           transductive)
    got, loss, acc = grouped_meta_gradient(meta, batch, 3, 0.3, n_steps, transductive)
    assert len(got) == len(ref) == len(list(meta.parameters()))
    for (name, _), a, b in zip(meta.named_parameters(), got, ref):
        assert a.shape == b.shape, name
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=name)
    assert loss == pytest.approx(ref_loss, rel=1e-5)
    assert acc == pytest.approx(ref_acc)
    for k, v in meta.state_dict().items():  # theta is not modified
        assert torch.equal(v, before[k]), k


@pytest.mark.parametrize("kind", ["conv4", "mlp"])
def test_grouped_equals_the_loop_with_prototypes_as_constants(kind):
    shape = EpisodeShape(3, 2, 3)
    meta, n_features = _model(kind, "prototype", shape.n_ways)
    batch = _batch(n_features, shape, n_tasks=4)
    ref = meta_gradient(TaskRunner(meta, prototype_gradient=False), batch, 3, 0.3, 1)[0]
    got = grouped_meta_gradient(meta, batch, 3, 0.3, 1, prototype_gradient=False)[0]
    through = grouped_meta_gradient(meta, batch, 3, 0.3, 1)[0]
    for (name, _), a, b in zip(meta.named_parameters(), got, ref):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=name)
    assert any(not torch.allclose(a, b) for a, b in zip(got, through))


def test_grouped_path_is_for_fomaml_on_built_in_backbones():
    meta, _ = _model("conv4", "prototype", 3)
    assert supports_grouped(meta, "fomaml")
    assert not supports_grouped(meta, "maml")
    custom = MetaModel(torch.nn.Sequential(torch.nn.Linear(4, 3)), 4)
    assert not supports_grouped(custom, "fomaml")


def test_task_batching_auto_groups_on_gpu_only_where_supported():
    meta, _ = _model("conv4", "prototype", 3)
    custom = MetaModel(torch.nn.Sequential(torch.nn.Linear(4, 3)), 4)
    # torch.device("cuda") needs no GPU: only the device type is read.
    assert resolve_task_batching("auto", meta, "fomaml", "cpu") == "loop"
    assert resolve_task_batching("auto", meta, "fomaml", "cuda") == "grouped"
    assert resolve_task_batching("auto", meta, "maml", "cuda") == "loop"
    assert resolve_task_batching("auto", custom, "fomaml", "cuda:0") == "loop"
    assert resolve_task_batching("loop", meta, "fomaml", "cuda") == "loop"
    assert resolve_task_batching("grouped", meta, "fomaml", "cpu") == "grouped"
    with pytest.raises(ValueError, match="got algorithm='reptile' and a Conv4Backbone"):
        resolve_task_batching("grouped", meta, "reptile", "cpu")


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
    # On a CPU "auto" takes the loop (measured faster there except with 1 query).
    assert (grouped.task_batching_, loop.task_batching_, auto.task_batching_) == (
        "grouped", "loop", "loop")
    for (name, a), b in zip(grouped.meta_model_.named_parameters(),
                            loop.meta_model_.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=name)


def test_grouped_request_that_cannot_run_is_a_clear_error():
    from sklearn.datasets import load_digits

    from fomaml_sklearn import FOMAMLClassifier

    X, y = load_digits(return_X_y=True)
    clf = FOMAMLClassifier(algorithm="maml", task_batching="grouped", max_epochs=1,
                           meta_batches_per_epoch=1, device="cpu")
    with pytest.raises(ValueError, match="task_batching='grouped' runs algorithm='fomaml'"):
        clf.fit(X[y < 4], y[y < 4])
    assert FOMAMLClassifier(algorithm="maml", max_epochs=1, meta_batches_per_epoch=1,
                            device="cpu").fit(X[y < 4], y[y < 4]).task_batching_ == "loop"
    with pytest.raises(ValueError, match="task_batching='vmap' is not supported"):
        FOMAMLClassifier(task_batching="vmap").fit(X[y < 4], y[y < 4])
