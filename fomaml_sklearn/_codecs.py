"""The codecs of model files: how parameter values and fitted fields are
written as JSON and read back, checked.

Parameters are tagged JSON (:func:`encode_params`, :func:`decode_params`):
tuples, dicts, devices, RandomState, and the rules and optimizers of their
registries round-trip, and nothing else is rebuilt. Each estimator class
declares its saved fitted fields as a table ``{name: field}`` of
:class:`Field` codecs: a field writes a value (``encode``) and reads it back
from a :class:`~fomaml_sklearn.persistence.ModelFile` (``decode``), checked
against its bounds, so that what a file claims is refused with a ValueError
naming the field, the value and what is allowed.
"""

import math
import numbers

import numpy as np

from . import algorithms

__all__ = ["FLAG", "MAX_COUNT", "NAMES", "OBJECT", "TEXT", "TRUSTED_ONLY", "Field", "Labels",
           "Optional", "Record", "choice", "count", "decode_params", "decode_value",
           "encode_params", "encode_value", "is_int", "real", "sizes"]

#: The largest size or count a file may claim (features, widths, classes, ...).
MAX_COUNT = 2**31 - 1
TRUSTED_ONLY = ("To save it for trusted use, pickle it instead, e.g. "
                "joblib.dump(clf, 'model.joblib'); loading a pickle runs code from the "
                "file, so only load pickles you trust.")


def _is_bool(value):
    return isinstance(value, (bool, np.bool_))


def is_int(value):
    """Whether ``value`` is an integer (numpy's too), not a bool."""
    return isinstance(value, numbers.Integral) and not _is_bool(value)


# -------------------------------------------------------------- parameters
def _rule_classes():
    """The rule classes a file may name, by class name: those of the algorithm registry."""
    classes = {}
    for name in algorithms.available_algorithms():
        rule = type(algorithms.get_algorithm(name))
        classes.setdefault(rule.__name__, rule)
    return classes


def encode_value(value, where, optimizers):
    """A JSON value for a parameter value (tagged objects for non-JSON types);
    ``optimizers`` maps names to the optimizer classes that may be stored."""
    import torch

    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, np.bool_):
        return bool(value)
    if is_int(value):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value) if math.isfinite(value) else {"__float__": repr(float(value))}
    if isinstance(value, (tuple, list)):
        items = [encode_value(v, f"{where}[{i}]", optimizers) for i, v in enumerate(value)]
        return {"__tuple__": items} if isinstance(value, tuple) else items
    if isinstance(value, dict):
        return {"__dict__": [[encode_value(k, f"{where} key", optimizers),
                              encode_value(v, f"{where}[{k!r}]", optimizers)]
                             for k, v in value.items()]}
    if isinstance(value, torch.device):
        return {"__device__": str(value)}
    if isinstance(value, algorithms.MetaAlgorithm):
        rules, name = _rule_classes(), type(value).__name__
        if rules.get(name) is not type(value):
            raise ValueError(
                f"{where}={value!r}: the safe model format stores the rules of the algorithm "
                f"registry ({', '.join(sorted(rules))}), by name or as instances, and cannot "
                f"rebuild user code such as a {type(value).__module__}.{name} that is not "
                "registered: register it with fomaml_sklearn.algorithms.register_algorithm "
                f"(in the session that saves and in the one that loads), or: {TRUSTED_ONLY}")
        return {"__algorithm__": name, "params": {
            k: encode_value(v, f"{where}.{k}", optimizers)
            for k, v in value.get_params(deep=False).items()}}
    if isinstance(value, type) and issubclass(value, torch.optim.Optimizer):
        known = {cls.__name__: cls for cls in optimizers.values()}
        if known.get(value.__name__) is not value:
            raise ValueError(
                f"{where}={value!r}: the safe model format stores the optimizers "
                f"{sorted(optimizers)} (by name or class), not user classes. {TRUSTED_ONLY}")
        return {"__optimizer__": value.__name__}
    if isinstance(value, np.random.RandomState):
        _, keys, pos, has_gauss, cached = value.get_state(legacy=True)
        return {"__random_state__": {"keys": [int(k) for k in keys], "pos": int(pos),
                                     "has_gauss": int(has_gauss),
                                     "cached_gaussian": float(cached).hex()}}
    raise ValueError(
        f"{where}={value!r} (of type {type(value).__name__}) cannot be stored in the safe "
        "model format, which stores None, numbers, strings, lists, tuples, dicts, torch "
        "devices, RandomState instances and the registered rules and optimizers. Use a "
        f"value of those types, or: {TRUSTED_ONLY}")


def decode_value(value, file, where, optimizers):
    """The parameter value of :func:`encode_value`'s JSON value."""
    import torch

    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, list):
        return [decode_value(v, file, f"{where}[{i}]", optimizers) for i, v in enumerate(value)]
    tag = next(iter(value), None) if isinstance(value, dict) else None
    body = value.get(tag) if tag else None
    one = isinstance(value, dict) and len(value) == 1
    try:
        if one and tag == "__float__" and body in ("nan", "inf", "-inf"):
            return float(body)
        if one and tag == "__tuple__" and isinstance(body, list):
            return tuple(decode_value(v, file, f"{where}[{i}]", optimizers)
                         for i, v in enumerate(body))
        if one and tag == "__dict__" and isinstance(body, list):
            return {decode_value(k, file, f"{where} key", optimizers):
                    decode_value(v, file, f"{where}[{k!r}]", optimizers) for k, v in body}
        if one and tag == "__device__" and isinstance(body, str):
            return torch.device(body)
        if tag == "__algorithm__" and set(value) == {tag, "params"}:
            rules = _rule_classes()
            if body not in rules:
                raise ValueError(f"{body!r} is not one of the rules this session knows, "
                                 f"{', '.join(sorted(rules))} (an outside rule must be "
                                 "registered with register_algorithm before loading)")
            return rules[body](**{k: decode_value(v, file, f"{where}.{k}", optimizers)
                                  for k, v in dict(value["params"]).items()})
        if one and tag == "__optimizer__":
            known = {cls.__name__: cls for cls in optimizers.values()}
            if body not in known:
                raise ValueError(f"{body!r} is not one of the optimizers {sorted(known)}")
            return known[body]
        if one and tag == "__random_state__":
            rs = np.random.RandomState()
            rs.set_state(("MT19937", np.asarray(body["keys"], dtype=np.uint32),
                          int(body["pos"]), int(body["has_gauss"]),
                          float.fromhex(body["cached_gaussian"])))
            return rs
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise file.error(f"an invalid value for {where}: {exc}") from exc
    raise file.error(f"an invalid value for {where}: unexpected {str(value)[:100]}")


def encode_params(params, optimizers):
    return {name: encode_value(value, name, optimizers) for name, value in params.items()}


def decode_params(encoded, file, known, optimizers):
    """The parameters of an estimator with the parameter names ``known``."""
    unknown = sorted(set(encoded) - set(known))
    if unknown:
        raise ValueError(
            f"the model file {file.path} has the parameter(s) {unknown}, which this "
            "fomaml-sklearn does not have: it was written by another version; load it "
            "with that version, or upgrade fomaml-sklearn.")
    return {name: decode_value(value, file, name, optimizers) for name, value in encoded.items()}


# ----------------------------------------------------------- fitted fields
class Field:
    """How a fitted field is written to JSON (``encode``) and read back,
    checked (``decode``). ``attr``: the attribute it fills (default: the
    field's name); ``set_none=False``: a null leaves the attribute unset."""

    def __init__(self, kind, test=None, encode=None, read=None, attr=None, set_none=True):
        self.kind, self.test, self.attr, self.set_none = kind, test, attr, set_none
        self._encode, self.read = encode, read

    def encode(self, value):
        return value if self._encode is None else self._encode(value)

    def decode(self, value, file, name):
        if self.test is not None and not self.test(value):
            raise file.invalid(name, value, self.kind)
        return value if self.read is None else self.read(value)


def count(low, high=MAX_COUNT, attr=None):
    """An int in ``[low, high]``."""
    return Field(f"an int in [{low}, {high}]", lambda v: is_int(v) and low <= v <= high,
                 int, attr=attr)


def real(low):
    """A finite number ``>= low``."""
    return Field(f"a finite number >= {low}", lambda v: isinstance(v, (int, float)) and not
                 _is_bool(v) and math.isfinite(v) and v >= low, float, float)


def choice(options):
    """One of the strings ``options``."""
    return Field(f"one of {sorted(options)}", lambda v: isinstance(v, str) and v in options, str)


def sizes(length):
    """A list of ``length`` positive ints, read as a tuple."""
    return Field(f"{length} ints in [1, {MAX_COUNT}]", lambda v: isinstance(v, list) and len(
        v) == length and all(count(1).test(x) for x in v), lambda v: [int(x) for x in v], tuple)


FLAG = Field("true or false", lambda v: isinstance(v, bool), bool)
TEXT = Field("a string", lambda v: isinstance(v, str), str)
#: Strings, read as an object array (``feature_names_in_``).
NAMES = Field("a list of strings", lambda v: isinstance(v, list) and all(
    isinstance(x, str) for x in v), lambda v: [str(x) for x in v],
    lambda v: np.asarray(v, dtype=object))


class Optional(Field):
    """None or ``field``."""

    def __init__(self, field, set_none=True):
        super().__init__(f"null or {field.kind}", None, lambda v: None if v is None else
                         field.encode(v), attr=field.attr, set_none=set_none)
        self.field = field

    def decode(self, value, file, name):
        return None if value is None else self.field.decode(value, file, name)


class Record(Field):
    """A JSON object of named fields, read as ``make(**values)``."""

    def __init__(self, make, **fields):
        super().__init__("an object", None, lambda v: {
            k: f.encode(v[k] if isinstance(v, dict) else getattr(v, k))
            for k, f in fields.items()})
        self.make, self.fields = make, fields

    def decode(self, value, file, name):
        return self.make(**{k: file.field(value, k, f, f"{name}.")
                            for k, f in self.fields.items()})


class Labels(Field):
    """A 1-D array of int, float, bool or str labels, with its dtype."""

    def __init__(self):
        super().__init__("labels")

    _CONVERT = {"int": (int, int), "str": (str, str), "float": (float.fromhex, str),
                "bool": (bool, bool)}
    _KIND = {"i": "int", "u": "int", "b": "bool", "U": "str", "f": "float"}

    def encode(self, values):
        arr, item = np.asarray(values), None
        kind = arr.dtype.kind
        if kind == "O" and arr.ndim == 1:
            tests = {"str": lambda v: isinstance(v, str), "int": is_int,
                     "float": lambda v: isinstance(v, numbers.Real) and not _is_bool(v)}
            item = next((k for k, test in tests.items() if all(map(test, arr))), None)
            if item is None:
                kinds = ", ".join(sorted({type(v).__name__ for v in arr}))
                raise ValueError(
                    f"classes_ is an object array holding {kinds} values; the safe model "
                    "format stores int, float, bool and str labels only. Encode the labels "
                    f"as strings or integers before fit, or: {TRUSTED_ONLY}")
        elif arr.ndim != 1 or kind not in "iubUf" or (kind == "f" and arr.itemsize > 8):
            raise ValueError(
                f"classes_ has dtype {arr.dtype} and shape {arr.shape}; the safe model "
                "format stores 1-D int, float (up to 64 bits), bool and str labels only. "
                f"Encode the labels as strings or integers before fit, or: {TRUSTED_ONLY}")
        item_of = item or self._KIND[kind]
        encode = (lambda v: float(v).hex()) if item_of == "float" else self._CONVERT[item_of][0]
        return {"dtype": arr.dtype.str, "item": item, "values": [
            encode(v.item() if hasattr(v, "item") else v) for v in arr]}

    def decode(self, value, file, name):
        dtype = file.field(value, "dtype", TEXT, f"{name}.")
        values = file.field(value, "values", Field("a list"), f"{name}.")
        item = value.get("item")
        try:
            dtype = np.dtype(dtype)
            item_of = item if dtype.kind == "O" else self._KIND[dtype.kind]
            convert, stored = self._CONVERT[item_of]
            if not (isinstance(values, list) and values and all(
                    isinstance(v, stored) and (stored is bool or not isinstance(v, bool))
                    for v in values)):
                raise TypeError(f"values that are not all {item_of}")
            longest = max(len(v) for v in values) if item_of == "str" else 1
            if dtype.itemsize * len(values) > max(2**24, 8 * longest * len(values)):
                raise ValueError(f"dtype {dtype.str} is far wider than its values")
            arr = np.empty(len(values), dtype=dtype)
            arr[:] = [convert(v) for v in values]
            return arr
        except (KeyError, TypeError, ValueError, OverflowError) as exc:
            raise file.invalid(name, value.get("values"), "a non-empty list of int, float, "
                               f"bool or str labels of its dtype ({exc})") from exc


#: A JSON object, as it is.
OBJECT = Field("a JSON object", lambda v: isinstance(v, dict))
