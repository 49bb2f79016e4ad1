"""skorch callbacks specific to meta-training (skorch's own ones work too)."""

import math
import numbers
import time

from skorch.callbacks import Callback

__all__ = ["TimeCosineLR", "TimeLimit", "TimeLimitReached", "meta_steps_per_epoch"]


def meta_steps_per_epoch(history):
    """Meta-steps (training batches) recorded in each epoch of a skorch history.

    Validation batches share an epoch's ``batches`` list; only training
    batches carry ``train_loss``.

    Parameters
    ----------
    history : skorch.history.History
        A fitted estimator's ``history_`` (or a skorch net's ``history``).

    Returns
    -------
    steps : list of int
        One count per epoch.
    """
    return [sum(1 for batch in epoch["batches"] if "train_loss" in batch) for epoch in history]


def _check_minutes(owner, minutes, positive):
    """Raise unless ``minutes`` is a finite real number (numpy's too, not a
    bool or a string) that is > 0 (``positive``) or >= 0."""
    number = isinstance(minutes, numbers.Real) and not isinstance(minutes, bool)
    if not (number and math.isfinite(minutes) and (minutes > 0 if positive else minutes >= 0)):
        allowed = "a finite number > 0" if positive else "a finite number >= 0"
        kind = "" if number else f" of type {type(minutes).__name__}"
        raise (ValueError if number else TypeError)(
            f"{owner}(minutes={minutes!r}): minutes must be {allowed} (the budget in "
            f"minutes, e.g. {owner}(minutes=30)); got {minutes!r}{kind}."
        )


def _check_callable(owner, name, value):
    if not callable(value):
        raise TypeError(f"{owner}({name}={value!r}): {name} must be a callable; got "
                        f"{type(value).__name__}.")


class TimeLimitReached(KeyboardInterrupt):
    """Raised by :class:`TimeLimit` to end meta-training.

    A ``KeyboardInterrupt`` so that skorch ends the training loop the way it
    does on Ctrl-C (keeping the last completed meta-step), but told apart from
    a real interruption.
    """


class TimeLimit(Callback):
    """Stop meta-training at the end of the first epoch past a time budget.

    Parameters
    ----------
    minutes : float
        Wall-clock budget of the whole ``fit``, ``>= 0`` (0: stop after the
        first epoch).
    sink : callable, default=print
        Where the stopping message goes (printed only when the net is verbose).

    Raises
    ------
    TypeError
        If ``minutes`` is not a real number (a string, say) or ``sink`` is
        not callable.
    ValueError
        If ``minutes`` is negative or not finite.
    """

    def __init__(self, minutes, sink=print):
        _check_minutes("TimeLimit", minutes, positive=False)
        _check_callable("TimeLimit", "sink", sink)
        self.minutes = minutes
        self.sink = sink

    def initialize(self):
        # Again here: set_params may have changed them since __init__.
        _check_minutes("TimeLimit", self.minutes, positive=False)
        _check_callable("TimeLimit", "sink", self.sink)
        return self

    def on_train_begin(self, net, **kwargs):
        self.start_ = time.perf_counter()

    def on_epoch_end(self, net, **kwargs):
        elapsed = time.perf_counter() - self.start_
        if elapsed >= 60.0 * self.minutes:
            if net.verbose:
                self.sink(
                    f"Stopping after {len(net.history)} epochs: the time limit of "
                    f"{self.minutes:g} min is reached ({elapsed / 60:.1f} min)."
                )
            raise TimeLimitReached


class TimeCosineLR(Callback):
    """Anneal the meta learning rate to 0 along a cosine over a time budget.

    The estimators' ``lr_schedule="cosine"`` anneals over a number of
    meta-steps (``max_epochs * meta_batches_per_epoch``), which a
    time-budgeted fit does not know in advance. This callback anneals over
    wall-clock time instead: before every meta-step, each parameter group's
    rate is set to ``lr0 * (1 + cos(pi * f)) / 2``, where ``lr0`` is its rate
    when training first began (kept as the group's ``"initial_lr"``) and
    ``f`` the fraction of the budget elapsed (capped at 1). Use it beside
    :class:`TimeLimit` with the same ``minutes``, and keep the estimator's
    ``lr_schedule="constant"``. The rate of every meta-step is recorded in
    the history as ``"event_lr"``, the key of skorch's ``LRScheduler``
    (which ``lr_schedule="cosine"`` uses), so both schedules read alike.

    Like the time limit itself, the schedule depends on the machine's speed:
    two runs agree step for step only if their meta-steps take equally long.

    Parameters
    ----------
    minutes : float
        Length of the annealing, from the start of meta-training.
    clock : callable, default=time.perf_counter
        Seconds as a float; replaceable for tests.

    Raises
    ------
    TypeError
        If ``minutes`` is not a real number or ``clock`` is not callable.
    ValueError
        If ``minutes`` is not a finite number > 0.
    """

    def __init__(self, minutes, clock=time.perf_counter):
        _check_minutes("TimeCosineLR", minutes, positive=True)
        _check_callable("TimeCosineLR", "clock", clock)
        self.minutes = minutes
        self.clock = clock

    def initialize(self):
        # Again here: set_params may have changed them since __init__.
        _check_minutes("TimeCosineLR", self.minutes, positive=True)
        _check_callable("TimeCosineLR", "clock", self.clock)
        return self

    def on_train_begin(self, net, **kwargs):
        self.start_ = self.clock()
        # Kept in the groups (as torch's schedulers do), so that a warm
        # start on the same optimizer anneals from the original rates, not
        # from where the previous budget left them.
        for group in net.optimizer_.param_groups:
            group.setdefault("initial_lr", group["lr"])

    def rate_factor(self):
        """The factor ``(1 + cos(pi * f)) / 2`` applied to the rates now."""
        fraction = min(1.0, (self.clock() - self.start_) / (60.0 * self.minutes))
        return 0.5 * (1.0 + math.cos(math.pi * fraction))

    def on_batch_begin(self, net, batch=None, training=False, **kwargs):
        if not training:
            return
        factor = self.rate_factor()
        for group in net.optimizer_.param_groups:
            group["lr"] = group["initial_lr"] * factor
        net.history.record_batch("event_lr", net.optimizer_.param_groups[0]["lr"])
