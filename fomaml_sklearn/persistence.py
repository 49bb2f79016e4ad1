"""Model files that load without running code: :func:`save_model` and :func:`load_model`.

A pickle (``pickle``, ``joblib``) of a fitted estimator runs code from the
file when it is loaded, so it is only for files from trusted sources. The
*model file* written here holds data only, and loading it executes nothing
from the file: the tensors are stored with safetensors and everything else
as JSON, and the estimator is rebuilt from the package's own classes, looked
up in fixed allow-lists.

The file format (version 1) is one file, in three parts:

1. the line ``fomaml-sklearn model`` (:data:`MAGIC`, with its newline);
2. a one-line JSON *envelope*, ending with a newline::

       {"format": "fomaml-sklearn model", "format_version": 1,
        "fomaml_sklearn_version": "0.1.0", "payload": "safetensors",
        "payload_size": 123456, "payload_sha256": "9f2c..."}

3. the *payload*, ``payload_size`` bytes whose SHA-256 is ``payload_sha256``:
   a standard safetensors file. Its tensors are the meta-model's
   ``state_dict`` (names ``meta_model.<name>``) and, for an adapted
   estimator, the task model's (``task_model.backbone.<name>``,
   ``task_model.head.weight``, ``task_model.head.bias``). Its string
   metadata ``"fomaml_sklearn"`` is a JSON document with the estimator's
   class, its parameters (``get_params(deep=False)``, values tagged so that
   tuples, dicts, the built-in rules and optimizers round-trip), the fitted
   attributes needed to predict and adapt, and the versions of the
   libraries that wrote it.

The checksum covers the whole payload (the tensors and the JSON document), so
a damaged or truncated file is refused instead of loaded with wrong values.
"""

import copy
import errno
import hashlib
import json
import numbers
import os
import platform
import re
import warnings
from pathlib import Path

import numpy as np

__all__ = ["FORMAT_VERSION", "MAGIC", "load_model", "save_model"]

#: The first line of every model file.
MAGIC = b"fomaml-sklearn model\n"
#: The version of the file format this package writes (and the newest it reads).
FORMAT_VERSION = 1

_FORMAT_NAME = "fomaml-sklearn model"
_METADATA_KEY = "fomaml_sklearn"
_MAX_ENVELOPE = 64 * 1024
# The rules of fomaml_sklearn.algorithms a file may name (nothing else is
# ever looked up), and the optimizers of torch.optim.
_ALGORITHMS = ("FOMAML", "MAML", "Reptile", "ANIL", "IMAML")
_OPTIMIZERS = ("Adam", "AdamW", "SGD", "RMSprop", "Adagrad", "Adadelta", "Adamax",
               "NAdam", "RAdam", "ASGD", "Rprop")
_BACKBONES = ("mlp", "conv4", "conv-4")
_TRUSTED_ONLY = ("To save it for trusted use, pickle it instead, e.g. "
                 "joblib.dump(clf, 'model.joblib'); loading a pickle runs code from the "
                 "file, so only load pickles you trust.")


# ------------------------------------------------------------------ helpers
def _safetensors():
    """The ``safetensors.torch`` module, or an ImportError that says how to get it."""
    try:
        import safetensors.torch
    except ImportError as exc:
        raise ImportError(
            "Saving and loading fomaml-sklearn model files needs the safetensors "
            "package, which is not installed: pip install 'fomaml-sklearn[safe]' (or "
            "pip install safetensors)."
        ) from exc
    return safetensors.torch


# Bounds on what a file may claim, checked before anything is allocated.
_MAX_DEPTH = 32          # nesting of any JSON value in the file
_MAX_COUNT = 2**31 - 1   # sizes and counts (features, widths, classes, outputs, ...)
_ST_DTYPES = {"F64": ("float64", 8), "F32": ("float32", 4), "F16": ("float16", 2),
              "BF16": ("bfloat16", 2), "I64": ("int64", 8), "I32": ("int32", 4),
              "I16": ("int16", 2), "I8": ("int8", 1), "U8": ("uint8", 1), "BOOL": ("bool", 1)}


def _json(text, path, what):
    """``json.loads(text)``, refusing values nested deeper than ``_MAX_DEPTH``."""
    try:
        value = json.loads(text)
    except RecursionError:
        value, depth = None, _MAX_DEPTH + 1
    except (UnicodeDecodeError, ValueError) as exc:
        raise _corrupted(path, f"its {what} is not valid JSON ({exc})") from exc
    else:
        depth, level = 0, [value]
        while depth <= _MAX_DEPTH:
            level = [x for x in level if isinstance(x, (dict, list))]
            if not level:
                break
            depth += 1
            level = [v for x in level for v in (x.values() if isinstance(x, dict) else x)]
    if depth > _MAX_DEPTH:
        raise _corrupted(path, f"its {what} nests JSON values deeper than {_MAX_DEPTH} "
                               "levels, which no model file does")
    return value


def _corrupted(path, why):
    return ValueError(
        f"the model file {path} is corrupted: {why}. The file was damaged or changed "
        "after it was written; copy it again, or save the model again with "
        "save_model / the estimators' save method."
    )


def _missing(path, field):
    return ValueError(
        f"the model file {path} is missing the field {field!r}: it was not written by "
        "fomaml_sklearn.persistence.save_model, or it was edited. Save the model again "
        "with the estimator's save method."
    )


def _field(mapping, key, types, path, where=""):
    """``mapping[key]``, checked to be of ``types`` (bools are not ints here)."""
    name = f"{where}{key}"
    if not isinstance(mapping, dict) or key not in mapping:
        raise _missing(path, name)
    value = mapping[key]
    wrong_bool = isinstance(value, bool) and bool not in types
    if wrong_bool or not isinstance(value, types):
        expected = " or ".join(t.__name__ for t in types)
        raise ValueError(
            f"the model file {path} has an invalid field {name!r}: expected {expected}, "
            f"got {value!r}. Save the model again with its estimator's save method."
        )
    return value


def _describe_foreign(data):
    """What a file that is not a model file looks like it is, from its bytes."""
    head = data[:16]
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return "a pickle (as written by pickle.dump, joblib.dump or torch.save)", True
    # Protocols 0 and 1: a text-like opcode stream that ends with STOP (".").
    if data.endswith(b".") and (re.match(rb"c[\w.]+\n[\w.]+\n", data)
                                or head[:1] in (b"(", b"]", b"}", b")")):
        return "a pickle (protocol 0 or 1)", True
    if head.startswith(b"PK\x03\x04"):
        return ("a zip archive, such as a torch.save file, which holds a pickle "
                "(data.pkl)"), True
    compressed = {b"\x1f\x8b": "gzip", b"BZh": "bz2", b"\xfd7zXZ\x00": "xz",
                  b"\x04\x22\x4d\x18": "lz4", b"\x28\xb5\x2f\xfd": "zstd"}
    for magic, name in compressed.items():
        if head.startswith(magic):
            return f"a {name}-compressed file, such as a compressed joblib pickle", True
    if head[:1] == b"\x78" and len(head) > 1 and head[1] in (0x01, 0x5E, 0x9C, 0xDA):
        return "a zlib-compressed file, such as a compressed joblib pickle", True
    if len(head) >= 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < 2**30:
        return ("a bare safetensors file (tensors only, without the estimator's "
                "settings)"), False
    return None, False


def _not_a_model(path, data):
    what, is_pickle = _describe_foreign(data)
    if is_pickle:
        return ValueError(
            f"{path} is {what}, not a fomaml-sklearn model file; it was not loaded. "
            "Unpickling runs code from the file, so pickles are only for trusted "
            "sources: if you trust this file, load it in Python with joblib.load, and "
            "save the estimator with clf.save(path) to get a safe model file."
        )
    what = f"it is {what}" if what else f"it does not start with {MAGIC!r}"
    return ValueError(
        f"{path} is not a fomaml-sklearn model file ({what}). Model files are written "
        "by FOMAMLClassifier.save, fomaml_sklearn.persistence.save_model and "
        "'fomaml-sklearn train'."
    )


# ------------------------------------------------------------ parameters
def _encode(value, where):
    """A JSON value for a parameter value; tagged objects for non-JSON types."""
    import torch

    from .algorithms import MetaAlgorithm

    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        value = float(value)
        return value if np.isfinite(value) else {"__float__": repr(value)}
    if isinstance(value, tuple):
        return {"__tuple__": [_encode(v, f"{where}[{i}]") for i, v in enumerate(value)]}
    if isinstance(value, list):
        return [_encode(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, dict):
        return {"__dict__": [[_encode(k, f"{where} key"), _encode(v, f"{where}[{k!r}]")]
                             for k, v in value.items()]}
    if isinstance(value, torch.device):
        return {"__device__": str(value)}
    if isinstance(value, MetaAlgorithm):
        name = type(value).__name__
        from . import algorithms

        if name not in _ALGORITHMS or type(value) is not getattr(algorithms, name):
            raise ValueError(
                f"{where}={value!r}: the safe model format stores the rules of "
                f"fomaml_sklearn.algorithms ({', '.join(_ALGORITHMS)}), by name or as "
                f"instances, and cannot rebuild user code such as a "
                f"{type(value).__module__}.{name}. {_TRUSTED_ONLY}"
            )
        options = {k: _encode(v, f"{where}.{k}") for k, v in value.get_params(deep=False).items()}
        return {"__algorithm__": name, "params": options}
    if isinstance(value, type) and issubclass(value, torch.optim.Optimizer):
        name = value.__name__
        if name not in _OPTIMIZERS or getattr(torch.optim, name, None) is not value:
            raise ValueError(
                f"{where}={value!r}: the safe model format stores the optimizers "
                f"'adam', 'adamw', 'sgd' and torch.optim.{{{', '.join(_OPTIMIZERS)}}}, "
                f"not user classes. {_TRUSTED_ONLY}"
            )
        return {"__optimizer__": name}
    if isinstance(value, np.random.RandomState):
        kind, keys, pos, has_gauss, cached = value.get_state(legacy=True)
        return {"__random_state__": {"keys": [int(k) for k in keys], "pos": int(pos),
                                     "has_gauss": int(has_gauss),
                                     "cached_gaussian": float(cached).hex()}}
    raise ValueError(
        f"{where}={value!r} (of type {type(value).__name__}) cannot be stored in the "
        "safe model format, which stores None, numbers, strings, lists, tuples, dicts, "
        "torch devices, RandomState instances and the rules and optimizers the package "
        f"names. Use a value of those types, or: {_TRUSTED_ONLY}"
    )


def _decode(value, path, where):
    """The parameter value of :func:`_encode`'s JSON value."""
    import torch

    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, list):
        return [_decode(v, path, f"{where}[{i}]") for i, v in enumerate(value)]

    def bad(why):
        return ValueError(f"the model file {path} has an invalid value for {where}: {why}. "
                          "Save the model again with its estimator's save method.")

    if not isinstance(value, dict) or len(value) not in (1, 2):
        raise bad(f"unexpected {value!r}")
    tag = next(iter(value))
    body = value[tag]
    if tag == "__float__" and body in ("nan", "inf", "-inf") and len(value) == 1:
        return float(body)
    if tag == "__tuple__" and isinstance(body, list) and len(value) == 1:
        return tuple(_decode(v, path, f"{where}[{i}]") for i, v in enumerate(body))
    if tag == "__dict__" and isinstance(body, list) and len(value) == 1:
        if not all(isinstance(item, list) and len(item) == 2 for item in body):
            raise bad("dict items must be [key, value] pairs")
        try:
            return {_decode(k, path, f"{where} key"): _decode(v, path, f"{where}[{k!r}]")
                    for k, v in body}
        except TypeError as exc:  # an unhashable key
            raise bad(f"invalid dict key ({exc})") from exc
    if tag == "__device__" and isinstance(body, str) and len(value) == 1:
        try:
            return torch.device(body)
        except (RuntimeError, TypeError) as exc:
            raise bad(f"{body!r} is not a torch device") from exc
    if tag == "__algorithm__" and set(value) == {"__algorithm__", "params"}:
        if body not in _ALGORITHMS:
            raise bad(f"{body!r} is not one of the rules this version knows, "
                      f"{', '.join(_ALGORITHMS)}")
        options = value["params"]
        if not isinstance(options, dict):
            raise bad("the rule's params must be a JSON object")
        from . import algorithms

        cls = getattr(algorithms, body)
        decoded = {k: _decode(v, path, f"{where}.{k}") for k, v in options.items()}
        try:
            return cls(**decoded)
        except TypeError as exc:
            raise bad(f"{body} does not take these options ({exc})") from exc
    if tag == "__optimizer__" and len(value) == 1:
        cls = getattr(torch.optim, body, None) if body in _OPTIMIZERS else None
        if not (isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer)):
            raise bad(f"{body!r} is not one of the optimizers {', '.join(_OPTIMIZERS)}")
        return cls
    if tag == "__random_state__" and isinstance(body, dict) and len(value) == 1:
        try:
            keys = np.asarray(body["keys"], dtype=np.uint32)
            state = ("MT19937", keys, int(body["pos"]), int(body["has_gauss"]),
                     float.fromhex(body["cached_gaussian"]))
            rs = np.random.RandomState()
            rs.set_state(state)
        except (KeyError, TypeError, ValueError) as exc:
            raise bad(f"not a RandomState state ({exc})") from exc
        return rs
    raise bad(f"unknown value {value!r}")


def _encode_params(estimator):
    params = estimator.get_params(deep=False)
    module = params.get("module")
    if not isinstance(module, str) or module.lower() not in _BACKBONES:
        raise ValueError(
            f"module={module!r}: the safe model format rebuilds the built-in backbones "
            "'mlp' and 'conv4' only, and cannot rebuild user code (a torch.nn.Module "
            f"class or instance). {_TRUSTED_ONLY}"
        )
    # Callbacks are skorch objects (often holding files or functions): not stored.
    params["callbacks"] = None
    return {name: _encode(value, name) for name, value in params.items()}


def _decode_params(encoded, path, known):
    if not isinstance(encoded, dict):
        raise _missing(path, "params")
    unknown = sorted(set(encoded) - set(known))
    if unknown:
        raise ValueError(
            f"the model file {path} has the parameter(s) {unknown}, which this "
            "fomaml-sklearn does not have: it was written by another version; load it "
            "with that version, or upgrade fomaml-sklearn."
        )
    return {name: _decode(value, path, name) for name, value in encoded.items()}


# ------------------------------------------------------------ fitted state
def _encode_labels(values, name):
    """``{"dtype", "item", "values"}`` for a 1-D array of int, float, bool or str labels."""
    arr = np.asarray(values)
    kind, item = arr.dtype.kind, None
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D to be saved; got shape {arr.shape}.")
    if kind in "iu":
        out = [int(v) for v in arr]
    elif kind == "b":
        out = [bool(v) for v in arr]
    elif kind == "f" and arr.dtype.itemsize <= 8:
        out = [float(v).hex() for v in arr]
    elif kind == "U":
        out = [str(v) for v in arr]
    elif kind == "O":
        items = list(arr)
        if all(isinstance(v, str) for v in items):
            item, out = "str", [str(v) for v in items]
        elif all(isinstance(v, numbers.Integral) and not isinstance(v, (bool, np.bool_))
                 for v in items):
            item, out = "int", [int(v) for v in items]
        elif all(isinstance(v, numbers.Real) and not isinstance(v, (bool, np.bool_))
                 for v in items):
            item, out = "float", [float(v).hex() for v in items]
        else:
            kinds = sorted({type(v).__name__ for v in items})
            raise ValueError(
                f"{name} is an object array holding {', '.join(kinds)} values; the safe "
                "model format stores int, float, bool and str labels only. Encode the "
                f"labels as strings or integers before fit, or: {_TRUSTED_ONLY}"
            )
    else:
        raise ValueError(
            f"{name} has dtype {arr.dtype}; the safe model format stores int, float "
            "(up to 64 bits), bool and str labels only. Encode the labels as strings "
            f"or integers before fit, or: {_TRUSTED_ONLY}"
        )
    return {"dtype": arr.dtype.str, "item": item, "values": out}


def _decode_labels(encoded, path, name):
    dtype_str = _field(encoded, "dtype", (str,), path, f"{name}.")
    values = _field(encoded, "values", (list,), path, f"{name}.")
    item = encoded.get("item")
    try:
        dtype = np.dtype(dtype_str)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"the model file {path} has an invalid dtype {dtype_str!r} for "
                         f"{name}.") from exc
    kind = dtype.kind
    expected = {"i": int, "u": int, "b": bool, "U": str}
    try:
        if kind in expected:
            if not all(isinstance(v, expected[kind]) and (kind == "b" or not isinstance(v, bool))
                       for v in values):
                raise TypeError(f"values that are not all {expected[kind].__name__}")
            return np.array(values, dtype=dtype)
        if kind == "f":
            return np.array([float.fromhex(v) for v in values], dtype=dtype)
        if kind == "O" and item in ("str", "int", "float"):
            convert = {"str": str, "int": int, "float": float.fromhex}[item]
            types = {"str": str, "int": int, "float": str}[item]
            if not all(isinstance(v, types) and not isinstance(v, bool) for v in values):
                raise TypeError(f"values that are not all {item}")
            arr = np.empty(len(values), dtype=object)
            arr[:] = [convert(v) for v in values]
            return arr
    except (TypeError, ValueError, OverflowError) as exc:
        raise ValueError(f"the model file {path} has invalid values for {name}: {exc}. "
                         "Save the model again with its estimator's save method.") from exc
    raise ValueError(f"the model file {path} stores {name} with dtype {dtype_str!r} "
                     f"(item {item!r}), which the safe format does not read.")


def _environment():
    import sklearn
    import skorch
    import torch

    from . import __version__

    return {"fomaml_sklearn": __version__, "python": platform.python_version(),
            "numpy": np.__version__, "torch": torch.__version__,
            "scikit-learn": sklearn.__version__, "skorch": skorch.__version__}


def _estimator_classes():
    """The estimators a model file may hold, by the name stored in it."""
    from .classifier import FOMAMLClassifier
    from .regressor import FOMAMLRegressor

    return {"FOMAMLClassifier": FOMAMLClassifier, "FOMAMLRegressor": FOMAMLRegressor}


def _check_estimator(estimator):
    from sklearn.exceptions import NotFittedError

    kinds = _estimator_classes()
    if type(estimator) not in kinds.values():
        raise TypeError(
            f"save_model saves a fitted FOMAMLClassifier or FOMAMLRegressor; got an object "
            f"of type {type(estimator).__name__}. For pipelines and other estimators use "
            "joblib.dump (a pickle, for trusted use only)."
        )
    if not hasattr(estimator, "meta_model_"):
        raise NotFittedError(
            f"This {type(estimator).__name__} instance is not fitted yet: call fit(X, y) "
            "before saving it."
        )


def _state_tensors(module, prefix):
    return {f"{prefix}.{name}": t.detach().to("cpu").contiguous()
            for name, t in module.state_dict().items()}


# --------------------------------------------------------------------- save
def save_model(estimator, path):
    """Save a fitted :class:`~fomaml_sklearn.FOMAMLClassifier` or
    :class:`~fomaml_sklearn.FOMAMLRegressor` to a safe model file.

    The file holds the estimator's parameters and the fitted state needed to
    predict, adapt, evaluate and score: the meta-learned network, the
    adapted task network (if any), ``classes_``, ``n_features_in_``,
    ``feature_names_in_``, ``input_shape_``, ``episode_shape_``,
    ``device_``, ``precision_``, ``inner_lr_``, ``task_batching_`` and
    ``n_meta_steps_``; with a SHA-256 checksum, the format version and the
    package version (see the module docstring for the layout). Loading it
    with :func:`load_model` executes nothing from the file.

    Not stored: ``callbacks`` (saved as None: callbacks are arbitrary
    objects), the meta-optimizer's state (Adam's moments), the episode
    generator and ``history_``. A loaded model therefore predicts, adapts,
    evaluates and scores exactly like the saved one, but to continue
    meta-training with the optimizer's state pickle the estimator instead
    (``joblib.dump``; for trusted files only). A warm-start ``fit`` of a
    loaded model restarts the optimizer's moments and the episode generator
    from the saved meta-parameters.

    Parameters
    ----------
    estimator : FOMAMLClassifier or FOMAMLRegressor
        A fitted estimator with ``module="mlp"`` or ``"conv4"``, ``algorithm``
        a name or an instance of a rule of :mod:`fomaml_sklearn.algorithms`
        and int, float, bool or str labels.
    path : str or path-like
        The file to write; it is replaced atomically (written next to it,
        then renamed). The suffix is free; the command line uses
        ``.fomaml``.

    Returns
    -------
    path : pathlib.Path
        The file written.

    Raises
    ------
    ValueError
        For what the safe format cannot rebuild without running user code: a
        user ``module`` (a torch module class or instance), a user rule or
        optimizer class, labels that are not int, float, bool or str. Pickle
        such estimators with joblib instead, for trusted use.
    sklearn.exceptions.NotFittedError
        If the estimator is not fitted.
    ImportError
        If the safetensors package is not installed.

    See Also
    --------
    load_model : Read the file back.
    fomaml_sklearn.FOMAMLClassifier.save : The same, as a method.

    Examples
    --------
    >>> from fomaml_sklearn.persistence import load_model, save_model
    >>> save_model(clf, "digits.fomaml")          # doctest: +SKIP
    >>> clf = load_model("digits.fomaml")         # doctest: +SKIP
    """
    st = _safetensors()
    _check_estimator(estimator)
    params = _encode_params(estimator)
    task_model = getattr(estimator, "task_model_", None)
    kind = type(estimator).__name__
    fitted = {
        "n_features_in_": int(estimator.n_features_in_),
        "feature_names_in_": (
            [str(n) for n in estimator.feature_names_in_]
            if hasattr(estimator, "feature_names_in_") else None),
        "input_shape_": (None if estimator.input_shape_ is None
                         else [int(s) for s in estimator.input_shape_]),
        "episode_shape_": {"n_ways": int(estimator.episode_shape_.n_ways),
                           "k_shot": int(estimator.episode_shape_.k_shot),
                           "n_query": int(estimator.episode_shape_.n_query)},
        "device_": str(estimator.device_),
        "precision_": str(estimator.precision_),
        "inner_lr_": float(estimator.inner_lr_),
        "task_batching_": str(estimator.task_batching_),
        "n_meta_steps_": int(estimator.n_meta_steps_),
        "meta_model_training": bool(estimator.meta_model_.training),
        "task_model_": None if task_model is None else {
            "n_outputs": int(task_model.head.weight.shape[0])},
    }
    if kind == "FOMAMLClassifier":
        fitted["classes_"] = _encode_labels(estimator.classes_, "classes_")
    else:
        fitted.update(n_outputs_=int(estimator.n_outputs_), n_tasks_=int(estimator.n_tasks_),
                      y_ndim=int(estimator._y_ndim))
    document = {"estimator": kind, "params": params, "fitted": fitted,
                "environment": _environment()}
    tensors = _state_tensors(estimator.meta_model_, "meta_model")
    if task_model is not None:
        tensors.update(_state_tensors(task_model, "task_model"))
    metadata = {_METADATA_KEY: json.dumps(document, allow_nan=False, sort_keys=True)}
    payload = st.save(tensors, metadata=metadata)
    envelope = {
        "format": _FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "fomaml_sklearn_version": document["environment"]["fomaml_sklearn"],
        "payload": "safetensors",
        "payload_size": len(payload),
        "payload_sha256": hashlib.sha256(payload).hexdigest(),
    }
    header = json.dumps(envelope, sort_keys=True).encode("utf-8") + b"\n"

    return _write_atomically(Path(os.fspath(path)).expanduser(), MAGIC + header + payload)


def _write_atomically(path, data):
    """Write ``data`` to a hidden file next to ``path``, then rename it; errors
    name ``path`` (the user's), never the hidden file."""
    if path.is_dir():
        raise IsADirectoryError(errno.EISDIR, f"cannot save the model to {path}: it is a "
                                "folder; give a file path, such as "
                                f"{path / 'model.fomaml'}", str(path))
    if not path.parent.is_dir():
        raise FileNotFoundError(errno.ENOENT, f"cannot save the model to {path}: the folder "
                                f"{path.parent} does not exist; create it first or save "
                                "elsewhere", str(path))
    tmp = path.with_name(f".{path.name}.{os.getpid()}.part")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except OSError as exc:  # the same error type, about the user's path
        raise OSError(exc.errno, f"cannot save the model to {path}: "
                                 f"{exc.strerror or exc}", str(path)) from None
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


# --------------------------------------------------------------------- load
def _read(path):
    """Check a model file's envelope and checksum; return ``(envelope, payload)``."""
    data = path.read_bytes()
    if not data.startswith(MAGIC):
        if MAGIC.startswith(data):
            raise _corrupted(path, f"it is truncated ({len(data)} bytes, in its header)")
        raise _not_a_model(path, data)
    end = data.find(b"\n", len(MAGIC), len(MAGIC) + _MAX_ENVELOPE)
    if end < 0:
        raise _corrupted(path, "its header line is truncated or damaged")
    envelope = _json(data[len(MAGIC):end], path, "header")
    if not isinstance(envelope, dict):
        raise _corrupted(path, "its header is not a JSON object")
    version = _field(envelope, "format_version", (int,), path)
    writer = envelope.get("fomaml_sklearn_version", "unknown")
    if version > FORMAT_VERSION:
        from . import __version__

        raise ValueError(
            f"the model file {path} uses model format version {version} (written by "
            f"fomaml-sklearn {writer}); this fomaml-sklearn {__version__} reads format "
            f"versions up to {FORMAT_VERSION}. Upgrade fomaml-sklearn "
            "(pip install -U fomaml-sklearn) to load it."
        )
    if version < 1:
        raise ValueError(f"the model file {path} has an invalid format_version {version}.")
    fmt = _field(envelope, "format", (str,), path)
    encoding = _field(envelope, "payload", (str,), path)
    if fmt != _FORMAT_NAME or encoding != "safetensors":
        raise ValueError(f"the model file {path} has format {fmt!r} with a {encoding!r} "
                         f"payload; this version reads {_FORMAT_NAME!r} with safetensors.")
    size = _field(envelope, "payload_size", (int,), path)
    expected = _field(envelope, "payload_sha256", (str,), path)
    payload = data[end + 1:]
    if len(payload) < size:
        raise _corrupted(path, f"it is truncated ({len(payload)} of the {size} bytes of "
                               "its payload are there)")
    if len(payload) > size:
        raise _corrupted(path, f"it has {len(payload) - size} unexpected bytes after its "
                               f"{size}-byte payload")
    actual = hashlib.sha256(payload).hexdigest()
    if actual != expected.lower():
        raise _corrupted(path, f"checksum mismatch (the SHA-256 of its payload is "
                               f"{actual[:16]}..., its header records {expected[:16]}...)")
    return envelope, payload


def _parse_payload(path, payload):
    """The tensor index ``{name: (dtype, shape)}`` and the JSON document of a
    checked payload, from its safetensors header; no tensor is read yet."""
    def invalid(why):
        return ValueError(f"the model file {path} has a checksum that matches but an "
                          f"invalid safetensors payload: {why}. Save the model again "
                          "with its estimator's save method.")

    n = int.from_bytes(payload[:8], "little")
    if len(payload) < 8 or n > len(payload) - 8:
        raise invalid(f"its header claims {n} bytes, but the payload has {len(payload)}")
    header = _json(payload[8:8 + n], path, "tensor index")
    if not isinstance(header, dict):
        raise invalid("its header is not a JSON object")
    data_size, index, spans = len(payload) - 8 - n, {}, []
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        ok = (isinstance(entry, dict) and entry.get("dtype") in _ST_DTYPES
              and isinstance(entry.get("shape"), list)
              and all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d <= _MAX_COUNT
                      for d in entry["shape"])
              and isinstance(entry.get("data_offsets"), list)
              and len(entry["data_offsets"]) == 2
              and all(isinstance(o, int) and not isinstance(o, bool)
                      for o in entry["data_offsets"]))
        if not ok:
            raise invalid(f"tensor {name!r} has an invalid entry {str(entry)[:100]}")
        dtype, itemsize = _ST_DTYPES[entry["dtype"]]
        start, stop = entry["data_offsets"]
        size = itemsize * int(np.prod(entry["shape"], dtype=object))
        if not 0 <= start <= stop <= data_size or stop - start != size:
            raise invalid(f"tensor {name!r} of shape {entry['shape']} ({size} bytes) "
                          f"claims bytes {start}..{stop} of {data_size}")
        index[name] = (dtype, tuple(entry["shape"]))
        spans.append((start, stop))
    spans.sort()
    if any(b[0] < a[1] for a, b in zip(spans, spans[1:])):
        raise invalid("tensors overlap")
    metadata = header.get("__metadata__")
    if not isinstance(metadata, dict) or _METADATA_KEY not in metadata:
        raise _missing(path, f"__metadata__.{_METADATA_KEY}")
    if not isinstance(metadata[_METADATA_KEY], str):
        raise invalid(f"__metadata__.{_METADATA_KEY} is not a string")
    document = _json(metadata[_METADATA_KEY], path, "JSON document")
    if not isinstance(document, dict):
        raise ValueError(f"the model file {path} has an invalid JSON document.")
    return index, document


def _load_tensors(path, payload):
    """The payload's tensors, on the CPU (after :func:`_parse_payload` checked them)."""
    try:
        return _safetensors().load(payload)
    except Exception as exc:  # safetensors raises its own error type
        raise ValueError(f"the model file {path} has a checksum that matches but an "
                         f"invalid safetensors payload: {exc}") from exc


def _check_index(module, index, prefix, path, what):
    """The tensors ``index`` holds under ``prefix.`` must be ``module``'s state
    (a network built on the "meta" device: nothing allocated), name for name,
    with the same shapes and dtypes: then building it for real allocates no
    more than the payload holds."""
    start = f"{prefix}."
    saved = {k[len(start):]: v for k, v in index.items() if k.startswith(start)}
    own = {k: (str(t.dtype).replace("torch.", ""), tuple(t.shape))
           for k, t in module.state_dict().items()}
    missing, unexpected = sorted(set(own) - set(saved)), sorted(set(saved) - set(own))
    if missing or unexpected:
        raise ValueError(
            f"the model file {path} does not fit the network its parameters describe "
            f"({what}): missing tensors {missing[:5]}, unexpected tensors "
            f"{unexpected[:5]}. The file was edited, or written by another version."
        )
    for name, (dtype, shape) in sorted(saved.items()):
        if (dtype, shape) != own[name]:
            raise ValueError(
                f"the model file {path} does not fit the network its parameters describe "
                f"({what}): tensor {name!r} is {dtype} {shape}, the network "
                f"expects {own[name][0]} {own[name][1]}. The file was edited, or "
                "written by another version."
            )


def _split_state(tensors, prefix):
    start = f"{prefix}."
    return {name[len(start):]: t for name, t in tensors.items() if name.startswith(start)}


def _materialise(module, state, device):
    """``module`` (built on the "meta" device, checked against the index) with
    memory on ``device``, holding ``state``."""
    module = module.to_empty(device=device)
    module.load_state_dict(state, strict=True)
    return module


def _count(mapping, key, path, where, low, high=_MAX_COUNT):
    """An int field, checked to lie in ``[low, high]``."""
    value = _field(mapping, key, (int,), path, where)
    if not low <= value <= high:
        raise _out_of_range(path, f"{where}{key}", value, f"an int in [{low}, {high}]")
    return value


def _choice(mapping, key, options, path, where):
    value = _field(mapping, key, (str,), path, where)
    if value not in options:
        raise _out_of_range(path, f"{where}{key}", value, f"one of {sorted(options)}")
    return value


def _out_of_range(path, name, value, allowed):
    return ValueError(
        f"the model file {path} has an invalid field {name!r}: expected {allowed}, got "
        f"{value!r}. The file was edited; save the model again with its estimator's "
        "save method."
    )


def _loading_device(name, path):
    """The saved device if it is available here, else the CPU."""
    import torch

    try:
        saved = torch.device(name)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"the model file {path} has an invalid device_ {name!r}.") from exc
    if saved.type == "cuda" and torch.cuda.is_available():
        if saved.index is not None and saved.index >= torch.cuda.device_count():
            return torch.device("cuda")
        return saved
    return torch.device("cpu")


def _is_cuda(device):
    """Whether a ``device`` parameter names a GPU (``"cuda"``, ``"cuda:1"``, ...)."""
    import torch

    if device is None or device == "auto":
        return False
    try:
        return torch.device(device).type == "cuda"
    except (RuntimeError, TypeError):
        return False


def _episode_rng(estimator):
    """A new episode generator: seeded from ``random_state`` and the steps taken."""
    seed = estimator.random_state
    if isinstance(seed, numbers.Integral) and not isinstance(seed, bool) and seed >= 0:
        return np.random.default_rng([int(seed), int(estimator.n_meta_steps_)])
    return np.random.default_rng()


def _attach_net(estimator, meta_model=None, config=None):
    """Give a loaded estimator a new (initialised, untrained) skorch net.

    The net wraps ``meta_model`` (default: ``estimator.meta_model_``) with a
    fresh meta-optimizer, the current ``callbacks``, ``verbose`` and
    optimizer settings, and a new episode generator, so that ``save_params``
    works and a ``warm_start=True`` fit continues from these meta-parameters.
    Call it again after ``set_params`` to use new callbacks in such a fit.
    """
    meta_model = estimator.meta_model_ if meta_model is None else meta_model
    config = estimator.config_ if config is None else config
    optimizer_cls = estimator._check_params()
    net_params = dict(estimator._net_params(estimator.episode_shape_), config=config)
    net = estimator._build_net(meta_model, optimizer_cls, config.device,
                               _episode_rng(estimator), net_params)
    net.initialize()
    estimator.net_ = net
    estimator.history_ = net.history
    estimator.meta_model_ = net.module_
    return estimator


def _precision_here(saved, device):
    """The saved precision, or float32 where it cannot run (float16 on a CPU)."""
    if saved == "float16" and device.type != "cuda":
        warnings.warn(
            "The model was saved with precision_='float16', which runs only on a GPU; "
            "it runs in float32 on this CPU, so its outputs may differ slightly from "
            "the saved model's.", UserWarning, stacklevel=4)
        return "float32"
    return saved


def load_model(path):
    """Load a model file written by :func:`save_model`, without running code from it.

    The file's checksum, format version and fields are checked first. The
    estimator is rebuilt from its parameters with the package's own classes
    (allow-listed rules and optimizers only) and its tensors are loaded with
    safetensors; nothing is unpickled. Tensors saved on a GPU are mapped to
    the CPU when CUDA is not available (``device_`` is then ``cpu``; the
    ``device`` parameter keeps its saved value).

    The loaded estimator predicts, adapts, evaluates and scores exactly like
    the saved one and supports ``save_params``. ``callbacks`` is None,
    ``history_`` is empty and the meta-optimizer is new: a ``warm_start=True``
    fit continues from the saved meta-parameters with fresh optimizer moments
    and a new episode generator; ``n_meta_steps_`` goes on counting from the
    saved number.

    Parameters
    ----------
    path : str or path-like
        A file written by :func:`save_model` (or ``FOMAMLClassifier.save``,
        or ``fomaml-sklearn train``).

    Returns
    -------
    estimator : FOMAMLClassifier or FOMAMLRegressor
        The fitted estimator, with the adapted task if it was saved with one.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        If the file is corrupted (checksum mismatch, truncated), comes from a
        newer format version, lacks a field, or is not a model file (a pickle,
        for instance, which is never unpickled).
    ImportError
        If the safetensors package is not installed.
    """
    import torch

    from ._config import PRECISIONS, TASK_BATCHING
    from .algorithms import available_algorithms, get_algorithm
    from .episodes import EpisodeShape
    from .heads import TaskModel

    path = Path(os.fspath(path)).expanduser()
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a folder, not a model file.")
    _safetensors()
    envelope, payload = _read(path)
    index, document = _parse_payload(path, payload)
    kind = _field(document, "estimator", (str,), path)
    kinds = _estimator_classes()
    if kind not in kinds:
        raise ValueError(f"the model file {path} holds a {kind!r}; this version loads "
                         f"{' and '.join(map(repr, kinds))} models.")
    cls = kinds[kind]
    params = _decode_params(_field(document, "params", (dict,), path), path,
                            cls._get_param_names())
    name = params.get("algorithm")
    if isinstance(name, str) and name not in available_algorithms():
        raise ValueError(
            f"the model file {path} was saved with algorithm={name!r}, which is neither a "
            "rule of this fomaml-sklearn nor registered in this session. If it was "
            "registered with fomaml_sklearn.algorithms.register_algorithm when the model "
            "was saved, register it again (same class and options) before loading."
        )
    fitted = _field(document, "fitted", (dict,), path)
    # Read every field first, so that a missing one is reported before any work.
    f = "fitted."
    if kind == "FOMAMLClassifier":
        classes = _decode_labels(_field(fitted, "classes_", (dict,), path, f), path,
                                 "fitted.classes_")
        n_outputs = len(classes)
        if n_outputs < 1:
            raise _out_of_range(path, "fitted.classes_", [], "at least one class")
    else:
        n_outputs = _count(fitted, "n_outputs_", path, f, 1)
        n_tasks = _count(fitted, "n_tasks_", path, f, 1)
        y_ndim = _count(fitted, "y_ndim", path, f, 1, 2)
        if y_ndim == 1 and n_outputs != 1:
            raise _out_of_range(path, "fitted.n_outputs_", n_outputs, "1 for a 1-D y (y_ndim 1)")
    n_features = _count(fitted, "n_features_in_", path, f, 1)
    names = _field(fitted, "feature_names_in_", (list, type(None)), path, f)
    input_shape = _field(fitted, "input_shape_", (list, type(None)), path, f)
    shape = _field(fitted, "episode_shape_", (dict,), path, f)
    shape = EpisodeShape(*(_count(shape, k, path, "fitted.episode_shape_.", 1)
                           for k in ("n_ways", "k_shot", "n_query")))
    device_name = _field(fitted, "device_", (str,), path, f)
    precision = _choice(fitted, "precision_", PRECISIONS, path, f)
    inner_lr = _field(fitted, "inner_lr_", (int, float), path, f)
    if not (np.isfinite(inner_lr) and inner_lr >= 0):
        raise _out_of_range(path, "fitted.inner_lr_", inner_lr, "a finite number >= 0")
    task_batching = _choice(fitted, "task_batching_", TASK_BATCHING, path, f)
    n_meta_steps = _count(fitted, "n_meta_steps_", path, f, 0, 2**63 - 1)
    training = _field(fitted, "meta_model_training", (bool,), path, f)
    task_info = _field(fitted, "task_model_", (dict, type(None)), path, f)
    if names is not None and (len(names) != n_features
                              or not all(isinstance(n, str) for n in names)):
        raise _out_of_range(path, "fitted.feature_names_in_", f"{len(names)} values",
                            f"n_features_in_ = {n_features} strings")
    if input_shape is not None:
        if not (len(input_shape) == 3 and all(
                isinstance(s, int) and not isinstance(s, bool) and 1 <= s <= _MAX_COUNT
                for s in input_shape) and int(np.prod(input_shape, dtype=object)) == n_features):
            raise _out_of_range(path, "fitted.input_shape_", input_shape,
                                "(channels, height, width), positive, whose product is "
                                f"n_features_in_ = {n_features}")
        input_shape = tuple(input_shape)
    task_outputs = None if task_info is None else _count(
        task_info, "n_outputs", path, "fitted.task_model_.", 1)

    clf = cls(**params)
    if _is_cuda(clf.device) and not torch.cuda.is_available():
        warnings.warn(
            f"The model in {path} was saved with device={clf.device!r}, but CUDA is not "
            "available here: it is loaded on the CPU, and its device parameter is set "
            "to 'cpu' (device_ is cpu).", UserWarning, stacklevel=2)
        clf.set_params(device="cpu")
    if not isinstance(clf.module, str):
        raise ValueError(f"the model file {path} has module={clf.module!r}; the safe "
                         "format rebuilds 'mlp' and 'conv4' only.")
    try:
        clf._check_params()
    except (TypeError, ValueError) as exc:
        raise ValueError(f"the model file {path} holds invalid parameters: {exc}") from exc

    device = _loading_device(device_name, path)
    # The rows of a "fixed" head: as saved (checked against the network below).
    rows = max(1, (index.get("meta_model.head_weight", (None, (1,)))[1] or (1,))[0])
    try:  # on the "meta" device: shapes only, nothing allocated
        with torch.device("meta"):
            meta_model = clf._build_meta_model(n_features, input_shape, rows, None)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise ValueError(f"the model file {path} describes a network that cannot be "
                         f"built: {exc}") from exc
    _check_index(meta_model, index, "meta_model", path, "meta_model")
    task_names = {k for k in index if k.startswith("task_model.")}
    if task_info is None and task_names:
        raise _corrupted(path, "it holds task-model tensors but no task model")
    if task_info is not None:
        if task_outputs != n_outputs:
            what = "classes_" if kind == "FOMAMLClassifier" else "outputs (n_outputs_)"
            raise ValueError(f"the model file {path} is inconsistent: {n_outputs} {what} "
                             f"but a task model of {task_outputs} outputs.")
        task_model = TaskModel(copy.deepcopy(meta_model.backbone),
                               torch.empty(n_outputs, meta_model.feature_dim, device="meta"),
                               torch.empty(n_outputs, device="meta"))
        _check_index(task_model, index, "task_model", path, "task_model")
    # Every tensor is now known to fit: read them, and give the network memory.
    tensors = _load_tensors(path, payload)
    meta_model = _materialise(meta_model, _split_state(tensors, "meta_model"), "cpu")
    meta_model.train(training)

    settings = dict(clf.get_params(deep=False), inner_lr=float(inner_lr),
                    precision=_precision_here(precision, device),
                    task_batching=task_batching)
    get_algorithm(clf.algorithm)  # a known rule (checked above)
    try:
        config = clf._resolve_config(settings, meta_model, device)
    except ValueError:  # a batched path this model lacks: it only matters in fit
        config = clf._resolve_config(dict(settings, task_batching="loop"), meta_model, device)

    clf.n_features_in_ = n_features
    if names is not None:
        clf.feature_names_in_ = np.asarray(names, dtype=object)
    clf.n_meta_steps_ = n_meta_steps
    clf.episode_shape_ = shape
    clf.config_ = config
    _attach_net(clf, meta_model, config)
    clf.algorithm_ = config.algorithm
    clf.device_ = device
    clf.precision_ = config.precision
    clf.inner_lr_ = config.inner_lr
    clf.task_batching_ = config.task_batching
    clf.input_shape_ = input_shape
    if kind == "FOMAMLClassifier":
        clf.classes_ = classes
    else:
        clf.n_outputs_, clf.n_tasks_, clf._y_ndim = n_outputs, n_tasks, y_ndim

    if task_info is None:
        clf.task_model_ = None
        return clf
    task_model = _materialise(task_model, _split_state(tensors, "task_model"), "cpu")
    task_model.backbone.requires_grad_(False)
    clf.task_model_ = task_model.to(device).eval()
    return clf
