"""scikit-learn's estimator checks, all of them."""

import warnings

from sklearn.utils.estimator_checks import parametrize_with_checks

from fomaml_sklearn import FOMAMLClassifier

FAST = dict(max_epochs=2, meta_batches_per_epoch=5, n_eval_episodes=5, device="cpu",
            random_state=0)


def _expected_failed_checks(estimator):
    # Every check passes; keep the mechanism so a regression is explicit.
    return {}


@parametrize_with_checks(
    [FOMAMLClassifier(**FAST), FOMAMLClassifier(head="shared", precision="float32", **FAST)],
    expected_failed_checks=_expected_failed_checks,
)
def test_sklearn_compatible_estimator(estimator, check):
    with warnings.catch_warnings():
        # The checks' tiny data sets make the episodes shrink (with a warning).
        warnings.filterwarnings("ignore", message="The data allows smaller episodes")
        check(estimator)
