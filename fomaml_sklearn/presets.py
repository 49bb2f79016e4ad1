"""Named configurations: the best measured settings, as plain parameter dicts.

Each preset is a ``dict`` of :class:`~fomaml_sklearn.FOMAMLClassifier`
parameters, so ``FOMAMLClassifier(**presets.OMNIGLOT)`` is the configuration
the benchmarks measured, and any entry can be overridden the usual way::

    from fomaml_sklearn import FOMAMLClassifier, presets

    clf = FOMAMLClassifier(**{**presets.OMNIGLOT, "max_epochs": 60})

The benchmarks (``benchmarks/few_shot.py``, ``ablation.py``,
``within_alphabet.py``) and ``fomaml-sklearn train omniglot`` read these
dicts; nothing else keeps a copy. The measurement behind each preset is in
its comment and in ``docs/performance.md``.

Budgets: ``lr_schedule="cosine"`` anneals the meta rate to 0 over
``max_epochs * meta_batches_per_epoch`` meta-steps; a time-budgeted fit
anneals over its minutes instead with ``callbacks.TimeCosineLR`` (and
``lr_schedule="constant"``), as the benchmarks' ``--minutes`` do.
"""

__all__ = ["OMNIGLOT", "OMNIGLOT_WITHIN_ALPHABET", "PRESETS", "TABULAR"]

#: Omniglot (or any set of small grey-scale images with many classes), the
#: MAML-paper shape: Conv-4, 28x28. Chosen on a validation split of the
#: meta-training characters (``benchmarks/ablation.py``): 10-way training
#: tasks, meta rate 3e-3 annealed along a cosine, training shifts of up to
#: 2 px, test-time shifts of 1 px. 700 meta-steps (14 epochs of 50): 97.5 %
#: 5-way 1-shot on the 423 unseen characters of the MAML split; 30 minutes
#: on 2 cores (2900 meta-steps, float32, the meta-gradient through the
#: support statistics): 99.04 / 99.71 / 96.67 / 99.04 % (5w1s / 5w5s /
#: 20w1s / 20w5s; test-time shifts of 1 px on the first three).
OMNIGLOT = dict(
    module="conv4",
    n_filters=64,
    head="prototype",
    n_ways=10,
    k_shot=1,
    n_query=5,
    meta_batch_size=16,
    inner_lr="auto",
    n_inner_steps=1,
    n_inner_steps_test=3,
    lr=3e-3,
    lr_schedule="cosine",
    augment_shift=2,
    test_shift=1,
    meta_batches_per_epoch=50,
    max_epochs=14,
)

#: Telling apart the characters of one unseen alphabet from one drawing of
#: each (Lake et al. 2015's within-alphabet 20-way one-shot task), meta-trained
#: on the other background alphabets with their rotations
#: (``benchmarks/within_alphabet.py``; docs/performance.md). ``OMNIGLOT``
#: with the ``"cosine"`` head (prototypes by cosine similarity at a learnt
#: scale: 82.29 % against 77.20 % for Euclidean prototypes at 500 meta-steps,
#: 86.98 / 88.27 % against 86.29 / 87.67 % at 5750, without / with test-time
#: shifts; 1.03x the cost per meta-step), no test-time inner step (on the 20
#: classes they changed nothing: 82.94 / 82.96 / 82.96 % at 0 / 3 / 10 steps,
#: and adapting is 8x faster without them) and test-time shifts of up to 2 px
#: (82.94 / 84.42 / 84.96 % at 0 / 1 / 2 px). Fit it with ``groups`` that put
#: similar classes together (alphabets where known; the benchmark passes
#: blocks of 20 consecutive character numbers, ``--groups 20``) on
#: ``datasets.rotate_classes(X, y, mirror=True)`` (each rotation's mirror
#: image a class of its own): **88.27 % after 5750 meta-steps** (55 minutes on
#: 2 cores on the day the Euclidean head ran them). Grouped tasks train
#: stably since the meta-gradient runs through the support statistics
#: (docs/design.md): 86.93 % in 55 minutes against 84.96 % before; at equal
#: meta-steps mirror images added +0.7 point and the cosine head +0.6.
#: Measured and not kept: no inner step in training either (1.2x the
#: meta-steps per second, the same accuracy in about the same time: 84.62 %
#: after 59 minutes), 20-way training tasks (+1 point at 500 meta-steps for
#: twice the cost per meta-step; with 2 queries per class, the same cost as
#: 10-way: 87.32 % after 55 minutes, level), affine distortions (-3 points on
#: the fly at 28x28; as 4 extra drawings per drawing made at 105x105,
#: ``augmentation.distorted_copies``: 87.27 / 86.71 % at strength 0.5 / 1
#: against 87.67 % at the same 5750 meta-steps), 56x56 images (59.65 %
#: against 70.90 % at 200 meta-steps, for 3.4x the cost per meta-step; through
#: a 5x5 first convolution at stride 2, at 1.09x the cost: 85.85 % against
#: 86.29 % at 5750 meta-steps without test-time shifts), 128 filters (+0.9
#: point at 200 meta-steps for 2.5x the cost), this preset for 44 minutes
#: followed by a warm ``fit(X, y, groups=...)`` of 700 meta-steps on 20-way
#: grouped tasks at lr 3e-4 (85.39 % after 55.5 minutes: +0.4), and groups of
#: similar classes in place of blocks (by class-mean images or a trained
#: embedding: 69.63 / 61.81 % against 70.90 % at 200 meta-steps).
OMNIGLOT_WITHIN_ALPHABET = dict(OMNIGLOT, head="cosine", n_inner_steps_test=0, test_shift=2)

#: Small tabular data (feature vectors, a few dozen classes or groups): an
#: MLP of two hidden layers of 64, 3-way 1-shot tasks of 5 queries per class,
#: 16 tasks per meta-step at a constant meta rate of 1e-3, as measured on
#: scikit-learn's digits (``benchmarks/few_shot.py --dataset digits``; the
#: figures are in docs/performance.md).
TABULAR = dict(
    module="mlp",
    hidden_layer_sizes=(64, 64),
    head="prototype",
    n_ways=3,
    k_shot=1,
    n_query=5,
    meta_batch_size=16,
    inner_lr="auto",
    n_inner_steps=1,
    n_inner_steps_test=3,
    lr=1e-3,
    lr_schedule="constant",
    meta_batches_per_epoch=100,
    max_epochs=10,
)

#: Every preset by name (the command line's ``--preset`` choices).
PRESETS = {
    "omniglot": OMNIGLOT,
    "omniglot-within-alphabet": OMNIGLOT_WITHIN_ALPHABET,
    "tabular": TABULAR,
}
