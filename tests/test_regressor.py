"""FOMAMLRegressor: few-shot regression on the classifier's machinery."""

import pickle
import warnings

import numpy as np
import pytest
import sklearn
import torch
from sklearn.model_selection import GridSearchCV, GroupKFold, cross_validate
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import parametrize_with_checks
from torch.nn import functional as F

from fomaml_sklearn import FOMAMLClassifier, FOMAMLRegressor
from fomaml_sklearn.algorithms import available_algorithms, meta_gradient
from fomaml_sklearn.backbones import MLPBackbone
from fomaml_sklearn.datasets import make_sinusoid_tasks
from fomaml_sklearn.heads import MetaModel

FAST = dict(max_epochs=2, meta_batches_per_epoch=5, n_eval_episodes=5, device="cpu",
            random_state=0)
NO_GROUPS = "got no groups"


@pytest.fixture(scope="module")
def waves():
    X, y, groups = make_sinusoid_tasks(n_tasks=300, n_points=20, random_state=0)
    X_new, y_new, groups_new = make_sinusoid_tasks(n_tasks=100, n_points=20, random_state=1)
    return X, y, groups, X_new, y_new, groups_new


# ------------------------------------------------------ scikit-learn checks
# 20 meta-steps at lr 1e-2: enough to fit the checks' one task (R^2 > 0.5
# in check_regressors_train, which the default lr needs more steps for).
@parametrize_with_checks([FOMAMLRegressor(**dict(FAST, meta_batches_per_epoch=10, lr=1e-2))],
                         expected_failed_checks=lambda est: {})
def test_sklearn_compatible_estimator(estimator, check):
    with warnings.catch_warnings():
        # The checks call fit without groups (one task, a warning) on tiny
        # data sets (smaller episodes, a warning).
        warnings.filterwarnings("ignore", message=".*" + NO_GROUPS)
        warnings.filterwarnings("ignore", message="The data allows smaller episodes")
        check(estimator)


# ------------------------------------------------------------- data sets
def test_make_sinusoid_tasks_follows_the_maml_distribution():
    X, y, groups, params = make_sinusoid_tasks(n_tasks=500, n_points=7, return_params=True,
                                               random_state=3)
    assert X.shape == (3500, 1) and y.shape == (3500,) and X.dtype == np.float32
    np.testing.assert_array_equal(groups, np.repeat(np.arange(500), 7))
    assert -5 <= X.min() and X.max() <= 5
    assert 0.1 <= params["amplitude"].min() and params["amplitude"].max() <= 5
    assert 0 <= params["phase"].min() and params["phase"].max() <= np.pi
    expected = params["amplitude"][groups] * np.sin(X[:, 0] - params["phase"][groups])
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)
    again = make_sinusoid_tasks(n_tasks=500, n_points=7, random_state=3)
    np.testing.assert_array_equal(again[1], y)
    state = np.random.get_state()[1].copy()
    make_sinusoid_tasks(n_tasks=2, random_state=0)
    np.testing.assert_array_equal(np.random.get_state()[1], state)
    with pytest.raises(ValueError, match="n_points must be a positive int; got 0"):
        make_sinusoid_tasks(n_points=0)
    with pytest.raises(ValueError, match="amplitude_range must be"):
        make_sinusoid_tasks(amplitude_range=(5, 1))


# ---------------------------------------------------- meta-gradients
def _reference_meta_gradient(meta, tasks, alpha, steps, second_order):
    """An independent functional MLP (Linear-ReLU layers, a linear output):
    ``steps`` SGD steps on the support MSE, then the query MSE's gradient at
    the adapted weights (FOMAML), or through the steps to theta (MAML)."""
    linears = [m for m in meta.backbone.modules() if isinstance(m, torch.nn.Linear)]
    theta = [t for m in linears for t in (m.weight, m.bias)] + [meta.head_weight,
                                                                  meta.head_bias]
    theta = [t.detach().clone().requires_grad_(True) for t in theta]

    def forward(params, x):
        h = x
        for i in range(0, len(params) - 2, 2):
            h = torch.relu(h @ params[i].T + params[i + 1])
        return h @ params[-2].T + params[-1]

    total = [torch.zeros_like(t) for t in theta]
    for xs, ys, xq, yq in tasks:
        phi = theta if second_order else [t.detach().clone().requires_grad_(True)
                                          for t in theta]
        for _ in range(steps):
            grads = torch.autograd.grad(((forward(phi, xs) - ys) ** 2).mean(), phi,
                                        create_graph=second_order)
            phi = [p - alpha * g for p, g in zip(phi, grads)]
        query = ((forward(phi, xq) - yq) ** 2).mean()
        grads = torch.autograd.grad(query, theta if second_order else phi)
        total = [t + g for t, g in zip(total, grads)]
    return [t / len(tasks) for t in total]


@pytest.mark.parametrize("algorithm,second_order", [("fomaml", False), ("maml", True)])
@pytest.mark.parametrize("steps", [1, 3])
@pytest.mark.parametrize("n_outputs", [1, 2])
def test_regression_meta_gradient_matches_an_independent_reference(algorithm, second_order,
                                                                   steps, n_outputs):
    torch.manual_seed(0)
    meta = MetaModel(MLPBackbone(3, (8, 6), batch_norm=False), 3, head="fixed",
                     n_rows=n_outputs).double()
    tasks = [(torch.randn(5, 3, dtype=torch.float64), torch.randn(5, n_outputs,
              dtype=torch.float64), torch.randn(7, 3, dtype=torch.float64),
              torch.randn(7, n_outputs, dtype=torch.float64)) for _ in range(3)]
    result = meta_gradient(meta, tasks, n_outputs, algorithm, inner_lr=0.1,
                           n_inner_steps=steps, loss=F.mse_loss)
    expected = _reference_meta_gradient(meta, tasks, 0.1, steps, second_order)
    # The package orders the meta-parameters as meta.parameters(): head first.
    order = [name for name, _ in meta.named_parameters()]
    got = dict(zip(order, result.grads))
    names = [f"backbone.{n}" for n, _ in meta.backbone.named_parameters()]
    for name, want in zip(names + ["head_weight", "head_bias"], expected):
        torch.testing.assert_close(got[name], want, rtol=1e-9, atol=1e-11)
    assert np.isnan(result.accuracy) and result.loss > 0


# ----------------------------------------------------------- estimator API
def test_fit_adapt_predict_multi_output_and_errors(waves):
    X, y, groups, X_new, y_new, _ = waves
    Y = np.stack([y, -2 * y], axis=1)
    reg = FOMAMLRegressor(**FAST).fit(X, Y, groups=groups)
    assert reg.n_outputs_ == 2 and reg.n_tasks_ == 300 and reg.episode_shape_.n_ways == 1
    assert reg.predict(X[:4]).shape == (4, 2)
    reg.adapt(X_new[:10], np.stack([y_new[:10], y_new[:10]], axis=1))
    assert reg.predict(X_new[10:20]).shape == (10, 2)
    with pytest.raises(ValueError, match="y has 1 output, but this FOMAMLRegressor was "
                                         "fitted with 2"):
        reg.adapt(X_new[:10], y_new[:10])
    with pytest.raises(ValueError, match="groups must be 1-D with one task label per "
                                         r"sample \(6000\)"):
        FOMAMLRegressor(**FAST).fit(X, y, groups=groups[:10])
    with pytest.raises(ValueError, match="group 7 has only 1 sample;"):
        FOMAMLRegressor(**FAST).fit(X[:141], y[:141], groups=groups[:141])
    single = FOMAMLRegressor(**FAST).fit(X, y, groups=groups)
    assert single.predict(X[:3]).shape == (3,)
    with pytest.raises(sklearn.exceptions.NotFittedError, match="call fit"):
        FOMAMLRegressor().adapt(X[:3], y[:3])


def test_fit_without_groups_warns_once_and_is_one_task(waves):
    X, y, *_ = waves
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        reg = FOMAMLRegressor(**FAST).fit(X[:40], y[:40])
    messages = [str(w.message) for w in record if NO_GROUPS in str(w.message)]
    assert len(messages) == 1 and "one task" in messages[0]
    assert reg.n_tasks_ == 1
    assert record[0].filename == __file__  # points at the user's fit call


def test_a_failed_fit_leaves_the_fitted_regressor_as_it_was(waves):
    X, y, groups, *_ = waves
    reg = FOMAMLRegressor(**FAST).fit(X, y, groups=groups)
    before = reg.predict(X[:20])
    state = {k: v for k, v in vars(reg).items() if k.endswith("_")}
    with pytest.raises(ValueError):
        reg.fit(X, y, groups=groups[:5])
    np.testing.assert_array_equal(reg.predict(X[:20]), before)
    assert {k: v for k, v in vars(reg).items() if k.endswith("_")}.keys() == state.keys()


def test_random_state_reproduces_without_touching_global_state(waves):
    X, y, groups, *_ = waves
    torch_state, np_state = torch.get_rng_state(), np.random.get_state()[1].copy()
    a = FOMAMLRegressor(**FAST).fit(X, y, groups=groups).predict(X[:30])
    b = FOMAMLRegressor(**FAST).fit(X, y, groups=groups).predict(X[:30])
    np.testing.assert_array_equal(a, b)
    assert torch.equal(torch.get_rng_state(), torch_state)
    np.testing.assert_array_equal(np.random.get_state()[1], np_state)


def test_evaluate_reports_mse_and_r2_per_episode(waves):
    X, y, groups, X_new, y_new, groups_new = waves
    reg = FOMAMLRegressor(**FAST).fit(X, y, groups=groups)
    result = reg.evaluate(X_new, y_new, groups_new, n_episodes=30)
    assert result.mses.shape == (30,) and result.r2s.shape == (30,)
    assert result.mse == pytest.approx(result.mses.mean())
    assert result.r2 == pytest.approx(result.r2s.mean()) and result.r2 < 1
    assert result.mse_ci95 > 0 and "MSE" in str(result)
    assert reg.score(X_new, y_new, groups_new) == reg.evaluate(X_new, y_new, groups_new).r2
    # The episodes are drawn within each group: an independent MSE of the
    # first episode from adapting on its support points.
    one = reg.evaluate(X_new, y_new, groups_new, n_episodes=1, random_state=4)
    single = reg.evaluate(X_new, y_new, groups_new, n_episodes=1, random_state=4)
    assert one.mse == single.mse
    with pytest.warns(UserWarning, match="k_shot=19, n_query=1"):
        assert np.isnan(reg.evaluate(X_new, y_new, groups_new, k_shot=19, n_query=5,
                                     n_episodes=2).r2)


def test_validation_on_held_out_tasks_records_valid_loss(waves):
    from skorch.callbacks import EarlyStopping

    X, y, groups, *_ = waves
    reg = FOMAMLRegressor(**dict(FAST, max_epochs=3), validation_fraction=0.2,
                          callbacks=[EarlyStopping(monitor="valid_loss", patience=5)])
    reg.fit(X, y, groups=groups)
    assert all("valid_loss" in row for row in reg.history_)
    assert "valid_acc" not in reg.history_[-1] and "train_query_acc" not in reg.history_[-1]
    assert reg.n_tasks_ == 240
    with pytest.raises(ValueError, match="monitors 'valid_loss'.*tasks \\(groups\\)"):
        FOMAMLRegressor(callbacks=[EarlyStopping(monitor="valid_loss")], **FAST).fit(
            X, y, groups=groups)


# ---------------------------------------------------- learning on sinusoids
def _sinusoid_mses(waves, seed, steps=1000):
    """Query MSE after 10 steps on 10 points of new waves: meta-trained,
    pretrained on all tasks pooled (no inner steps in training), random."""
    X, y, groups, X_new, y_new, groups_new = waves
    common = dict(lr=3e-3, max_epochs=steps // 100, meta_batches_per_epoch=100,
                  device="cpu", random_state=seed, adapt_on_fit=False)
    scores = {}
    for name, params in [("meta", {}), ("pretrained", dict(n_inner_steps=0)),
                         ("random", dict(max_epochs=0))]:
        reg = FOMAMLRegressor(**{**common, **params}).fit(X, y, groups=groups)
        scores[name] = reg.evaluate(X_new, y_new, groups_new, n_episodes=100,
                                    random_state=seed).mse
    return scores


@pytest.mark.parametrize("seed", [0, 1])
def test_meta_training_beats_pretraining_and_random_on_new_waves(waves, seed):
    scores = _sinusoid_mses(waves, seed)
    assert scores["meta"] < 0.6 * scores["pretrained"], scores
    assert scores["meta"] < 0.6 * scores["random"], scores


@pytest.mark.parametrize("algorithm", sorted(set(available_algorithms()) - {"fomaml"}))
def test_every_rule_learns_to_regress(waves, algorithm):
    """Each rule through the same units: adapting as in meta-training (the
    head-only rules at a larger inner rate), it beats the random
    initialisation on new waves."""
    X, y, groups, X_new, y_new, groups_new = waves
    steps = 5 if algorithm == "imaml" else 1
    common = dict(algorithm=algorithm, lr=3e-3, n_inner_steps=steps, n_inner_steps_test=steps,
                  inner_lr=0.1 if "anil" in algorithm else 0.01, max_epochs=3,
                  meta_batches_per_epoch=100, device="cpu", random_state=0,
                  adapt_on_fit=False)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="iMAML's conjugate gradient")
        meta = FOMAMLRegressor(**common).fit(X, y, groups=groups)
    random = FOMAMLRegressor(**dict(common, max_epochs=0)).fit(X, y, groups=groups)
    mse = meta.evaluate(X_new, y_new, groups_new, n_episodes=100).mse
    assert mse < 0.8 * random.evaluate(X_new, y_new, groups_new, n_episodes=100).mse


# ------------------------------------------------ pipelines and searches
def test_pipeline_group_cv_and_grid_search_route_groups(waves):
    X, y, groups, *_ = waves
    X, y, groups = X[:1200], y[:1200], groups[:1200]  # 60 waves
    with sklearn.config_context(enable_metadata_routing=True), warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*" + NO_GROUPS)
        reg = FOMAMLRegressor(**FAST).set_fit_request(groups=True).set_score_request(
            groups=True)
        pipe = make_pipeline(StandardScaler(), reg)
        cv = cross_validate(pipe, X, y, cv=GroupKFold(3), params={"groups": groups},
                            return_estimator=True)
        assert all(est[-1].n_tasks_ == 40 for est in cv["estimator"])
        assert np.isfinite(cv["test_score"]).all()
        search = GridSearchCV(pipe, {"fomamlregressor__inner_lr": [0.005, 0.01]},
                              cv=GroupKFold(3)).fit(X, y, groups=groups)
        assert search.best_estimator_[-1].n_tasks_ == 60
        assert np.isfinite(search.cv_results_["mean_test_score"]).all()


# ---------------------------------------------------------- persistence
def test_pickle_and_model_file_round_trips_predict_identically(waves, tmp_path):
    pytest.importorskip("safetensors")
    X, y, groups, X_new, y_new, groups_new = waves
    reg = FOMAMLRegressor(**FAST).fit(X, y, groups=groups).adapt(X_new[:10], y_new[:10])
    expected = reg.predict(X_new[10:40])
    again = pickle.loads(pickle.dumps(reg))
    np.testing.assert_array_equal(again.predict(X_new[10:40]), expected)
    path = reg.save(tmp_path / "waves.fomaml")
    loaded = FOMAMLRegressor.load(path)
    np.testing.assert_array_equal(loaded.predict(X_new[10:40]), expected)
    assert loaded.n_outputs_ == 1 and loaded.n_tasks_ == 300
    assert (loaded.evaluate(X_new, y_new, groups_new, n_episodes=5).mse
            == reg.evaluate(X_new, y_new, groups_new, n_episodes=5).mse)
    np.testing.assert_array_equal(loaded.adapt(X_new[:10], y_new[:10]).predict(X_new[10:40]),
                                  expected)
    with pytest.raises(ValueError, match="holds a FOMAMLRegressor, not a FOMAMLClassifier"):
        FOMAMLClassifier.load(path)
