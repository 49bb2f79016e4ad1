"""Declarative parameter constraints: a table of small checkers, one per parameter.

Each checker tests a value and, when it does not fit, raises an error that
names the parameter, the value received and what is allowed, for example
``n_ways must be an integer >= 2; got 1.``. ``check_params(table, values)``
runs a table; the estimators call it at the start of ``fit``, before any
fitted state is touched.
"""

import numbers

import numpy as np

__all__ = ["Bool", "Callbacks", "Either", "Int", "Mapping", "NoneOr", "Options", "RandomState",
           "Real", "Shape", "Sizes", "check_params"]


class _Constraint:
    #: What is allowed, for the message.
    allowed = ""

    def fits(self, value):
        raise NotImplementedError

    def check(self, name, value):
        if not self.fits(value):
            raise ValueError(f"{name} must be {self.allowed}; got {value!r}.")


class Int(_Constraint):
    """An integer (not a bool) ``>= low``."""

    def __init__(self, low):
        self.low = low
        self.allowed = f"an integer >= {low}"

    def fits(self, value):
        return (isinstance(value, numbers.Integral) and not isinstance(value, bool)
                and value >= self.low)


class Real(_Constraint):
    """A finite real number (not a bool) above ``low`` (``>=`` unless strict)
    and, with ``high``, below it (strictly)."""

    def __init__(self, low=0.0, strict=False, high=None):
        self.low, self.strict, self.high = low, strict, high
        op = ">" if strict else ">="
        self.allowed = f"a finite number {op} {low}" + (
            f" and < {high}" if high is not None else "")

    def fits(self, value):
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            return False
        if not np.isfinite(value):
            return False
        if value < self.low or (self.strict and value == self.low):
            return False
        return self.high is None or value < self.high


class Bool(_Constraint):
    """True or False (numpy bools too); strings such as ``'no'`` are refused."""

    allowed = "True or False"

    def fits(self, value):
        return isinstance(value, (bool, np.bool_))


class Options(_Constraint):
    """One of a fixed set of values."""

    def __init__(self, *options):
        self.options = options
        self.allowed = "one of " + ", ".join(repr(o) for o in options)

    def fits(self, value):
        return isinstance(value, (str, bool)) and value in self.options


class Mapping(_Constraint):
    """A dict with string keys."""

    allowed = "a dict of keyword arguments"

    def fits(self, value):
        return isinstance(value, dict) and all(isinstance(k, str) for k in value)


class Sizes(_Constraint):
    """A non-empty tuple or list of positive integers."""

    allowed = "a non-empty tuple of positive integers, e.g. (64, 64)"

    def fits(self, value):
        return (isinstance(value, (tuple, list)) and len(value) > 0
                and all(Int(1).fits(s) for s in value))


class Shape(_Constraint):
    """``(channels, height, width)`` or ``(height, width)``, positive integers."""

    allowed = "(channels, height, width) or (height, width) of positive integers"

    def fits(self, value):
        return Sizes().fits(value) and len(value) in (2, 3)


class RandomState(_Constraint):
    """None, an integer in [0, 2**32 - 1] or a numpy RandomState."""

    allowed = "None, an integer in [0, 2**32 - 1] or a numpy.random.RandomState"

    def fits(self, value):
        if value is None or isinstance(value, np.random.RandomState):
            return True
        return Int(0).fits(value) and value <= 2**32 - 1


class Callbacks(_Constraint):
    """None or a list of skorch callbacks (instances, classes or
    ``(name, callback)`` pairs)."""

    allowed = ("None or a list of skorch callbacks, such as "
               "[EarlyStopping(monitor='valid_acc', lower_is_better=False)]")

    def fits(self, value):
        if value is None:
            return True
        if not isinstance(value, (list, tuple)):
            return False
        from skorch.callbacks import Callback

        def one(cb):
            if isinstance(cb, tuple) and len(cb) == 2 and isinstance(cb[0], str):
                cb = cb[1]
            return isinstance(cb, Callback) or (isinstance(cb, type)
                                                and issubclass(cb, Callback))

        return all(one(cb) for cb in value)


class NoneOr(_Constraint):
    """None or what ``constraint`` allows."""

    def __init__(self, constraint):
        self.constraint = constraint
        self.allowed = f"None or {constraint.allowed}"

    def fits(self, value):
        return value is None or self.constraint.fits(value)


class Either(_Constraint):
    """What any of ``constraints`` allows."""

    def __init__(self, *constraints):
        self.constraints = constraints
        self.allowed = " or ".join(c.allowed for c in constraints)

    def fits(self, value):
        return any(c.fits(value) for c in self.constraints)


def check_params(table, values):
    """Check ``values[name]`` against ``table[name]`` for every name of ``table``.

    Raises
    ------
    ValueError
        For the first parameter that does not fit, naming it, the value and
        what is allowed.
    """
    for name, constraint in table.items():
        constraint.check(name, values[name])
