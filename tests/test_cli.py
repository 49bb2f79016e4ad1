"""The ``fomaml-sklearn`` command line: train, evaluate, predict, errors, help."""

import csv
import io
import os
import re
import shlex
import subprocess
import sys
import time
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import numpy as np
import pytest
import torch

from fomaml_sklearn import FOMAMLClassifier, presets
from fomaml_sklearn._cli_commands import model_image_shape
from fomaml_sklearn.cli import build_parser, main
from fomaml_sklearn.datasets import load_data

from conftest import REPO, write_image_folder

# Tiny budgets: every meta-training here takes a fraction of a second.
FAST = ["--epochs", "1", "--meta-batches-per-epoch", "3", "--meta-batch-size", "2",
        "--threads", "1", "--precision", "float32", "--device", "cpu"]
ACCURACY = re.compile(
    r"^(\d+)-way (\d+)-shot: (\d+\.\d+) \+- (\d+\.\d+) % \((\d+) episodes\)$"
)


def run(argv):
    """Run the CLI in-process; return (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


def assert_one_line_error(code, out, err, expected_code=1, contains=None):
    """The error is one line, the last on stderr (after progress messages)."""
    assert code == expected_code
    lines = err.strip().splitlines()
    errors = [line for line in lines if "error" in line.lower()]
    assert errors == lines[-1:], err
    assert lines[-1].startswith("fomaml-sklearn: error: ")
    assert "Traceback" not in err + out
    if contains is not None:
        assert contains in lines[-1], lines[-1]


@pytest.fixture(scope="module")
def digits_model(tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "digits.fomaml"
    code, out, err = run(["train", "digits", "-o", str(path), "--quiet", *FAST])
    assert code == 0, err
    assert out.strip() == f"Saved the model to {path}"
    return path


@pytest.fixture(scope="module")
def image_folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    write_image_folder(root / "support", ["alpha", "beta", "gamma"], 3)
    queries = write_image_folder(root / "query", ["q"], 4, seed=1, flat=True)
    queries += write_image_folder(root / "query" / "nested", ["r"], 1, seed=2, flat=True)
    (root / "query" / "notes.txt").write_text("not an image")
    return root / "support", root / "query", queries


def test_train_digits_saves_a_fitted_estimator(digits_model):
    clf = FOMAMLClassifier.load(digits_model)
    assert isinstance(clf, FOMAMLClassifier)
    assert clf.module == "mlp" and clf.n_features_in_ == 64
    assert clf.n_ways == 3 and clf.random_state == 0
    assert sorted(np.unique(clf.classes_)) == [0, 1, 2, 3, 4, 5]   # digits 0-5
    assert clf.n_meta_steps_ == 3 and clf.task_model_ is None      # 1 epoch x 3


def test_train_verbose_reports_progress_on_stderr(tmp_path):
    path = tmp_path / "m.fomaml"
    code, out, err = run(["train", "-o", str(path), *FAST])
    assert code == 0
    assert out.strip() == f"Saved the model to {path}"   # stdout: the result only
    assert "Meta-training the mlp network on digits 0-5" in err
    assert "Meta-trained for 3 meta-steps" in err


def test_evaluate_prints_accuracy_with_ci(digits_model):
    code, out, err = run(["evaluate", str(digits_model), "--episodes", "5", "--threads", "1"])
    assert code == 0, err
    match = ACCURACY.match(out.strip())
    assert match, out
    ways, shots, mean, ci, episodes = match.groups()
    assert (ways, shots, episodes) == ("3", "1", "5")
    assert 0.0 <= float(mean) <= 100.0 and float(ci) >= 0.0
    assert "digits 6-9" in err


def test_evaluate_is_reproducible_and_takes_episode_options(digits_model):
    argv = ["evaluate", str(digits_model), "digits", "--ways", "4", "--shots", "2",
            "--queries", "3", "--episodes", "5", "--seed", "3", "-q", "--threads", "1"]
    first, second = run(argv), run(argv)
    assert first[0] == 0 and first[1] == second[1]
    assert first[2] == ""                                   # --quiet
    assert first[1].startswith("4-way 2-shot: ")


def test_predict_writes_one_row_per_query_image(digits_model, image_folders, tmp_path):
    support, query, queries = image_folders
    code, out, err = run(["predict", str(digits_model), str(support), str(query),
                          "--threads", "1"])
    assert code == 0, err
    rows = list(csv.reader(io.StringIO(out)))
    assert rows[0] == ["path", "label", "probability"]
    assert sorted(r[0] for r in rows[1:]) == sorted(str(p) for p in queries)
    for path, label, probability in rows[1:]:
        assert label in {"alpha", "beta", "gamma"}
        assert 1 / 3 - 1e-6 <= float(probability) <= 1.0
    assert "Adapting to 3 classes (alpha, beta, gamma) from 9 support images" in err
    assert "inverted" in err                                 # dark ink on white

    # The same to a file, with single image files as queries.
    target = tmp_path / "out" / "predictions.csv"
    code, out, err = run(["predict", str(digits_model), str(support), str(queries[0]),
                          str(queries[1]), "-o", str(target), "-q", "--threads", "1"])
    assert code == 0 and out == "" and err == ""
    rows = list(csv.reader(target.open()))
    assert [r[0] for r in rows[1:]] == [str(queries[0]), str(queries[1])]


def test_predict_labels_the_support_images_themselves(digits_model, image_folders):
    support, _, _ = image_folders
    code, out, _ = run(["predict", str(digits_model), str(support), str(support), "-q",
                        "--threads", "1"])
    assert code == 0
    rows = list(csv.DictReader(io.StringIO(out)))
    assert len(rows) == 9
    correct = [os.path.basename(os.path.dirname(r["path"])) == r["label"] for r in rows]
    assert np.mean(correct) > 1 / 3                          # better than chance


def test_train_and_evaluate_on_an_image_folder(tmp_path):
    data = tmp_path / "data"
    write_image_folder(data, ["a", "b", "c", "d"], 3)
    model = tmp_path / "folder.fomaml"
    code, out, err = run(["train", str(data), "-o", str(model), "--image-size", "8",
                          "--ways", "2", "--queries", "1", "-q", *FAST])
    assert code == 0, err
    clf = FOMAMLClassifier.load(model)
    assert clf.module == "conv4" and clf.input_shape_ == (1, 8, 8)
    assert set(clf.classes_) == {"a", "b", "c", "d"}
    # The model's image size is used: no --image-size for evaluate.
    code, out, err = run(["evaluate", str(model), str(data), "--episodes", "3",
                          "--queries", "1", "--threads", "1"])
    assert code == 0, err
    assert ACCURACY.match(out.strip()).group(1) == "4"       # all 4 classes, at most 5


def test_module_override(tmp_path):
    model = tmp_path / "conv.fomaml"
    code, _, err = run(["train", "-o", str(model), "--module", "conv4", "-q", *FAST])
    assert code == 0, err
    assert FOMAMLClassifier.load(model).module == "conv4"


# --------------------------------------------------------------- data sets
def _benchmark_module():
    """benchmarks/few_shot.py, the loader of every Omniglot benchmark."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "few_shot_benchmark", REPO / "benchmarks" / "few_shot.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cli_and_benchmarks_load_the_same_omniglot_split(fake_omniglot_home):
    from argparse import Namespace

    few_shot = _benchmark_module()
    X_train, y_train, _ = load_data("omniglot", "train", data_home=fake_omniglot_home,
                                    offline=True)
    X_test, y_test, description = load_data("omniglot", "test",
                                            data_home=fake_omniglot_home, offline=True)
    assert description == "omniglot (423 test characters, MAML split)"
    assert X_train.shape == (1200 * 2 * 4, 1, 28, 28) and X_test.shape == (423 * 2, 1, 28, 28)
    assert len(np.unique(y_train)) == 4800 and len(np.unique(y_test)) == 423
    assert not set(y_train // 4) & set(y_test)
    # The benchmarks' --seed seeds the training, never the class split.
    for seed in (0, 3):
        bench = few_shot.load_omniglot(Namespace(data_home=fake_omniglot_home,
                                                 offline=True, seed=seed))
        for ours, theirs in zip((X_train, y_train, X_test, y_test), bench):
            np.testing.assert_array_equal(ours, theirs)


def test_cli_and_benchmarks_load_the_same_digits_split():
    few_shot = _benchmark_module()
    X_train, y_train, train_name = load_data("digits", "train")
    X_test, y_test, test_name = load_data("digits", "test")
    assert (train_name, test_name) == ("digits 0-5", "digits 6-9")
    assert set(y_train) == set(range(6)) and set(y_test) == set(range(6, 10))
    assert X_train.dtype == np.float32 and 0.0 <= X_train.min() and X_train.max() == 1.0
    for ours, theirs in zip((X_train, y_train, X_test, y_test), few_shot.load_digits_split()):
        np.testing.assert_array_equal(ours, theirs)


def test_load_data_reads_a_folder_with_names_and_ink(tmp_path):
    write_image_folder(tmp_path / "data", ["b", "a"], 2, size=10)
    X, y, description = load_data(str(tmp_path / "data"), "train", image_size=10)
    assert X.shape == (4, 1, 10, 10) and list(y) == ["a", "a", "b", "b"]
    assert description.endswith("(10x10, inverted to light ink on dark)")
    assert X.mean() < 0.5                                      # ink is now bright
    kept, _, description = load_data(str(tmp_path / "data"), "train", image_size=10,
                                     ink="light")
    np.testing.assert_allclose(kept, 1.0 - X)
    assert description.endswith("(10x10)")


def test_train_and_evaluate_on_omniglot(fake_omniglot_home, tmp_path):
    model = tmp_path / "omniglot.fomaml"
    data = ["omniglot", "--offline", "--data-home", str(fake_omniglot_home)]
    code, out, err = run(["train", *data, "--image-size", "15", "-o", str(model), *FAST])
    assert code == 0, err
    assert ("Meta-training the conv4 network on omniglot (1200 characters x 4 rotations, "
            "MAML split): 4800 classes, 9600 examples; preset 'omniglot'.") in err
    # What FAST does not set is presets.OMNIGLOT's.
    saved = FOMAMLClassifier.load(model)
    for key, value in presets.OMNIGLOT.items():
        if key not in ("max_epochs", "meta_batches_per_epoch", "meta_batch_size"):
            assert getattr(saved, key) == value, key
    code, out, err = run(["evaluate", str(model), *data, "--episodes", "2", "--queries",
                          "1", "--threads", "1"])
    assert code == 0, err
    assert "omniglot (423 test characters, MAML split): 423 classes, 846 examples" in err
    assert ACCURACY.match(out.strip()).group(1) == "5"


def test_train_takes_a_preset_and_options_override_it(tmp_path):
    """--preset picks a configuration of fomaml_sklearn.presets; an option
    given overrides it; --resume refuses --preset (the model keeps its own)."""
    model = tmp_path / "tab.fomaml"
    code, _, err = run(["train", "--preset", "omniglot", "--module", "mlp", "--lr", "0.002",
                        "--augment-shift", "0", "--test-shift", "0", "-o", str(model), *FAST])
    assert code == 0, err
    saved = FOMAMLClassifier.load(model)
    assert (saved.module, saved.lr, saved.n_ways, saved.n_query) == ("mlp", 0.002, 6, 5)
    assert saved.lr_schedule == "cosine" and saved.max_epochs == 1
    code, _, err = run(["train", "--resume", str(model), "--preset", "tabular", *FAST[:2]])
    assert code != 0 and "--preset" in err


def test_resume_of_a_cosine_model_anneals_over_the_new_minutes(tmp_path, monkeypatch):
    """A model saved with the preset's cosine schedule, resumed with --minutes
    alone, anneals over those minutes (TimeCosineLR, the estimator's own
    schedule constant for that fit, since its epochs are unbounded) and keeps
    lr_schedule='cosine' in its file."""
    from fomaml_sklearn.callbacks import TimeCosineLR

    model = tmp_path / "cos.fomaml"
    code, _, err = run(["train", "--preset", "omniglot", "--module", "mlp",
                        "--augment-shift", "0", "--test-shift", "0", "-o", str(model), *FAST])
    assert code == 0, err
    assert FOMAMLClassifier.load(model).lr_schedule == "cosine"
    seen = []
    original = FOMAMLClassifier.fit

    def spy(self, *args, **kwargs):
        seen.append((self.lr_schedule, list(self.callbacks or [])))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(FOMAMLClassifier, "fit", spy)
    code, _, err = run(["train", "--resume", str(model), "--minutes", "0.001", "-q"])
    assert code == 0, err
    schedule, callbacks = seen[0]
    assert schedule == "constant"
    assert any(isinstance(cb, TimeCosineLR) for cb in callbacks)
    assert FOMAMLClassifier.load(model).lr_schedule == "cosine"


def test_train_with_shift_augmentation(fake_omniglot_home, tmp_path):
    model = tmp_path / "shifted.fomaml"
    data = ["omniglot", "--offline", "--data-home", str(fake_omniglot_home)]
    code, out, err = run(["train", *data, "--image-size", "15", "--augment-shift", "2",
                          "--test-shift", "1", "-o", str(model), *FAST])
    assert code == 0, err
    saved = FOMAMLClassifier.load(model)
    assert (saved.augment_shift, saved.test_shift) == (2, 1)
    for extra in [], ["--test-shift", "0"]:
        code, out, err = run(["evaluate", str(model), *data, "--episodes", "2",
                              "--queries", "1", "--threads", "1", *extra])
        assert code == 0, err
        assert ACCURACY.match(out.strip())
    # Digits are rows of an MLP: the estimator's message, on one line.
    assert_one_line_error(*run(["train", "--augment-shift", "1", "-o",
                                str(tmp_path / "d.fomaml"), *FAST]),
                          contains="augment_shift=1 shifts images")


def test_evaluate_test_shift_overrides_the_models(digits_model):
    # The digits MLP's inputs are rows, not images: the override reaches the
    # estimator, which says so on one line.
    assert_one_line_error(*run(["evaluate", str(digits_model), "--test-shift", "1",
                                "--episodes", "2"]),
                          contains="test_shift=1 shifts images")


def test_model_image_shape_checks_the_shape_against_the_features(digits_model):
    clf = FOMAMLClassifier.load(digits_model)             # an MLP on 8x8 rows
    assert clf.input_shape_ is None and model_image_shape(clf) == (1, 8, 8)
    clf.input_shape_ = (8, 8)
    assert model_image_shape(clf) == (1, 8, 8)
    clf.input_shape_ = (1, 4, 4)                          # 16 features, not 64
    assert model_image_shape(clf) is None
    clf.input_shape_, clf.n_features_in_ = None, 60       # rows that are no image
    assert model_image_shape(clf) is None


# ------------------------------------------------------------------- errors
def test_missing_model_file(tmp_path):
    assert_one_line_error(*run(["evaluate", str(tmp_path / "nope.fomaml")]),
                          contains="nope.fomaml not found")


def test_file_that_is_not_a_model(tmp_path):
    bad = tmp_path / "bad.fomaml"
    bad.write_text("hello")
    assert_one_line_error(*run(["evaluate", str(bad)]),
                          contains="is not a fomaml-sklearn model file")


def test_folder_with_one_class(tmp_path):
    write_image_folder(tmp_path / "one", ["only"], 3)
    assert_one_line_error(*run(["train", str(tmp_path / "one"), "-o",
                                str(tmp_path / "m.fomaml"), *FAST]),
                          contains="at least 2 class subfolders")


def test_support_folder_with_one_class(digits_model, tmp_path):
    write_image_folder(tmp_path / "one", ["only"], 2)
    assert_one_line_error(*run(["predict", str(digits_model), str(tmp_path / "one"),
                                str(tmp_path / "one")]),
                          contains="at least 2 class subfolders")


def test_unknown_data_set(tmp_path):
    assert_one_line_error(*run(["train", str(tmp_path / "missing"), *FAST]),
                          contains="is not 'digits', 'omniglot' or a folder")


def test_the_data_names_come_from_the_datasets_registry(capsys, tmp_path):
    """--help and the error for an unknown name list each name of DATA_SETS."""
    from fomaml_sklearn.datasets import DATA_SETS

    assert list(DATA_SETS) == ["digits", "omniglot"]
    for command in ("train", "evaluate"):
        assert main([command, "--help"]) == 0
        help_text = " ".join(capsys.readouterr().out.split())
        for name, description in DATA_SETS.items():
            assert f"{name!r} ({description})" in help_text
    with pytest.raises(ValueError, match="part='val' is not 'train' or 'test'"):
        load_data("digits", "val")
    with pytest.raises(ValueError, match="'nope' is not 'digits', 'omniglot' or a folder"):
        load_data("nope", "train")


def test_omniglot_offline_without_data(tmp_path):
    assert_one_line_error(*run(["train", "omniglot", "--offline", "--data-home",
                                str(tmp_path), "-o", str(tmp_path / "m.fomaml"), *FAST]),
                          contains="not found and download_if_missing=False")
    assert not (tmp_path / "m.fomaml").exists()


def test_value_error_from_the_estimator(tmp_path):
    argv = ["train", "-o", str(tmp_path / "m.fomaml"), *FAST, "--precision", "float16"]
    code, out, err = run(argv + ["--quiet"])
    assert_one_line_error(code, out, err, contains="precision='float16' runs only on a GPU")
    assert len(err.splitlines()) == 1                        # --quiet: nothing else
    assert not (tmp_path / "m.fomaml").exists()


def test_output_that_is_a_folder(tmp_path):
    assert_one_line_error(*run(["train", "-o", str(tmp_path), *FAST]), contains="is a folder")


# -------------------------------------------------------------- model files
class _RunsCode:
    """Unpickling this runs a shell command that creates ``marker``."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {shlex.quote(str(self.marker))}",)


def _unwritable_folder(tmp_path):
    """A folder that cannot be written: read-only, or /sys when running as root."""
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    candidates = [folder, Path("/sys"), Path("/proc/self")]
    for candidate in candidates:
        try:
            (candidate / ".fomaml-probe").touch()
        except OSError:
            return candidate
        (candidate / ".fomaml-probe").unlink()
    pytest.skip("every folder is writable for this user")


def test_train_into_a_read_only_folder_fails_before_training(tmp_path):
    target = _unwritable_folder(tmp_path) / "m.fomaml"
    start = time.perf_counter()
    code, out, err = run(["train", "-o", str(target), *FAST])   # not --quiet
    assert_one_line_error(code, out, err, contains=f"cannot write --output {target}")
    assert "is not writable" in err
    assert len(err.splitlines()) == 1 and "Meta-training" not in err   # nothing trained
    assert time.perf_counter() - start < 10
    assert not target.exists()


def test_predict_checks_the_output_before_predicting(digits_model, image_folders, tmp_path):
    support, query, _ = image_folders
    for target, message in [(tmp_path, "is a folder; give a file name, such as"),
                            (_unwritable_folder(tmp_path) / "p.csv", "is not writable")]:
        code, out, err = run(["predict", str(digits_model), str(support), str(query),
                              "-o", str(target), "--threads", "1"])
        assert_one_line_error(code, out, err, contains=message)
        assert "Adapting" not in err and out == ""
        assert f"--output {target}" in err


def test_resume_continues_meta_training(tmp_path):
    model = tmp_path / "m.fomaml"
    code, _, err = run(["train", "-o", str(model), "-q", *FAST])          # 3 meta-steps
    assert code == 0, err
    first = FOMAMLClassifier.load(model)
    budget = ["--epochs", "1", "--meta-batches-per-epoch", "2", "--threads", "1"]
    code, out, err = run(["train", "--resume", str(model), *budget])
    assert code == 0, err
    assert out.strip() == f"Saved the model to {model}"                # the same file
    assert f"Resuming {model} (3 meta-steps so far)" in err
    assert "Meta-trained for 2 more meta-steps (5 in total)" in err
    resumed = FOMAMLClassifier.load(model)
    assert resumed.n_meta_steps_ == 5
    budget_params = {"max_epochs", "meta_batches_per_epoch", "callbacks", "verbose"}
    kept = {k: v for k, v in first.get_params().items() if k not in budget_params}
    assert {k: resumed.get_params()[k] for k in kept} == kept      # the saved settings
    assert resumed.warm_start is False and resumed.meta_batches_per_epoch == 2
    changed = [not torch.equal(a, b) for a, b in zip(first.meta_model_.parameters(),
                                                     resumed.meta_model_.parameters())]
    assert any(changed)
    # Into another file; the budget per epoch is the model's (now 2).
    other = tmp_path / "other.fomaml"
    code, out, err = run(["train", "--resume", str(model), "-o", str(other), "-q",
                          "--epochs", "1", "--threads", "1"])
    assert code == 0 and err == "", err
    assert FOMAMLClassifier.load(other).n_meta_steps_ == 7
    assert FOMAMLClassifier.load(model).n_meta_steps_ == 5


def test_resume_refuses_model_options(tmp_path):
    model = tmp_path / "m.fomaml"
    assert run(["train", "-o", str(model), "-q", *FAST])[0] == 0
    code, out, err = run(["train", "--resume", str(model), "--shots", "2", "--lr", "0.01"])
    assert_one_line_error(code, out, err, contains="--lr, --shots cannot be given with it")
    assert_one_line_error(*run(["train", "--resume", str(tmp_path / "nope.fomaml")]),
                          contains="nope.fomaml not found")
    assert_one_line_error(*run(["train", "omniglot", "--resume", str(model), "--offline",
                                "--data-home", str(tmp_path)]),
                          contains="not found and download_if_missing=False")


@pytest.fixture(scope="module")
def regressor_files(tmp_path_factory):
    """Two FOMAMLRegressor files: 64 features (digits-sized rows) and 1 feature."""
    from sklearn.datasets import load_digits

    from fomaml_sklearn import FOMAMLRegressor
    from fomaml_sklearn.datasets import make_sinusoid_tasks

    folder = tmp_path_factory.mktemp("regressors")
    fast = dict(hidden_layer_sizes=(8,), k_shot=2, n_query=3, meta_batch_size=2,
                max_epochs=1, meta_batches_per_epoch=3, precision="float32", device="cpu",
                random_state=0)
    X = (load_digits().data[:200] / 16.0).astype(np.float32)
    groups = np.repeat(np.arange(20), 10)
    y = X[:, :8].sum(axis=1) * (1 + groups % 3)
    wide = folder / "wide.fomaml"
    FOMAMLRegressor(**fast).fit(X, y, groups=groups).save(wide)
    X1, y1, g1 = make_sinusoid_tasks(n_tasks=20, n_points=10, random_state=0)
    narrow = folder / "narrow.fomaml"
    FOMAMLRegressor(**fast).fit(X1, y1, groups=g1).save(narrow)
    return wide, narrow


def test_a_regressor_file_is_refused_and_left_as_it_was(regressor_files, image_folders,
                                                        tmp_path):
    """evaluate, predict and train --resume name what the file holds, before any data
    is read; --resume does not retrain it as a classifier nor overwrite it."""
    support, query, _ = image_folders
    for path in regressor_files:
        before = path.read_bytes()
        for argv in (["evaluate", str(path), "--episodes", "2"],
                     ["evaluate", str(path), str(support)],
                     ["predict", str(path), str(support), str(query)],
                     ["train", "--resume", str(path), *FAST[:4]],
                     ["train", "--resume", str(path), "-o", str(tmp_path / "new.fomaml"),
                      *FAST[:4]]):
            code, out, err = run(argv + ["--threads", "1"])
            assert_one_line_error(code, out, err,
                                  contains=f"{path} holds a FOMAMLRegressor; the command "
                                           "line serves FOMAMLClassifier files")
            assert f"FOMAMLRegressor.load('{path}')" in err
            assert "takes 1 features" not in err and out == ""
            assert path.read_bytes() == before
        assert not (tmp_path / "new.fomaml").exists()


def test_a_pickle_is_refused_without_running_it(tmp_path):
    import joblib

    marker, path = tmp_path / "pwned", tmp_path / "old.joblib"
    joblib.dump(_RunsCode(marker), path)
    for argv in (["evaluate", str(path)], ["train", "--resume", str(path), "-q"]):
        code, out, err = run(argv)
        assert_one_line_error(code, out, err, contains="is a pickle")
        assert "only for trusted sources" in err
    assert not marker.exists()


def test_a_corrupted_model_file_is_one_line_error(digits_model, tmp_path):
    damaged = tmp_path / "damaged.fomaml"
    data = bytearray(digits_model.read_bytes())
    data[-50] ^= 0xFF
    damaged.write_bytes(bytes(data))
    assert_one_line_error(*run(["evaluate", str(damaged)]),
                          contains="is corrupted: checksum mismatch")


def test_query_folder_without_images(digits_model, image_folders, tmp_path):
    support, _, _ = image_folders
    (tmp_path / "empty").mkdir()
    assert_one_line_error(*run(["predict", str(digits_model), str(support),
                                str(tmp_path / "empty")]), contains="no images found")


def test_debug_shows_the_exception(tmp_path):
    with pytest.raises(Exception, match="not found"):
        main(["evaluate", str(tmp_path / "nope.fomaml"), "--debug"])
    with pytest.raises(Exception, match="not found"):
        main(["--debug", "evaluate", str(tmp_path / "nope.fomaml")])


def test_usage_errors_exit_2(capsys):
    assert main(["train", "--ways", "many"]) == 2
    assert "argument --ways: 'many' is not an integer" in capsys.readouterr().err
    assert main(["train", "--ways", "1"]) == 2
    assert "must be at least 2" in capsys.readouterr().err
    assert main(["fly"]) == 2
    assert main([]) == 2
    assert "Traceback" not in capsys.readouterr().err


# --------------------------------------------------------------------- help
@pytest.mark.parametrize("command", ["train", "evaluate", "predict"])
def test_subcommand_help(command, capsys):
    assert main([command, "--help"]) == 0
    text = capsys.readouterr().out
    assert text.startswith(f"usage: fomaml-sklearn {command}")
    assert "examples:" in text and f"fomaml-sklearn {command} " in text


def test_python_dash_m_help():
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "fomaml_sklearn", "--help"],
                          capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr
    for word in ("train", "evaluate", "predict", "examples:"):
        assert word in proc.stdout


@pytest.mark.parametrize("args", [["--help"], ["train", "--help"], ["evaluate", "--help"]])
def test_help_does_not_import_torch(args):
    code = ("import sys; from fomaml_sklearn.cli import main\n"
            "try:\n    main(%r)\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.')))"
            % (args,))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "[]"


def test_cli_choices_follow_the_package():
    from fomaml_sklearn import names
    from fomaml_sklearn.algorithms import available_algorithms

    parser = build_parser()
    train = parser._subparsers._group_actions[0].choices["train"]
    algorithm = next(a for a in train._actions if a.dest == "algorithm")
    assert list(algorithm.choices) == available_algorithms()
    assert "imaml" in algorithm.choices
    choices = {a.dest: a.choices for a in train._actions}
    assert tuple(choices["module"]) == names.BACKBONES
    assert tuple(choices["head"]) == names.HEADS
    assert tuple(choices["precision"]) == ("auto", *names.PRECISIONS)


def test_ctrl_c_saves_and_suggests_resume(tmp_path, monkeypatch):
    from fomaml_sklearn._training import MetaTrainingNet

    original, steps = MetaTrainingNet.train_step_single, []

    def interrupted_at_the_second_step(self, batch, **fit_params):
        steps.append(batch)
        if len(steps) == 2:
            raise KeyboardInterrupt
        return original(self, batch, **fit_params)

    monkeypatch.setattr(MetaTrainingNet, "train_step_single", interrupted_at_the_second_step)
    model = tmp_path / "m.fomaml"
    code, out, err = run(["train", "-o", str(model), "-q", *FAST])
    assert code == 0, err
    assert out.strip() == f"Saved the model to {model}"
    assert "meta-training was interrupted" in err and f"--resume {model}" in err
    assert "warm_start" not in err                       # Python's advice is not shown
    assert FOMAMLClassifier.load(model).n_meta_steps_ == 1


def test_the_main_job_runs_end_to_end(fake_omniglot_home, tmp_path, capsys):
    """``make run``'s script: meta-train on Omniglot, then the table next to
    the baselines (a tiny budget; the figures are not checked here). With
    --save, the saved model scores what the table printed, through the CLI."""
    few_shot = _benchmark_module()
    model = tmp_path / "main.fomaml"
    few_shot.main(["--data-home", str(fake_omniglot_home), "--offline", "--minutes", "0.01",
                   "--episodes", "10", "--threads", "1", "--save", str(model)])
    out = capsys.readouterr().out
    assert "meta-steps of" in out and "gradient through the prototypes: True" in out
    assert "1-nearest neighbour on pixels" in out and "FOMAML minus the best baseline" in out
    assert f"Saved the meta-trained model to {model}" in out
    printed = re.search(r"FOMAML \(conv4, meta-trained\) +([0-9.]+) \+-", out).group(1)
    code, cli_out, err = run(["evaluate", str(model), "omniglot", "--data-home",
                              str(fake_omniglot_home), "--offline", "--episodes", "10"])
    assert code == 0, err
    assert f": {printed} +-" in cli_out  # the same episodes (seed 0), the same accuracy


def test_the_main_job_checks_the_save_path_before_meta_training(tmp_path):
    few_shot = _benchmark_module()
    target = tmp_path / "missing" / "main.fomaml"
    with pytest.raises(SystemExit, match="its folder does not exist"):
        # No data home is needed: the path is checked before anything is loaded.
        few_shot.run(few_shot.build_parser().parse_args(["--save", str(target)]))
    assert not target.parent.exists()


def test_the_main_job_anneals_over_its_time_budget(fake_omniglot_home, capsys):
    """--lr-schedule cosine without --steps anneals over --minutes
    (callbacks.TimeCosineLR): the meta rate falls from the first meta-step on."""
    few_shot = _benchmark_module()
    fits = []
    original = few_shot.FOMAMLClassifier.fit

    def spy(self, *args, **kwargs):
        fits.append(self)
        return original(self, *args, **kwargs)

    few_shot.FOMAMLClassifier.fit = spy
    try:
        few_shot.main(["--data-home", str(fake_omniglot_home), "--offline", "--minutes",
                       "0.05", "--episodes", "5", "--threads", "1", "--lr-schedule",
                       "cosine", "--test-shift", "0"])
    finally:
        few_shot.FOMAMLClassifier.fit = original
    assert "cosine over 0.05 min" in capsys.readouterr().out
    clf = fits[0]
    assert clf.lr_schedule == "constant"  # the estimator's schedule counts steps
    rates = np.concatenate(clf.history_[:, "batches", :, "event_lr"])
    assert len(rates) == clf.n_meta_steps_ > 1
    assert rates[0] <= 3e-3 and all(np.diff(rates) <= 0) and rates[-1] < rates[0]


def test_launch_with_torchrun_runs_the_command_without_its_option(monkeypatch):
    import subprocess

    from fomaml_sklearn.distributed import launch_with_torchrun

    calls = []
    monkeypatch.setattr(subprocess, "call", lambda cmd, env: calls.append((cmd, env)) or 7)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    argv = ["train", "--nproc-per-node", "2", "-o", "m.fomaml", "--nproc-per-node=3", "-q"]
    assert launch_with_torchrun(2, argv) == 7                  # its exit code
    (cmd, env), = calls
    assert cmd[:2] == [sys.executable, "-m"] and "--nproc-per-node=2" in cmd
    assert cmd[cmd.index("torch.distributed.run") + 1] == "--standalone"
    assert cmd[-5:] == ["fomaml_sklearn", "train", "-o", "m.fomaml", "-q"]
    assert env["OMP_NUM_THREADS"] == str(max(1, (os.cpu_count() or 1) // 2))
    monkeypatch.setenv("OMP_NUM_THREADS", "3")                 # the user's choice stays
    launch_with_torchrun(2, ["train"])
    assert calls[-1][1]["OMP_NUM_THREADS"] == "3"
    for bad in (0, True, "2"):
        with pytest.raises(ValueError, match=f"nproc_per_node={bad!r} is not an int >= 1"):
            launch_with_torchrun(bad, ["train"])


def test_train_nproc_per_node_launches_torchrun_and_saves_the_one_process_model(tmp_path):
    """--nproc-per-node 2 runs the same command under torch.distributed.run;
    rank 0 saves a model equal (to float tolerance) to one process's."""
    import subprocess
    import sys

    one, two = tmp_path / "one.fomaml", tmp_path / "two.fomaml"
    code, _, err = run(["train", "-o", str(one), "-q", *FAST])
    assert code == 0, err
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    proc = subprocess.run(
        [sys.executable, "-m", "fomaml_sklearn", "train", "-o", str(two), "--nproc-per-node",
         "2", *FAST], capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("Saved the model") == 1  # rank 0 only
    a, b = FOMAMLClassifier.load(one), FOMAMLClassifier.load(two)
    assert a.n_meta_steps_ == b.n_meta_steps_ == 3
    for p, q in zip(a.meta_model_.parameters(), b.meta_model_.parameters()):
        np.testing.assert_allclose(q.detach().numpy(), p.detach().numpy(), rtol=1e-4,
                                   atol=1e-5)
