"""skorch callbacks specific to meta-training (skorch's own ones work too)."""

import time

from skorch.callbacks import Callback

__all__ = ["TimeLimit", "TimeLimitReached", "meta_steps_per_epoch"]


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
        Wall-clock budget of the whole ``fit``.
    sink : callable, default=print
        Where the stopping message goes (printed only when the net is verbose).
    """

    def __init__(self, minutes, sink=print):
        self.minutes = minutes
        self.sink = sink

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
