"""Safe model files (fomaml_sklearn.persistence): exact round trips, checksums,
versions, refusing pickles without running them, what cannot be stored."""

import copy
import hashlib
import json
import os
import pickle
import shlex

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from sklearn.exceptions import NotFittedError

from fomaml_sklearn import FOMAMLClassifier, FOMAMLRegressor
from fomaml_sklearn.algorithms import FOMAML, IMAML
from fomaml_sklearn.callbacks import TimeLimit
from fomaml_sklearn.persistence import FORMAT_VERSION, MAGIC, load_model, save_model

pytest.importorskip("safetensors")

FAST = dict(n_ways=3, k_shot=1, n_query=4, meta_batch_size=2, max_epochs=1,
            meta_batches_per_epoch=3, n_eval_episodes=5, precision="float32",
            device="cpu", random_state=0)


# ------------------------------------------------------------------ data
@pytest.fixture(scope="module")
def digits():
    X, y = load_digits(return_X_y=True)
    X = (X / 16.0).astype(np.float32)
    train, test = y < 6, y >= 6
    return X[train], y[train], X[test], y[test]


@pytest.fixture(scope="module")
def images():
    """Tiny random 1x8x8 images: 6 classes x 8, each class around its own pattern."""
    rng = np.random.default_rng(0)
    centers = rng.random((6, 1, 8, 8)).astype(np.float32)
    y = np.repeat(np.arange(6), 8)
    X = centers[y] + 0.3 * rng.standard_normal((len(y), 1, 8, 8)).astype(np.float32)
    train = y < 4
    return X[train], y[train], X[~train], y[~train]


def _fit(data, **params):
    X, y, _, _ = data
    return FOMAMLClassifier(**{**FAST, **params}).fit(X, y)


@pytest.fixture(scope="module")
def mlp_adapted(digits):
    return _fit(digits, hidden_layer_sizes=(16, 16))


@pytest.fixture(scope="module")
def mlp_meta(digits):
    return _fit(digits, hidden_layer_sizes=(16, 16), adapt_on_fit=False)


@pytest.fixture(scope="module")
def conv_adapted(images):
    return _fit(images, module="conv4", n_filters=4, n_query=3)


@pytest.fixture(scope="module")
def conv_meta(images):
    return _fit(images, module="conv4", n_filters=4, n_query=3, adapt_on_fit=False)


# --------------------------------------------------------------- helpers
def _split(data):
    """(envelope, payload) of a model file's bytes."""
    assert data.startswith(MAGIC)
    end = data.index(b"\n", len(MAGIC))
    return json.loads(data[len(MAGIC):end]), data[end + 1:]


def _write(path, envelope, payload, fix_checksum=True):
    if fix_checksum:
        envelope = dict(envelope, payload_size=len(payload),
                        payload_sha256=hashlib.sha256(payload).hexdigest())
    path.write_bytes(MAGIC + json.dumps(envelope).encode() + b"\n" + payload)


def _edit_document(path, edit):
    """Change the JSON document inside the payload, with a valid checksum."""
    import safetensors.torch

    envelope, payload = _split(path.read_bytes())
    n = int.from_bytes(payload[:8], "little")
    document = json.loads(json.loads(payload[8:8 + n])["__metadata__"]["fomaml_sklearn"])
    edit(document)
    tensors = safetensors.torch.load(payload)
    payload = safetensors.torch.save(tensors, metadata={"fomaml_sklearn": json.dumps(document)})
    _write(path, envelope, payload)


def _same_params(a, b):
    pa, pb = a.get_params(deep=False), b.get_params(deep=False)
    assert set(pa) == set(pb)
    for name in pa:
        va, vb = pa[name], pb[name]
        if hasattr(va, "get_params"):
            assert type(va) is type(vb) and va.get_params() == vb.get_params(), name
        elif name != "callbacks":
            assert type(va) is type(vb) and va == vb, name


def assert_same_model(original, loaded, data):
    _, _, X_test, y_test = data
    _same_params(original, loaded)
    for name in ("n_features_in_", "input_shape_", "episode_shape_", "precision_",
                 "inner_lr_", "task_batching_", "n_meta_steps_", "device_"):
        assert getattr(loaded, name) == getattr(original, name), name
    np.testing.assert_array_equal(loaded.classes_, original.classes_)
    assert loaded.classes_.dtype == original.classes_.dtype
    assert repr(loaded.algorithm_) == repr(original.algorithm_)
    assert loaded.meta_model_ is loaded.net_.module_
    a, b = original.evaluate(X_test, y_test), loaded.evaluate(X_test, y_test)
    np.testing.assert_array_equal(a.accuracies, b.accuracies)
    assert (a.mean, a.shape) == (b.mean, b.shape)
    assert loaded.score(X_test, y_test) == original.score(X_test, y_test)
    if original.task_model_ is None:
        assert loaded.task_model_ is None
        with pytest.raises(NotFittedError):
            loaded.predict(X_test)
        # Adapting both to the same task gives the same predictions.
        support = np.concatenate([np.flatnonzero(y_test == c)[:2] for c in np.unique(y_test)])
        original = copy.deepcopy(original)          # the fixture stays as it is
        original.adapt(X_test[support], y_test[support])
        loaded.adapt(X_test[support], y_test[support])
    np.testing.assert_array_equal(loaded.predict_proba(X_test), original.predict_proba(X_test))
    np.testing.assert_array_equal(loaded.predict(X_test), original.predict(X_test))


# ------------------------------------------------------------ round trips
@pytest.mark.parametrize("model, data", [("mlp_adapted", "digits"), ("mlp_meta", "digits"),
                                         ("conv_adapted", "images"),
                                         ("conv_meta", "images")])
def test_round_trip_is_exact(model, data, request, tmp_path):
    clf, data = request.getfixturevalue(model), request.getfixturevalue(data)
    path = clf.save(tmp_path / "model.fomaml")
    assert path == tmp_path / "model.fomaml" and path.read_bytes().startswith(MAGIC)
    loaded = FOMAMLClassifier.load(path)
    assert type(loaded) is FOMAMLClassifier and loaded is not clf
    assert_same_model(clf, loaded, data)
    # Saving the loaded model writes the same bytes.
    save_model(load_model(path), tmp_path / "again.fomaml")
    assert (tmp_path / "again.fomaml").read_bytes() == path.read_bytes()
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".part")]


def test_conv4_images_keep_their_layout(conv_adapted, images, tmp_path):
    loaded = load_model(save_model(conv_adapted, tmp_path / "conv.fomaml"))
    assert loaded.input_shape_ == conv_adapted.input_shape_ == (1, 8, 8)
    X = images[2]
    np.testing.assert_array_equal(loaded.predict_proba(X.reshape(len(X), -1)),
                                  conv_adapted.predict_proba(X))


def test_algorithm_instance_round_trip(digits, tmp_path):
    clf = _fit(digits, hidden_layer_sizes=(16,), algorithm=IMAML(lam=2.0, cg_steps=3))
    loaded = load_model(save_model(clf, tmp_path / "imaml.fomaml"))
    assert type(loaded.algorithm) is IMAML
    assert loaded.algorithm.get_params() == clf.algorithm.get_params()
    assert loaded.algorithm.lam == 2.0 and loaded.algorithm is not clf.algorithm
    assert_same_model(clf, loaded, digits)


def test_parameters_of_many_types_round_trip(digits, tmp_path):
    clf = _fit(digits, hidden_layer_sizes=(16,), optimizer=torch.optim.RMSprop,
               optimizer_params={"alpha": 0.9, "eps": 1e-7}, inner_lr=0.1,
               callbacks=[TimeLimit(5)], random_state=np.random.RandomState(3),
               input_shape=(1, 8, 8))
    loaded = load_model(save_model(clf, tmp_path / "m.fomaml"))
    assert loaded.callbacks is None                     # callbacks are not stored
    assert loaded.optimizer is torch.optim.RMSprop
    assert loaded.optimizer_params == {"alpha": 0.9, "eps": 1e-7}
    assert loaded.hidden_layer_sizes == (16,) and loaded.input_shape == (1, 8, 8)
    state, saved = loaded.random_state.get_state(), clf.random_state.get_state()
    np.testing.assert_array_equal(state[1], saved[1])
    assert state[2:] == saved[2:]
    assert loaded.inner_lr_ == 0.1


@pytest.mark.parametrize("kind", ["str", "float", "object"])
def test_label_types_round_trip(kind, digits, tmp_path):
    X, y, X_test, _ = digits
    labels = {"str": np.array([f"digit {v}" for v in y]),
              "float": y.astype(np.float64),
              "object": np.array([f"d{v}" for v in y], dtype=object)}[kind]
    clf = FOMAMLClassifier(**FAST, hidden_layer_sizes=(16,)).fit(X, labels)
    loaded = load_model(save_model(clf, tmp_path / "m.fomaml"))
    np.testing.assert_array_equal(loaded.classes_, clf.classes_)
    assert loaded.classes_.dtype == clf.classes_.dtype
    assert [type(c) for c in loaded.classes_] == [type(c) for c in clf.classes_]
    np.testing.assert_array_equal(loaded.predict(X_test), clf.predict(X_test))


def test_feature_names_round_trip(digits, tmp_path):
    pd = pytest.importorskip("pandas")
    X, y, X_test, _ = digits
    columns = [f"pixel_{i}" for i in range(X.shape[1])]
    clf = FOMAMLClassifier(**FAST, hidden_layer_sizes=(16,)).fit(
        pd.DataFrame(X, columns=columns), y)
    loaded = load_model(save_model(clf, tmp_path / "m.fomaml"))
    np.testing.assert_array_equal(loaded.feature_names_in_, clf.feature_names_in_)
    frame = pd.DataFrame(X_test, columns=columns)
    np.testing.assert_array_equal(loaded.predict_proba(frame), clf.predict_proba(frame))


def test_a_loaded_model_saves_params_and_warm_starts(mlp_meta, digits, tmp_path):
    loaded = load_model(save_model(mlp_meta, tmp_path / "m.fomaml"))
    assert len(loaded.history_) == 0                    # the history is not stored
    loaded.save_params(f_params=tmp_path / "params.pt")
    before = [p.detach().clone() for p in loaded.meta_model_.parameters()]
    loaded.set_params(warm_start=True, max_epochs=1)
    loaded.fit(digits[0], digits[1])
    assert len(loaded.history_) == 1
    after = list(loaded.meta_model_.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, after))


def test_saved_on_a_gpu_loads_on_the_cpu(mlp_adapted, digits, tmp_path, monkeypatch):
    path = save_model(mlp_adapted, tmp_path / "gpu.fomaml")

    def on_gpu(document):
        document["fitted"]["device_"] = "cuda:0"
        document["params"]["device"] = "cuda"

    _edit_document(path, on_gpu)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.warns(UserWarning, match="CUDA is not available"):
        loaded = load_model(path)
    assert loaded.device_ == torch.device("cpu") and loaded.device == "cpu"
    assert next(loaded.meta_model_.parameters()).device.type == "cpu"
    assert next(loaded.task_model_.parameters()).device.type == "cpu"
    np.testing.assert_array_equal(loaded.predict_proba(digits[2]),
                                  mlp_adapted.predict_proba(digits[2]))


# ------------------------------------------------------- damaged files
def test_flipped_byte_in_the_tensors_is_refused(mlp_adapted, tmp_path):
    path = save_model(mlp_adapted, tmp_path / "m.fomaml")
    data = bytearray(path.read_bytes())
    start = data.index(b"\n", len(MAGIC)) + 1                 # the payload
    tensors = start + 8 + int.from_bytes(data[start:start + 8], "little")
    middle = (tensors + len(data)) // 2
    data[middle] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"is corrupted: checksum mismatch"):
        load_model(path)


@pytest.mark.parametrize("keep", [-100, 30, 5, 0])
def test_truncated_file_is_refused(keep, mlp_adapted, tmp_path):
    path = save_model(mlp_adapted, tmp_path / "m.fomaml")
    data = path.read_bytes()
    path.write_bytes(data[:keep] if keep >= 0 else data[:keep])
    with pytest.raises(ValueError, match=r"m\.fomaml is corrupted: .*truncated"):
        load_model(path)


def test_extra_bytes_are_refused(mlp_adapted, tmp_path):
    path = save_model(mlp_adapted, tmp_path / "m.fomaml")
    path.write_bytes(path.read_bytes() + b"\0")
    with pytest.raises(ValueError, match="corrupted: it has 1 unexpected bytes"):
        load_model(path)


def test_newer_format_version_is_refused(mlp_adapted, tmp_path):
    path = save_model(mlp_adapted, tmp_path / "m.fomaml")
    envelope, payload = _split(path.read_bytes())
    assert envelope["format_version"] == FORMAT_VERSION
    _write(path, dict(envelope, format_version=FORMAT_VERSION + 1,
                      fomaml_sklearn_version="9.0"), payload)
    with pytest.raises(ValueError, match=rf"format version {FORMAT_VERSION + 1} \(written "
                                         rf"by fomaml-sklearn 9\.0\).*up to "
                                         rf"{FORMAT_VERSION}\. Upgrade"):
        load_model(path)


@pytest.mark.parametrize("field", ["payload_sha256", "format_version", "payload_size"])
def test_missing_envelope_field_is_named(field, mlp_adapted, tmp_path):
    path = save_model(mlp_adapted, tmp_path / "m.fomaml")
    envelope, payload = _split(path.read_bytes())
    del envelope[field]
    _write(path, envelope, payload, fix_checksum=False)
    with pytest.raises(ValueError, match=f"missing the field '{field}'"):
        load_model(path)


@pytest.mark.parametrize("where, field", [("fitted", "n_features_in_"),
                                          ("fitted", "classes_"),
                                          ("fitted", "episode_shape_"), (None, "params")])
def test_missing_field_is_named(where, field, mlp_adapted, tmp_path):
    path = save_model(mlp_adapted, tmp_path / "m.fomaml")
    _edit_document(path, lambda d: (d[where] if where else d).pop(field))
    name = f"{where}.{field}" if where else field
    with pytest.raises(ValueError, match=f"missing the field '{name}'"):
        load_model(path)


def test_unknown_parameter_and_rule_are_refused(mlp_adapted, tmp_path):
    path = save_model(mlp_adapted, tmp_path / "m.fomaml")
    _edit_document(path, lambda d: d["params"].update(future_option=1))
    with pytest.raises(ValueError, match=r"parameter\(s\) \['future_option'\]"):
        load_model(path)
    path = save_model(mlp_adapted, tmp_path / "m.fomaml")
    evil = {"__algorithm__": "os.system", "params": {}}
    _edit_document(path, lambda d: d["params"].update(algorithm=evil))
    with pytest.raises(ValueError, match="'os.system' is not one of the rules"):
        load_model(path)


# ------------------------------------------------------ not model files
class _RunsCode:
    """Unpickling this runs a shell command that creates ``marker``."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {shlex.quote(str(self.marker))}",)


@pytest.mark.parametrize("writer", ["joblib", "pickle", "pickle-protocol-0", "torch"])
def test_a_pickle_is_refused_and_never_run(writer, tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "model.joblib"
    if writer == "joblib":
        import joblib

        joblib.dump(_RunsCode(marker), path)
    elif writer == "torch":
        torch.save(_RunsCode(marker), path)
    else:
        with open(path, "wb") as f:
            pickle.dump(_RunsCode(marker), f, protocol=0 if writer.endswith("0") else None)
    with pytest.raises(ValueError, match=r"model\.joblib is .*(pickle|zip).* not a "
                                         r"fomaml-sklearn model file; it was not loaded.*"
                                         r"only for trusted sources"):
        load_model(path)
    with pytest.raises(ValueError, match="not a fomaml-sklearn model file"):
        FOMAMLClassifier.load(path)
    assert not marker.exists()
    if writer == "pickle":  # the file is a real exploit: unpickling it runs the command
        with open(path, "rb") as f:
            pickle.load(f)
        assert marker.exists()


def test_other_files_are_refused(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("hello")
    with pytest.raises(ValueError, match=r"notes\.txt is not a fomaml-sklearn model file "
                                         r"\(it does not start with"):
        load_model(path)
    with pytest.raises(FileNotFoundError):
        load_model(tmp_path / "missing.fomaml")


# --------------------------------------------- what the format refuses
def test_user_module_is_refused(digits, tmp_path):
    body = torch.nn.Sequential(torch.nn.Linear(64, 8), torch.nn.ReLU())
    clf = _fit(digits, module=body)
    path = tmp_path / "user.fomaml"
    with pytest.raises(ValueError, match=r"cannot rebuild user code.*joblib\.dump"):
        clf.save(path)
    assert not path.exists() and not os.listdir(tmp_path)


def test_user_rule_and_optimizer_are_refused(mlp_meta, tmp_path):
    class MyRule(FOMAML):
        pass

    class MyAdam(torch.optim.Adam):
        pass

    for params, match in [(dict(algorithm=MyRule()), "cannot rebuild user code"),
                          (dict(optimizer=MyAdam), "not user classes")]:
        clf = copy.deepcopy(mlp_meta).set_params(**params)
        with pytest.raises(ValueError, match=match):
            save_model(clf, tmp_path / "m.fomaml")


def test_object_labels_of_other_types_are_refused(mlp_adapted, tmp_path):
    clf = copy.deepcopy(mlp_adapted)
    clf.classes_ = np.empty(len(clf.classes_), dtype=object)
    clf.classes_[:] = [(int(c),) for c in mlp_adapted.classes_]
    with pytest.raises(ValueError, match="classes_ is an object array holding tuple values"):
        save_model(clf, tmp_path / "m.fomaml")


def test_unfitted_estimator_is_refused(tmp_path):
    with pytest.raises(NotFittedError):
        FOMAMLClassifier().save(tmp_path / "m.fomaml")
    with pytest.raises(TypeError, match="saves a fitted FOMAMLClassifier"):
        save_model(object(), tmp_path / "m.fomaml")


def test_a_warm_start_from_a_loaded_model_counts_all_meta_steps(tmp_path):
    from sklearn.datasets import load_digits

    from fomaml_sklearn import FOMAMLClassifier

    X, y = load_digits(return_X_y=True)
    X = (X / 16).astype("float32")
    clf = FOMAMLClassifier(n_ways=3, max_epochs=1, meta_batches_per_epoch=4, device="cpu",
                           random_state=0).fit(X[y < 6], y[y < 6])
    clf.save(tmp_path / "m.fomaml")
    loaded = FOMAMLClassifier.load(tmp_path / "m.fomaml")
    assert loaded.n_meta_steps_ == 4
    loaded.set_params(warm_start=True).fit(X[y < 6], y[y < 6])
    assert loaded.n_meta_steps_ == 8
    loaded.fit(X[y < 6], y[y < 6])
    assert loaded.n_meta_steps_ == 12


# ------------------------------------- what a file may claim (issue 25)
def _rewrite_index(path, edit):
    """Change the safetensors header (tensor index and metadata) of a model
    file in place, keeping the tensor bytes, with a valid checksum."""
    envelope, payload = _split(path.read_bytes())
    n = int.from_bytes(payload[:8], "little")
    header = json.loads(payload[8:8 + n])
    edit(header)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    _write(path, envelope, len(text).to_bytes(8, "little") + text + payload[8 + n:])


@pytest.mark.parametrize("edit, match", [
    (lambda d: d["params"].update(hidden_layer_sizes={"__tuple__": [200000, 200000]}),
     r"does not fit the network its parameters describe \(meta_model\): tensor "
     r"'backbone\.layers\.0\.bias' is float32 \(16,\), the network expects "
     r"float32 \(200000,\)"),
    (lambda d: d["fitted"].update(n_features_in_=10**9),
     r"tensor 'backbone\.layers\.0\.weight' is float32 \(16, 64\), the network expects "
     r"float32 \(16, 1000000000\)"),
    (lambda d: d["fitted"].update(n_features_in_=10**11),
     r"invalid field 'fitted\.n_features_in_': expected an int in \[1, 2147483647\], "
     r"got 100000000000"),
    (lambda d: d["fitted"].update(n_features_in_=1e11),
     r"invalid field 'fitted\.n_features_in_': expected an int in \[1, 2147483647\], "
     r"got 100000000000\.0"),
    (lambda d: d["params"].update(hidden_layer_sizes={"__tuple__": [16]}),
     r"missing tensors \[\], unexpected tensors \['backbone\.layers\.3\.bias'"),
])
def test_a_file_that_promises_a_bigger_network_is_refused_before_allocating(
        edit, match, mlp_adapted, tmp_path):
    # Building these networks would take up to 400 GB: the loader compares the
    # shapes the header implies with the tensors the payload holds first.
    path = save_model(mlp_adapted, tmp_path / "m.fomaml")
    _edit_document(path, edit)
    with pytest.raises(ValueError, match=match):
        load_model(path)


def test_a_conv4_file_with_other_image_sizes_is_refused(conv_adapted, tmp_path):
    path = save_model(conv_adapted, tmp_path / "m.fomaml")
    _edit_document(path, lambda d: d["fitted"].update(input_shape_=[1, 4000, 4000]))
    with pytest.raises(ValueError, match=r"invalid field 'fitted\.input_shape_': expected "
                                         r"\(channels, height, width\).*n_features_in_ = 64"):
        load_model(path)

    def bigger(d):  # consistent with each other, not with the tensors (a "fixed" head)
        d["fitted"].update(input_shape_=[1, 4000, 4000], n_features_in_=16 * 10**6)
        d["params"].update(head="fixed")

    clf = _fit(_images(), module="conv4", n_filters=4, n_query=3, head="fixed")
    path = save_model(clf, tmp_path / "fixed.fomaml")
    _edit_document(path, bigger)
    with pytest.raises(ValueError, match=r"tensor 'head_weight' is float32 \(3, 4\), the "
                                         r"network expects float32 \(3, 250000\)"):
        load_model(path)


def _images():
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(4), 8)
    X = rng.random((4, 1, 8, 8)).astype(np.float32)[y]
    return X + 0.3 * rng.standard_normal(X.shape).astype(np.float32), y, None, None


@pytest.mark.parametrize("claim, match", [
    ({"shape": [200000, 200000]}, r"of shape \[200000, 200000\] \(160000000000 bytes\) "
                                  r"claims bytes \d+\.\.\d+ of \d+"),
    ({"data_offsets": [0, 10**12]}, r"of shape \[16, 64\] \(4096 bytes\) claims bytes "
                                    r"0\.\.1000000000000 of"),
    ({"dtype": "F8_E4M3"}, r"has an invalid entry"),
    ({"shape": [-16, 64]}, r"has an invalid entry"),
])
def test_a_tensor_index_that_claims_more_than_the_payload_holds_is_refused(
        claim, match, mlp_adapted, tmp_path):
    path = save_model(mlp_adapted, tmp_path / "m.fomaml")
    _rewrite_index(path, lambda h: h["meta_model.backbone.layers.0.weight"].update(claim))
    with pytest.raises(ValueError, match=r"checksum that matches but an invalid safetensors "
                                         r"payload: tensor 'meta_model\.backbone\.layers\.0"
                                         r"\.weight' " + match):
        load_model(path)


def test_tensors_that_overlap_or_overflow_the_header_are_refused(mlp_adapted, tmp_path):
    path = save_model(mlp_adapted, tmp_path / "m.fomaml")
    first = "meta_model.backbone.layers.0.bias"
    _rewrite_index(path, lambda h: h["meta_model.backbone.layers.0.weight"].update(
        data_offsets=h[first]["data_offsets"][:1] * 2) or h[first].update(
        data_offsets=[0, h[first]["data_offsets"][1]]))
    with pytest.raises(ValueError, match="invalid safetensors payload"):
        load_model(path)
    envelope, payload = _split(path.read_bytes())
    _write(path, envelope, (2**40).to_bytes(8, "little") + payload[8:])
    with pytest.raises(ValueError, match=r"its header claims 1099511627776 bytes, but the "
                                         r"payload has"):
        load_model(path)


def test_deeply_nested_json_is_refused(mlp_adapted, tmp_path):
    path = save_model(mlp_adapted, tmp_path / "m.fomaml")
    deep = json.loads("[" * 31 + "]" * 31)   # 31 levels + params + document: 33
    _edit_document(path, lambda d: d["params"].update(optimizer_params=deep))
    with pytest.raises(ValueError, match=r"corrupted: its JSON document nests JSON values "
                                         r"deeper than 32 levels"):
        load_model(path)
    # Deeper than Python's recursion limit (a RecursionError in json.loads).
    path = save_model(mlp_adapted, tmp_path / "m.fomaml")
    text = "[" * 50000 + "]" * 50000
    _rewrite_index(path, lambda h: h["__metadata__"].update(fomaml_sklearn=text))
    with pytest.raises(ValueError, match="its JSON document nests JSON values deeper"):
        load_model(path)
    envelope, payload = _split(path.read_bytes())
    path.write_bytes(MAGIC + b"[" * 30000 + b"]" * 30000 + b"\n" + payload)
    with pytest.raises(ValueError, match="its header nests JSON values deeper"):
        load_model(path)


def test_labels_of_an_absurd_width_are_refused(mlp_adapted, tmp_path):
    path = save_model(mlp_adapted, tmp_path / "m.fomaml")
    wide = {"dtype": "<U100000000", "item": None, "values": ["a", "b"]}
    _edit_document(path, lambda d: d["fitted"].update(classes_=wide))
    with pytest.raises(ValueError, match=r"invalid field 'fitted\.classes_': expected a "
                                         r"non-empty list .*dtype <U100000000 is far wider"):
        load_model(path)


@pytest.mark.parametrize("field, value, match", [
    ("n_meta_steps_", -5, r"'fitted\.n_meta_steps_': expected an int in \[0, "),
    ("n_features_in_", 0, r"'fitted\.n_features_in_': expected an int in \[1, "),
    ("precision_", "float8", r"'fitted\.precision_': expected one of \['bfloat16', "),
    ("task_batching_", "all", r"'fitted\.task_batching_': expected one of \['auto', "),
    ("inner_lr_", -1.0, r"'fitted\.inner_lr_': expected a finite number >= 0, got -1\.0"),
    ("episode_shape_", {"n_ways": 0, "k_shot": 1, "n_query": 4},
     r"'fitted\.episode_shape_\.n_ways': expected an int in \[1, "),
    ("task_model_", {"n_outputs": 99}, r"'fitted\.task_model_\.n_outputs': expected 6, the "
                                       r"estimator's classes or outputs, got 99"),
    ("feature_names_in_", ["a", "b"], r"'fitted\.feature_names_in_': expected "
                                      r"n_features_in_ = 64 names, got \['a', 'b'\]"),
])
def test_out_of_range_fitted_fields_are_refused(field, value, match, mlp_adapted, tmp_path):
    path = save_model(mlp_adapted, tmp_path / "m.fomaml")
    _edit_document(path, lambda d: d["fitted"].update({field: value}))
    with pytest.raises(ValueError, match=match):
        load_model(path)


# --------------------------------------------------------- save errors
def test_save_errors_name_the_given_path_not_the_hidden_file(mlp_adapted, tmp_path,
                                                             monkeypatch):
    missing = tmp_path / "no such folder" / "m.fomaml"
    with pytest.raises(FileNotFoundError, match=r"cannot save the model to .*no such "
                                                 r"folder/m\.fomaml: the folder .* does not "
                                                 r"exist") as info:
        mlp_adapted.save(missing)
    assert ".part" not in str(info.value) and info.value.filename == str(missing)
    with pytest.raises(IsADirectoryError, match=r"it is a folder; give a file path, such "
                                                r"as .*model\.fomaml"):
        save_model(mlp_adapted, tmp_path)
    # A failure while writing: the same error type, the user's path, the old file kept.
    path = save_model(mlp_adapted, tmp_path / "m.fomaml")
    before = path.read_bytes()

    def full_disk(src, dst):
        raise OSError(28, "No space left on device", str(src))

    monkeypatch.setattr(os, "replace", full_disk)
    with pytest.raises(OSError, match=r"cannot save the model to .*/m\.fomaml: No space "
                                      r"left on device") as info:
        mlp_adapted.save(path)
    assert ".part" not in str(info.value) and info.value.filename == str(path)
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["m.fomaml"]


# ------------------------------------------------ files of earlier versions
DATA = os.path.join(os.path.dirname(__file__), "data")


def test_a_file_written_before_estimators_owned_their_state_loads(digits):
    """tests/data/v1_*.fomaml were written at commit 5147671 (make_v1_files.py):
    they load and predict what they predicted then."""
    X, y = load_digits(return_X_y=True)
    X = (X / 16.0).astype(np.float32)
    clf = FOMAMLClassifier.load(os.path.join(DATA, "v1_classifier.fomaml"))
    assert type(clf.algorithm) is IMAML and (clf.algorithm.lam, clf.algorithm.cg_steps) == (2, 3)
    assert clf.optimizer_params == {"eps": 1e-7} and clf.hidden_layer_sizes == (8,)
    assert list(clf.classes_) == [f"digit {d}" for d in range(6)] and clf.n_meta_steps_ == 3
    np.testing.assert_allclose(clf.predict_proba(X[y >= 6][:20]),
                               np.load(os.path.join(DATA, "v1_classifier_proba.npy")),
                               rtol=1e-6, atol=1e-9)
    rng = np.random.default_rng(0)
    rng.uniform(0.5, 2, 20)
    Xr = rng.uniform(-3, 3, (200, 1)).astype(np.float32)
    reg = FOMAMLRegressor.load(os.path.join(DATA, "v1_regressor.fomaml"))
    assert (reg.n_outputs_, reg.n_tasks_) == (1, 20)
    np.testing.assert_allclose(reg.predict(Xr[10:30]),
                               np.load(os.path.join(DATA, "v1_regressor_pred.npy")),
                               rtol=1e-6, atol=1e-9)


# ------------------------------------ estimators own their saved state (#28)
class _OutsideRule(FOMAML):
    """A rule from outside the package, with an option of its own."""

    def __init__(self, prototype_gradient="auto", scale=1.0):
        super().__init__(prototype_gradient=prototype_gradient)
        self.scale = scale


def test_a_registered_outside_rule_saves_and_loads_with_its_options(digits, tmp_path,
                                                                    monkeypatch):
    from fomaml_sklearn import algorithms

    monkeypatch.setattr(algorithms, "_REGISTERED", {})
    algorithms.register_algorithm("outside-rule", _OutsideRule, scale=0.5)
    by_name = _fit(digits, hidden_layer_sizes=(16,), algorithm="outside-rule")
    instance = _fit(digits, hidden_layer_sizes=(16,),
                    algorithm=_OutsideRule(prototype_gradient=False, scale=0.25))
    for clf, name in ((by_name, "name.fomaml"), (instance, "instance.fomaml")):
        loaded = load_model(save_model(clf, tmp_path / name))
        assert type(loaded.algorithm_) is _OutsideRule
        assert loaded.algorithm_.get_params() == clf.algorithm_.get_params()
        assert_same_model(clf, loaded, digits)
    assert instance.algorithm_.get_params() == {"prototype_gradient": False, "scale": 0.25}
    assert by_name.algorithm_.scale == 0.5
    # In a session where it is not registered, the files are refused, saying what to do.
    monkeypatch.setattr(algorithms, "_REGISTERED", {})
    with pytest.raises(ValueError, match=r"'_OutsideRule' is not one of the rules this "
                                         r"session knows.*registered with register_algorithm"):
        load_model(tmp_path / "instance.fomaml")
    with pytest.raises(ValueError, match=r"algorithm='outside-rule', which is neither a rule "
                                         r"of this fomaml-sklearn nor registered"):
        load_model(tmp_path / "name.fomaml")


def test_a_subclass_is_an_estimator_kind_of_its_own(digits, tmp_path):
    class TinyClassifier(FOMAMLClassifier):
        pass

    X, y, X_test, _ = digits
    clf = TinyClassifier(**FAST, hidden_layer_sizes=(8,)).fit(X, y)
    loaded = load_model(save_model(clf, tmp_path / "m.fomaml"))
    assert type(loaded) is TinyClassifier
    np.testing.assert_array_equal(loaded.predict_proba(X_test), clf.predict_proba(X_test))
    with pytest.raises(ValueError, match="holds a TinyClassifier, not a FOMAMLRegressor"):
        FOMAMLRegressor.load(tmp_path / "m.fomaml")


@pytest.mark.parametrize("kind", ["adapt", "os.system", "MetaEstimatorBase"])
def test_a_file_naming_another_kind_is_refused(kind, mlp_adapted, tmp_path):
    path = save_model(mlp_adapted, tmp_path / "m.fomaml")
    _edit_document(path, lambda d: d.update(estimator=kind))
    with pytest.raises(ValueError, match=rf"holds a '{kind}', which is not an estimator kind"):
        load_model(path)


def test_load_model_alone_imports_only_the_kind_the_file_holds(mlp_adapted, tmp_path):
    import subprocess
    import sys

    path = save_model(mlp_adapted, tmp_path / "m.fomaml")
    code = ("import sys; from fomaml_sklearn.persistence import load_model; "
            "m = load_model(sys.argv[1]); "
            "print(type(m).__name__, 'fomaml_sklearn.regressor' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True,
                         text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["FOMAMLClassifier", "False"]


def test_optimizers_of_the_registry_round_trip_by_name_and_class(mlp_meta, tmp_path):
    from fomaml_sklearn._estimator import OPTIMIZERS

    for optimizer in ("nadam", torch.optim.Adagrad):
        clf = copy.deepcopy(mlp_meta).set_params(optimizer=optimizer)
        assert load_model(save_model(clf, tmp_path / "m.fomaml")).optimizer == optimizer
    assert OPTIMIZERS["adagrad"] is torch.optim.Adagrad
