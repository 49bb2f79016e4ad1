"""The algorithm registry: names, instances, errors, and a rule added from
outside the package (one class plus one registry line)."""

import numpy as np
import pytest
import torch

from fomaml_sklearn import FOMAMLClassifier, algorithms
from fomaml_sklearn.algorithms import (
    ANIL,
    FOMAML,
    MetaAlgorithm,
    TaskResult,
    available_algorithms,
    get_algorithm,
    register_algorithm,
)

from conftest import make_subspace_classes


class NoInnerStep(MetaAlgorithm):
    """A toy rule from outside the package: no adaptation at all. The
    meta-gradient is the query loss gradient at theta, with the head built
    at theta and treated as a constant."""

    def task_meta_gradient(self, runner, x_support, y_support, x_query, y_query, n_classes):
        head, _ = runner.start(x_support, y_support, n_classes)
        logits = runner.query_logits(x_query, head)
        loss = runner.loss_fn(logits, y_query)
        g = torch.autograd.grad(loss, runner.params + head)
        grads = runner.meta_gradients(g, n_classes)
        return TaskResult(grads, loss.detach(), (logits.argmax(1) == y_query).sum())

    def adapt(self, runner, x_support, y_support, n_classes):
        return runner.start(x_support, y_support, n_classes)[0]


@pytest.fixture
def clean_registry(monkeypatch):
    monkeypatch.setattr(algorithms, "_REGISTERED", {})


def test_a_rule_registered_from_outside_runs_through_the_estimator(clean_registry):
    register_algorithm("no-inner-step", NoInnerStep)
    assert "no-inner-step" in available_algorithms()
    X, y = make_subspace_classes(n_classes=30, n_per_class=12, noise=1.0, random_state=0)
    train = y < 20
    params = dict(n_ways=5, n_query=5, max_epochs=3, meta_batches_per_epoch=100,
                  n_eval_episodes=50, device="cpu", precision="float32", random_state=0)
    toy = FOMAMLClassifier(algorithm="no-inner-step", **params).fit(X[train], y[train])
    assert isinstance(toy.algorithm_, NoInnerStep)
    # The same update as FOMAML with no inner step and constant prototypes.
    same = FOMAMLClassifier(algorithm=FOMAML(prototype_gradient=False), n_inner_steps=0,
                            n_inner_steps_test=0, **params).fit(X[train], y[train])
    for a, b in zip(toy.meta_model_.parameters(), same.meta_model_.parameters()):
        torch.testing.assert_close(a, b)
    support = np.concatenate([np.flatnonzero(y == c)[:2] for c in (20, 21, 22)])
    toy.adapt(X[support], y[support])
    assert set(toy.predict(X[~train])) <= {20, 21, 22}
    np.testing.assert_allclose(toy.predict_proba(X[:5]).sum(1), 1, rtol=1e-6)
    score = toy.score(X[~train], y[~train])
    assert score == pytest.approx(same.score(X[~train], y[~train]))
    untrained = FOMAMLClassifier(algorithm="no-inner-step", **{**params, "max_epochs": 0})
    assert score > untrained.fit(X[train], y[train]).score(X[~train], y[~train]) + 0.1


def test_names_resolve_to_instances_with_their_options():
    assert get_algorithm("fo-anil").get_params() == {"first_order": True}
    assert get_algorithm("anil").get_params() == {"first_order": False}
    rule = ANIL(first_order=True)
    assert get_algorithm(rule) is rule
    assert set(available_algorithms()) >= {"fomaml", "maml", "reptile", "anil", "fo-anil",
                                           "imaml", "metasgd"}


def test_unknown_names_and_objects_are_clear_errors(clean_registry):
    with pytest.raises(ValueError, match="algorithm='imal' is not supported.*'imaml'"):
        get_algorithm("imal")
    with pytest.raises(TypeError, match="algorithm must be a name in .* got 3 of type int"):
        get_algorithm(3)
    with pytest.raises(ValueError, match="'fomaml' is already registered"):
        register_algorithm("fomaml", NoInnerStep)
    with pytest.raises(TypeError, match="MetaAlgorithm subclass"):
        register_algorithm("mine", object)


def test_fitting_does_not_change_the_given_instance():
    X, y = make_subspace_classes(n_classes=12, n_per_class=8, noise=1.0, random_state=0)
    rule = FOMAML()
    clf = FOMAMLClassifier(algorithm=rule, n_ways=3, max_epochs=1, meta_batches_per_epoch=2,
                           device="cpu").fit(X, y)
    assert rule.prototype_gradient == "auto"  # the parameter is untouched
    assert clf.algorithm_ is not rule and clf.algorithm_.prototype_gradient is False


def test_importing_the_registry_does_not_import_torch():
    import subprocess
    import sys

    code = ("import sys; from fomaml_sklearn.algorithms import available_algorithms\n"
            "names = available_algorithms()\n"
            "print('torch' in sys.modules, ','.join(names))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, check=True).stdout.split()
    assert out[0] == "False"
    assert set(out[1].split(",")) == {"fomaml", "maml", "reptile", "anil", "fo-anil", "imaml",
                                      "metasgd"}
