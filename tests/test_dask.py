"""Searches on a dask cluster: joblib's dask backend gives the serial scores."""

import numpy as np
import pytest
import torch
from joblib import parallel_config
from sklearn.datasets import load_digits
from sklearn.model_selection import GridSearchCV, GroupKFold, cross_validate

from fomaml_sklearn import FOMAMLClassifier

distributed = pytest.importorskip(
    "distributed", reason="dask.distributed is not installed (pip install "
    "'fomaml-sklearn[dask]')")


class ThreadCount(__import__("skorch").callbacks.Callback):
    """Record torch's thread count in the history, where fit runs."""

    def on_epoch_end(self, net, **kwargs):
        net.history.record("torch_threads", torch.get_num_threads())


@pytest.fixture(scope="module")
def cluster():
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster, \
            distributed.Client(cluster) as client:
        yield client


def _search():
    X, y = load_digits(return_X_y=True)
    X = X.astype(np.float32) / 16
    clf = FOMAMLClassifier(n_ways=3, max_epochs=2, meta_batches_per_epoch=5,
                           n_eval_episodes=10, precision="float32", device="cpu",
                           random_state=0, callbacks=[ThreadCount()])
    return GridSearchCV(clf, {"inner_lr": [0.1, 0.4], "n_inner_steps": [1, 2]},
                        cv=GroupKFold(3), n_jobs=2), X, y


def test_grid_search_on_dask_gives_the_serial_results(cluster):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the workers' share (dask starts them with 1 thread)
    try:
        serial, X, y = _search()
        serial.set_params(n_jobs=1).fit(X, y, groups=y)
    finally:
        torch.set_num_threads(threads)
    search, X, y = _search()
    with parallel_config(backend="dask"):
        search.fit(X, y, groups=y)
    assert search.best_params_ == serial.best_params_
    for key in ("mean_test_score", "split0_test_score", "split2_test_score"):
        np.testing.assert_array_equal(search.cv_results_[key], serial.cv_results_[key])


def test_fits_in_dask_workers_use_their_share_of_the_cores(cluster):
    X, y = load_digits(return_X_y=True)
    clf = FOMAMLClassifier(n_ways=3, max_epochs=1, meta_batches_per_epoch=3,
                           n_eval_episodes=5, device="cpu", random_state=0,
                           callbacks=[ThreadCount()])
    with parallel_config(backend="dask"):
        result = cross_validate(clf, X, y, groups=y, cv=GroupKFold(2), n_jobs=2,
                                return_estimator=True)
    # 2 single-threaded workers on this machine: one thread per fit.
    assert [est.history_[-1, "torch_threads"] for est in result["estimator"]] == [1, 1]
