"""Model files that load without running code: :func:`save_model` and :func:`load_model`.

A pickle runs code from the file when it is loaded; a *model file* holds data
only, and loading it executes nothing from the file. The format (version 1)
is the line :data:`MAGIC`, a one-line JSON envelope (``format``,
``format_version``, ``fomaml_sklearn_version``, ``payload``,
``payload_size``, ``payload_sha256``), then the payload: a safetensors file
with the networks' ``state_dict`` (``meta_model.<name>``,
``task_model.<name>``) and, as its metadata ``"fomaml_sklearn"``, a JSON
document: the estimator's kind, its tagged parameters, its fitted fields and
the libraries' versions.

This module knows the format, and no estimator: each estimator class
declares the fitted fields it saves (with the codecs of
:mod:`fomaml_sklearn._codecs`, which also write the parameters) and rebuilds
itself from a :class:`ModelFile`, and their base class registers each kind
here (:func:`register_kind`). What a file may claim and what is checked
before allocating: :ref:`persistence`.
"""

import errno
import hashlib
import json
import math
import os
import platform
import re
import sys
from pathlib import Path

import numpy as np

from ._codecs import TEXT, count, is_int

__all__ = ["FORMAT_VERSION", "MAGIC", "ModelFile", "load_model", "register_kind",
           "safetensors_module", "save_model", "write_model"]

#: The first line of every model file.
MAGIC = b"fomaml-sklearn model\n"
#: The version of the file format this package writes (and the newest it reads).
#: 2 (2026-12-05): ``task_batching_`` may be ``"threads"``, which readers of
#: version 1 do not know; they refuse the file as newer, as they should.
FORMAT_VERSION = 2
#: How deep a file's JSON values may nest.
MAX_DEPTH = 32
_FORMAT_NAME, _METADATA_KEY, _MAX_ENVELOPE = "fomaml-sklearn model", "fomaml_sklearn", 65536
_ST_DTYPES = {"F64": ("float64", 8), "F32": ("float32", 4), "F16": ("float16", 2),
              "BF16": ("bfloat16", 2), "I64": ("int64", 8), "I32": ("int32", 4),
              "I16": ("int16", 2), "I8": ("int8", 1), "U8": ("uint8", 1), "BOOL": ("bool", 1)}
# Estimator kinds a file may name: class name -> (class, restore(ModelFile)).
_KINDS = {}


def register_kind(cls, restore):
    """Let model files hold estimators of class ``cls``, rebuilt by ``restore(file)``
    from a :class:`ModelFile` (called for each estimator class by their base class)."""
    _KINDS.setdefault(cls.__name__, (cls, restore))


def safetensors_module():
    """The ``safetensors.torch`` module, or an ImportError that says how to get it."""
    try:
        import safetensors.torch
    except ImportError as exc:
        raise ImportError(
            "Saving and loading fomaml-sklearn model files needs the safetensors "
            "package, which is not installed: pip install 'fomaml-sklearn[safe]' (or "
            "pip install safetensors).") from exc
    return safetensors.torch


# ----------------------------------------------------------- reading files
def _json(text, path, what):
    """``json.loads(text)``, refusing values nested deeper than ``MAX_DEPTH``."""
    try:
        value = json.loads(text)
    except RecursionError:
        value, depth = None, MAX_DEPTH + 1
    except (UnicodeDecodeError, ValueError) as exc:
        raise _corrupted(path, f"its {what} is not valid JSON ({exc})") from exc
    else:
        depth, level = 0, [value]
        while depth <= MAX_DEPTH:
            level = [x for x in level if isinstance(x, (dict, list))]
            if not level:
                break
            depth += 1
            level = [v for x in level for v in (x.values() if isinstance(x, dict) else x)]
    if depth > MAX_DEPTH:
        raise _corrupted(path, f"its {what} nests JSON values deeper than {MAX_DEPTH} "
                               "levels, which no model file does")
    return value


def _corrupted(path, why):
    return ValueError(
        f"the model file {path} is corrupted: {why}. The file was damaged or changed "
        "after it was written; copy it again, or save the model again with "
        "save_model / the estimators' save method.")


def _not_a_model(path, data):
    """The error for a file that is not a model file, saying what it looks like."""
    head = data[:16]
    what = None
    if (len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5) or (data.endswith(b".") and (
            re.match(rb"c[\w.]+\n[\w.]+\n", data) or head[:1] in (b"(", b"]", b"}", b")"))):
        what = "a pickle (as written by pickle.dump, joblib.dump or torch.save)"
    elif head.startswith(b"PK\x03\x04"):
        what = "a zip archive, such as a torch.save file, which holds a pickle (data.pkl)"
    for magic, name in ((b"\x1f\x8b", "gzip"), (b"BZh", "bz2"), (b"\xfd7zXZ\x00", "xz"),
                        (b"\x04\x22\x4d\x18", "lz4"), (b"\x28\xb5\x2f\xfd", "zstd"),
                        (b"\x78\x01", "zlib"), (b"\x78\x5e", "zlib"), (b"\x78\x9c", "zlib"),
                        (b"\x78\xda", "zlib")):
        if head.startswith(magic):
            what = f"a {name}-compressed file, such as a compressed joblib pickle"
    if what:
        return ValueError(
            f"{path} is {what}, not a fomaml-sklearn model file; it was not loaded. "
            "Unpickling runs code from the file, so pickles are only for trusted sources: "
            "if you trust this file, load it in Python with joblib.load, and save the "
            "estimator with clf.save(path) to get a safe model file.")
    bare = len(head) >= 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < 2**30
    what = ("it is a bare safetensors file (tensors only, without the estimator's settings)"
            if bare else f"it does not start with {MAGIC!r}")
    return ValueError(
        f"{path} is not a fomaml-sklearn model file ({what}). Model files are written by "
        "FOMAMLClassifier.save, fomaml_sklearn.persistence.save_model and "
        "'fomaml-sklearn train'.")


class ModelFile:
    """A model file whose envelope, checksum and tensor index were checked:
    its JSON ``document`` and tensor ``index`` (``{name: (dtype, shape)}``).
    No tensor is read before :meth:`tensors`."""

    def __init__(self, path):
        self.path = path = Path(os.fspath(path)).expanduser()
        if path.is_dir():
            raise IsADirectoryError(f"{path} is a folder, not a model file.")
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
        version = self.field(envelope, "format_version", count(1, 2**63))
        if version > FORMAT_VERSION:
            from . import __version__

            raise ValueError(
                f"the model file {path} uses model format version {version} (written by "
                f"fomaml-sklearn {envelope.get('fomaml_sklearn_version', 'unknown')}); this "
                f"fomaml-sklearn {__version__} reads format versions up to {FORMAT_VERSION}. "
                "Upgrade fomaml-sklearn (pip install -U fomaml-sklearn) to load it.")
        fmt = self.field(envelope, "format", TEXT)
        if fmt != _FORMAT_NAME or self.field(envelope, "payload", TEXT) != "safetensors":
            raise ValueError(f"the model file {path} has format {fmt!r} with a "
                             f"{envelope['payload']!r} payload; this version reads "
                             f"{_FORMAT_NAME!r} with safetensors.")
        size = self.field(envelope, "payload_size", count(0, 2**63))
        expected = self.field(envelope, "payload_sha256", TEXT)
        self.payload = payload = data[end + 1:]
        if len(payload) != size:
            raise _corrupted(path, f"it is truncated ({len(payload)} of the {size} bytes of "
                                   "its payload are there)" if len(payload) < size else
                             f"it has {len(payload) - size} unexpected bytes after its "
                             f"{size}-byte payload")
        actual = hashlib.sha256(payload).hexdigest()
        if actual != expected.lower():
            raise _corrupted(path, f"checksum mismatch (the SHA-256 of its payload is "
                                   f"{actual[:16]}..., its header records {expected[:16]}...)")
        self.index, header = self._read_index()
        metadata = header.get("__metadata__")
        if not isinstance(metadata, dict) or not isinstance(metadata.get(_METADATA_KEY), str):
            raise self.missing(f"__metadata__.{_METADATA_KEY}")
        self.document = _json(metadata[_METADATA_KEY], path, "JSON document")
        if not isinstance(self.document, dict):
            raise self.error("an invalid JSON document (not an object)")
        self._tensors = None

    def _read_index(self):
        """The safetensors header's tensor index, every entry checked to lie
        inside the payload with as many bytes as its shape and dtype need."""
        payload = self.payload
        n = int.from_bytes(payload[:8], "little")
        if len(payload) < 8 or n > len(payload) - 8:
            raise self.invalid_payload(f"its header claims {n} bytes, but the payload has "
                                       f"{len(payload)}")
        header = _json(payload[8:8 + n], self.path, "tensor index")
        if not isinstance(header, dict):
            raise self.invalid_payload("its header is not a JSON object")
        data_size, index, spans = len(payload) - 8 - n, {}, []
        for name, entry in header.items():
            if name == "__metadata__":
                continue
            ok = (isinstance(entry, dict) and entry.get("dtype") in _ST_DTYPES
                  and isinstance(entry.get("shape"), list)
                  and all(count(0).test(d) for d in entry["shape"])
                  and isinstance(entry.get("data_offsets"), list)
                  and len(entry["data_offsets"]) == 2
                  and all(is_int(o) for o in entry["data_offsets"]))
            if not ok:
                raise self.invalid_payload(f"tensor {name!r} has an invalid entry "
                                           f"{str(entry)[:100]}")
            dtype, itemsize = _ST_DTYPES[entry["dtype"]]
            (start, stop), size = entry["data_offsets"], itemsize * math.prod(entry["shape"])
            if not 0 <= start <= stop <= data_size or stop - start != size:
                raise self.invalid_payload(
                    f"tensor {name!r} of shape {entry['shape']} ({size} bytes) claims bytes "
                    f"{start}..{stop} of {data_size}")
            index[name] = (dtype, tuple(entry["shape"]))
            spans.append((start, stop))
        spans.sort()
        if any(b[0] < a[1] for a, b in zip(spans, spans[1:])):
            raise self.invalid_payload("tensors overlap")
        return index, header

    # -- errors
    def error(self, why):
        return ValueError(f"the model file {self.path} has {why}. Save the model again "
                          "with its estimator's save method.")

    def invalid(self, name, value, allowed):
        return ValueError(
            f"the model file {self.path} has an invalid field {name!r}: expected {allowed}, "
            f"got {str(value)[:100] if isinstance(value, (list, dict)) else repr(value)}. "
            "The file was edited; save the model again with its estimator's save method.")

    def missing(self, name):
        return ValueError(
            f"the model file {self.path} is missing the field {name!r}: it was not written "
            "by fomaml_sklearn.persistence.save_model, or it was edited. Save the model "
            "again with the estimator's save method.")

    def invalid_payload(self, why):
        return ValueError(f"the model file {self.path} has a checksum that matches but an "
                          f"invalid safetensors payload: {why}. Save the model again with "
                          "its estimator's save method.")

    # -- reading
    def field(self, mapping, key, codec, where=""):
        """``mapping[key]`` decoded by ``codec`` (a :class:`Field`)."""
        if not isinstance(mapping, dict) or key not in mapping:
            raise self.missing(f"{where}{key}")
        return codec.decode(mapping[key], self, f"{where}{key}")

    def tensors(self, prefix):
        """The tensors under ``prefix.`` (CPU), by their names after it."""
        if self._tensors is None:
            try:
                self._tensors = safetensors_module().load(self.payload)
            except Exception as exc:  # safetensors raises its own error type
                raise self.invalid_payload(str(exc)) from exc
        start = f"{prefix}."
        return {k[len(start):]: t for k, t in self._tensors.items() if k.startswith(start)}


# ------------------------------------------------------------- save, load
def write_model(path, document, tensors):
    """Write a model file holding ``document`` (JSON-able) and ``tensors``
    (name -> CPU tensor); replaced atomically. Returns the path written."""
    import sklearn
    import skorch
    import torch

    from . import __version__

    document = dict(document, environment={
        "fomaml_sklearn": __version__, "python": platform.python_version(),
        "numpy": np.__version__, "torch": torch.__version__,
        "scikit-learn": sklearn.__version__, "skorch": skorch.__version__})
    metadata = {_METADATA_KEY: json.dumps(document, allow_nan=False, sort_keys=True)}
    payload = safetensors_module().save(tensors, metadata=metadata)
    envelope = {"format": _FORMAT_NAME, "format_version": FORMAT_VERSION,
                "fomaml_sklearn_version": __version__, "payload": "safetensors",
                "payload_size": len(payload),
                "payload_sha256": hashlib.sha256(payload).hexdigest()}
    data = MAGIC + json.dumps(envelope, sort_keys=True).encode("utf-8") + b"\n" + payload
    path = Path(os.fspath(path)).expanduser()
    # Errors name the user's path, never the hidden file written first.
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


def save_model(estimator, path):
    """Save a fitted estimator of this package to a safe model file: ``estimator.save(path)``.

    The file holds the parameters, the fitted attributes and the networks
    needed to predict, adapt, evaluate and score, under a SHA-256 checksum;
    not ``callbacks`` (saved as None), the meta-optimizer's state, the episode
    generator or ``history_``. See :ref:`persistence`.

    Parameters
    ----------
    estimator : FOMAMLClassifier or FOMAMLRegressor
        Fitted, with a built-in ``module``, a registered rule and optimizer,
        and int, float, bool or str labels.
    path : str or path-like
        The file to write; replaced atomically. The command line uses ``.fomaml``.

    Returns
    -------
    path : pathlib.Path
        The file written.

    Raises
    ------
    ValueError
        For what the format cannot rebuild without running user code (a user
        ``module``, an unregistered rule or optimizer class, other labels).
    TypeError
        If ``estimator`` is not an estimator of this package.
    sklearn.exceptions.NotFittedError
        If it is not fitted.
    OSError
        If the file cannot be written (naming ``path``; a file there is kept).
    """
    kind = _KINDS.get(type(estimator).__name__)
    if kind is None or kind[0] is not type(estimator):
        raise TypeError(
            f"save_model saves a fitted {' or '.join(sorted(_KINDS))}; got an object of "
            f"type {type(estimator).__name__}. For pipelines and other estimators use "
            "joblib.dump (a pickle, for trusted use only).")
    return estimator.save(path)


def load_model(path):
    """Load a model file written by :func:`save_model`, without running code from it.

    The checksum, the format version, every field and the tensor index are
    checked, and the network the file describes is compared with its tensors
    before any memory is given to it (:ref:`persistence`). Tensors saved on a
    GPU load on the CPU when CUDA is not available. The estimator predicts,
    adapts, evaluates and scores exactly like the saved one; ``callbacks`` is
    None, ``history_`` empty and the meta-optimizer new.

    Parameters
    ----------
    path : str or path-like
        A file written by :func:`save_model`, ``save`` or ``fomaml-sklearn train``.

    Returns
    -------
    estimator : FOMAMLClassifier or FOMAMLRegressor
        Fitted, with the adapted task if it was saved with one.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        If the file is corrupted or truncated, from a newer format version,
        lacks a field, claims what its tensors do not hold or what exceeds the
        bounds, or is not a model file (a pickle is never unpickled).
    ImportError
        If the safetensors package is not installed.
    """
    safetensors_module()
    file = ModelFile(path)
    kind = file.field(file.document, "estimator", TEXT)
    package = sys.modules[__package__]
    if kind not in _KINDS and kind in package.__all__:
        getattr(package, kind)  # a public estimator: importing it registers its kind
    if kind not in _KINDS:
        raise ValueError(f"the model file {file.path} holds a {kind!r}, which is not an "
                         "estimator kind of this fomaml-sklearn (it loads "
                         f"{', '.join(sorted(_KINDS)) or 'its estimators'}).")
    return _KINDS[kind][1](file)
