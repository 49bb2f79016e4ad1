"""Within-alphabet 20-way one-shot: tell apart the characters of an alphabet
never seen in meta-training, from one drawing of each (Lake et al. 2015).

Meta-trains ``FOMAMLClassifier`` (``presets.OMNIGLOT_WITHIN_ALPHABET``,
changed by ``--set``) on the background characters outside the 8 alphabets
that ``background_alphabets_known.json`` names (722 characters, rotated by
0/90/180/270 degrees into 2888 classes unless ``--no-rotations``). Then, for
each of the 7 held-out alphabets with at least 20 characters, it draws
``--episodes`` episodes: 20 characters of that alphabet, two drawers, one
drawer's image of each character as the support set and the other's as the
queries; the estimator adapts on the support (``adapt``) and classifies the
queries (``predict``). The evaluation alphabets (``images_evaluation.npz``)
are never read. The episodes are fixed by ``--eval-seed``, independent of the
training seed, so every run scores the same episodes.

Prints the machine line, the meta-steps and minutes, the accuracy with its
95 % interval over episodes and over alphabets, and the per-alphabet means.
A lever's effect is measured at a fixed number of meta-steps (``--steps``);
``--minutes`` gives a time budget instead (cosine over the minutes).

Examples
--------
python benchmarks/within_alphabet.py --data-home ../shared/data --steps 500 --threads 2
python benchmarks/within_alphabet.py --data-home ../shared/data --steps 500 --groups 20 \
    --mirror --set head=prototype --feature-norm 3 --learn-scale
python benchmarks/within_alphabet.py --data-home ../shared/data --minutes 59.5 --threads 2
python benchmarks/within_alphabet.py --data-home ../shared/data --steps 500 --groups 20 \
    --image-size 56 --first-stride 2 --first-kernel 5 --set augment_shift=4
python benchmarks/within_alphabet.py --data-home ../shared/data --load wa55.fomaml --steps 300 \
    --groups 20 --set n_ways=20 --set lr=3e-4
python benchmarks/within_alphabet.py --data-home ../shared/data --load a.fomaml --ensemble b.fomaml
python benchmarks/within_alphabet.py --data-home ../shared/data --minutes 24 --pretrain-minutes 8 \
    --groups 20 --mirror
python benchmarks/within_alphabet.py --data-home ../shared/data --steps 1200 --groups 20 --mirror \
    --splice 15         # or --block-fraction 0.5: half the training alphabets
"""

import argparse
import ast
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fomaml_sklearn import FOMAMLClassifier, presets  # noqa: E402
from fomaml_sklearn.augmentation import RandomShift, distorted_copies  # noqa: E402
from fomaml_sklearn.backbones import SupportBatchNorm  # noqa: E402
from fomaml_sklearn.callbacks import TimeCosineLR, TimeLimit  # noqa: E402
from fomaml_sklearn.datasets import fetch_omniglot, get_data_home, rotate_classes  # noqa: E402

from throughput import machine_line  # noqa: E402

WAYS = 20
KNOWN = "background_alphabets_known.json"
# t quantile (97.5 %) for the interval over alphabets, by degrees of freedom.
T975 = {1: 12.71, 2: 4.30, 3: 3.18, 4: 2.78, 5: 2.57, 6: 2.45, 7: 2.36, 8: 2.31}


#: Blocks of this many consecutive character numbers are the source of
#: spliced characters (the width ``--groups 20`` groups by).
SPLICE_WIDTH = 20


def known_alphabets(data_home):
    """``{alphabet: (first, last)}`` character index ranges (inclusive) into
    ``images_background.npz``, from the data home's ``omniglot/`` folder."""
    path = Path(get_data_home(data_home, create=False)) / "omniglot" / KNOWN
    if not path.is_file():
        raise SystemExit(f"{path} is missing: this benchmark needs the alphabet ranges "
                         f"of {KNOWN} (shipped with ../shared/data/omniglot; see its README)")
    with open(path) as f:
        spec = json.load(f)
    return {name: (a["first"], a["last"]) for name, a in spec["alphabets"].items()}


def load(data_home, offline, image_size, rotations=True, mirror=False, copies=0,
         copy_strength=0.5, seed=0, splice=0, splice_width=SPLICE_WIDTH, block_fraction=1.0):
    """Meta-training images and the held-out alphabets' images.

    With ``copies``, each meta-training drawing also gets that many randomly
    distorted copies (``augmentation.distorted_copies`` at ``copy_strength``,
    made at 105x105 and then resized), before the rotations. With
    ``splice``, that many spliced characters per block of ``splice_width``
    character numbers become new classes (:func:`spliced_characters`),
    also before the rotations. With ``block_fraction`` below 1, only that
    fraction of the blocks of ``splice_width`` character numbers (mostly one
    alphabet each) is meta-trained on (:func:`keep_blocks`).

    Returns ``(X_train, y_train, held_out)`` where ``held_out`` maps an
    alphabet name to an array of shape ``(n_characters, 20, 1, S, S)``
    (character, drawer).
    """
    X, char = _background(data_home, offline, image_size)
    held_out, train = split_held_out(X, char, known_alphabets(data_home))
    if block_fraction < 1:
        train = keep_blocks(char, train, block_fraction, splice_width, seed)
    X_train, y_train = X[train], char[train]
    if copies:
        full = _background(data_home, offline, None)[0][train]
        extra = distorted_copies(full, copies, strength=copy_strength,
                                 image_size=image_size, random_state=seed)
        del full
        X_train = np.concatenate([X_train, extra])
        y_train = np.concatenate([y_train, np.repeat(y_train, copies)])
    if splice:
        X_new, y_new = spliced_characters(X_train, y_train, splice, splice_width, seed)
        X_train, y_train = np.concatenate([X_train, X_new]), np.concatenate([y_train, y_new])
    if rotations:
        X_train, y_train = rotate_classes(X_train, y_train, mirror=mirror)
    return X_train, y_train, held_out


def keep_blocks(char, rows, fraction, width=SPLICE_WIDTH, seed=0):
    """``rows`` (a row mask) restricted to a random ``fraction`` of the
    blocks of ``width`` consecutive character numbers among them (fewer
    training alphabets, for how the accuracy grows with the training
    characters)."""
    blocks = np.unique(char[rows] // width)
    rng = np.random.default_rng(seed)
    kept = rng.choice(blocks, max(1, round(fraction * len(blocks))), replace=False)
    return rows & np.isin(char // width, kept)


def spliced_characters(X, char, per_block, width=SPLICE_WIDTH, seed=0):
    """New characters made of halves of two others, drawer by drawer.

    For each block of ``width`` consecutive character numbers (mostly one
    alphabet: the files number characters alphabet by alphabet) with at
    least two characters in ``char``, ``per_block`` new characters (fewer
    where the block has fewer distinct choices): two random characters A and
    B of the block, and drawer ``d``'s drawing of the new character is A's
    drawing by ``d`` with its right half (or, at random per character, its
    bottom half) taken from B's drawing by ``d``; no two new characters have
    the same A, B and half.
    More training characters that look like the block's alphabet, for the
    generalisation gap to new alphabets (issue #27; a task augmentation in
    the spirit of creating classes by rotation). The new characters are
    numbered from the first block above ``char``'s, in blocks of ``width``
    per source block, so :func:`block_groups` keeps them among themselves.

    Returns ``(X_new, char_new)`` with each new character's drawings in
    drawer order.
    """
    if not 0 < per_block <= width:  # run() checks --splice before loading the data
        raise ValueError(f"per_block={per_block}: give 1 to width={width}")
    rng = np.random.default_rng(seed)
    chars = np.unique(char)
    drawings = {c: X[char == c] for c in chars}
    base = (int(chars.max()) // width + 1) * width
    half = X.shape[-1] // 2
    X_new, char_new = [], []
    k = 0  # the new block's number
    for block in np.unique(chars // width):
        members = chars[chars // width == block]
        if len(members) < 2:
            continue
        combos = [(a, b, side) for a in members for b in members if a != b for side in (0, 1)]
        picks = rng.choice(len(combos), min(per_block, len(combos)), replace=False)
        for j, pick in enumerate(picks):
            a, b, side = combos[pick]
            n = min(len(drawings[a]), len(drawings[b]))
            new = drawings[a][:n].copy()
            if side:
                new[..., :, half:] = drawings[b][:n, ..., :, half:]
            else:
                new[..., half:, :] = drawings[b][:n, ..., half:, :]
            X_new.append(new)
            char_new.append(np.full(n, base + k * width + j, dtype=char.dtype))
        k += 1
    return np.concatenate(X_new), np.concatenate(char_new)


def _background(data_home, offline, image_size):
    """The background file's images at ``image_size`` (None: 105) and their
    character numbers."""
    data = fetch_omniglot(data_home, subset="background", image_size=image_size,
                          download_if_missing=not offline)
    return data.images, data.character


def split_held_out(X, char, ranges):
    """``({alphabet: (n_characters, 20, ...) images}, training row mask)``:
    the alphabets of ``ranges`` held out, every other character's rows for
    meta-training."""
    held = np.zeros(char.max() + 1, dtype=bool)
    held_out = {}
    for name, (first, last) in sorted(ranges.items()):
        held[first:last + 1] = True
        # Each character's 20 drawers, in file order (the drawer is the position).
        held_out[name] = np.stack([X[char == c] for c in range(first, last + 1)])
    return held_out, ~held[char]


def held_out_full_size(data_home, offline):
    """The held-out alphabets' images at 105x105 (for test-time copies)."""
    X, char = _background(data_home, offline, None)
    return split_held_out(X, char, known_alphabets(data_home))[0]


def episodes(held_out, n_episodes, seed):
    """``n_episodes`` fixed within-alphabet episodes per alphabet with at least
    20 characters: ``[(alphabet, characters, support drawer, query drawer)]``."""
    rng = np.random.default_rng(seed)
    out = []
    for name, images in sorted(held_out.items()):
        if len(images) < WAYS:
            continue
        for _ in range(n_episodes):
            chars = rng.choice(len(images), WAYS, replace=False)
            d_support, d_query = rng.choice(images.shape[1], 2, replace=False)
            out.append((name, chars, int(d_support), int(d_query)))
    return out


def drawer_pair_episodes(held_out, seed):
    """One episode per ordered pair of drawers (support, query) of each
    alphabet with at least 20 characters, each with its own random 20
    characters: ``[(alphabet, characters, support drawer, query drawer)]``."""
    rng = np.random.default_rng(seed)
    out = []
    for name, images in sorted(held_out.items()):
        if len(images) < WAYS:
            continue
        n_drawers = images.shape[1]
        for d_support in range(n_drawers):
            for d_query in range(n_drawers):
                if d_support != d_query:
                    chars = rng.choice(len(images), WAYS, replace=False)
                    out.append((name, chars, d_support, d_query))
    return out


def drawer_summary(accs, eps, n_worst=3):
    """Per alphabet: ``(mean, drawers from worst, each drawer's mean,
    [mean without the k worst drawers for k = 1 .. n_worst])`` (k up to
    two drawers fewer than there are). A drawer's
    mean averages its episodes as support and as query; without a drawer,
    every episode it draws for is dropped."""
    out = {}
    for name in sorted({e[0] for e in eps}):
        rows = [(e[2], e[3], a) for e, a in zip(eps, accs) if e[0] == name]
        n = 1 + max(max(d_s, d_q) for d_s, d_q, _ in rows)
        per = np.array([np.mean([a for d_s, d_q, a in rows if d in (d_s, d_q)])
                        for d in range(n)])
        order = [int(d) for d in np.argsort(per, kind="stable")]
        without = []
        for k in range(1, min(n_worst, n - 2) + 1):  # at least two drawers left
            gone = set(order[:k])
            without.append(float(np.mean([a for d_s, d_q, a in rows
                                          if d_s not in gone and d_q not in gone])))
        out[name] = (float(np.mean([a for *_, a in rows])), order, per, without)
    return out


def score(clf, held_out, eps, full_size=None, copies=0, strength=0.5, members=()):
    """Per-episode accuracies of ``clf`` (adapt on the support, predict the
    queries), and the alphabet of each episode. With ``copies``, the support
    also holds that many distorted copies of each drawing, made from the
    105x105 images of ``full_size`` (``distorted_copies``; episode ``i``'s
    copies seeded by ``i``), so each prototype averages them. With
    ``members`` (more fitted estimators), an ensemble: each model adapts on
    the support (at ``clf``'s ``test_shift``), and the queries go to the
    class of highest mean probability over ``clf`` and the members."""
    for model in members:
        model.set_params(test_shift=clf.test_shift)
    accs, names = [], []
    labels = np.arange(WAYS)
    for i, (name, chars, d_s, d_q) in enumerate(eps):
        images = held_out[name]
        support, support_labels = images[chars, d_s], labels
        if copies:
            extra = distorted_copies(full_size[name][chars, d_s], copies, strength=strength,
                                     image_size=support.shape[-1], random_state=i)
            support = np.concatenate([support, extra])
            support_labels = np.concatenate([labels, np.repeat(labels, copies)])
        if members:
            proba = 0.0
            for model in (clf, *members):
                model.adapt(support, support_labels)
                proba = proba + model.predict_proba(images[chars, d_q])
            predicted = clf.classes_[np.argmax(proba, axis=1)]
        else:
            clf.adapt(support, support_labels)
            predicted = clf.predict(images[chars, d_q])
        accs.append(float(np.mean(predicted == labels)))
        names.append(name)
    return np.array(accs), np.array(names)


def summary(accs, names):
    """Mean, 95 % half-width over episodes, over alphabets, and per-alphabet means."""
    per = {n: float(accs[names == n].mean()) for n in sorted(set(names))}
    means = np.array(list(per.values()))
    over_episodes = 1.96 * accs.std(ddof=1) / np.sqrt(len(accs))
    over_alphabets = T975.get(len(means) - 1, 1.96) * means.std(ddof=1) / np.sqrt(len(means))
    return float(accs.mean()), float(over_episodes), float(over_alphabets), per


def parse_set(items):
    """``["n_filters=128", "image_size=56"]`` -> a dict of Python values."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--set {item!r}: give NAME=VALUE, e.g. --set n_ways=20")
        try:
            out[key.strip()] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[key.strip()] = value
    return out


def _with_affine(strength):
    """An experiment's FOMAMLClassifier whose meta-training episodes also get
    random affine distortions (after the shifts)."""
    from fomaml_sklearn.augmentation import RandomAffine

    class Composed:
        def __init__(self, *transforms):
            self.transforms = [t for t in transforms if t is not None]

        def __call__(self, x, rng):
            for t in self.transforms:
                x = t(x, rng)
            return x

    class AffineClassifier(FOMAMLClassifier):
        def _augmentation(self, image_shape):
            return Composed(super()._augmentation(image_shape),
                            RandomAffine(strength, image_shape))

    return AffineClassifier


# ProbeConv4's block options whose values give the built-in Conv-4 (the
# command line's defaults; any other value asks for ProbeConv4).
PROBE_DEFAULTS = dict(n_blocks=4, first_pool=2, first_stride=1, first_kernel=3)


class ProbeConv4(torch.nn.Module):
    """An experiment's backbone (``--feature-norm``, ``--no-last-pool``,
    ``--blocks``, ``--first-pool``, ``--first-stride``, ``--first-kernel``):
    the built-in Conv-4's blocks (``[conv 3x3, SupportBatchNorm, max-pool,
    ReLU]``), ``n_blocks`` of them (a fifth block takes 56x56 images down to
    1x1 as four do 28x28), the first one pooling by ``first_pool`` (4: a
    56x56 image's first maps go straight to 14x14, so only the first
    convolution runs at the higher resolution), its convolution
    ``first_kernel`` wide at ``first_stride`` (2: a learnt downsampling of
    56x56 images to 28x28 maps, after which the blocks cost what they do at
    28x28), optionally without the last max-pool (3x3 maps of 64 filters at
    28x28: 576 features instead of 64), with the features scaled to the norm
    ``feature_norm`` (0: as they are). With normalised features the
    prototype head ranks classes by cosine similarity, at a fixed scale (the
    logit gap grows with ``feature_norm ** 2``), or with ``learn_scale``
    at a learnt scale that starts at ``feature_norm`` (a meta-parameter,
    ``log_scale``, which the inner loop adapts too). A user module, so
    ``task_batching="auto"`` keeps the loop; it draws no random numbers, so
    the benchmark asks for ``"threads"``."""

    def __init__(self, input_shape, n_filters=64, feature_norm=0.0, last_pool=True,
                 n_blocks=4, first_pool=2, first_stride=1, first_kernel=3, learn_scale=False):
        super().__init__()
        self.input_shape = tuple(int(s) for s in input_shape)
        channels, height, _ = self.input_shape
        blocks = []
        for i in range(n_blocks):
            kernel, stride = (first_kernel, first_stride) if i == 0 else (3, 1)
            blocks += [torch.nn.Conv2d(channels, n_filters, kernel, stride=stride,
                                       padding=kernel // 2),
                       SupportBatchNorm(n_filters)]
            height = (height + 2 * (kernel // 2) - kernel) // stride + 1
            pool = first_pool if i == 0 else 2
            if height >= pool and (last_pool or i < n_blocks - 1):
                blocks.append(torch.nn.MaxPool2d(pool))
                height //= pool
            blocks.append(torch.nn.ReLU())
            channels = n_filters
        self.blocks = torch.nn.Sequential(*blocks).to(memory_format=torch.channels_last)
        self.feature_norm = float(feature_norm)
        if learn_scale and not self.feature_norm:
            raise ValueError("learn_scale=True needs feature_norm > 0, the scale it starts at")
        self.log_scale = (torch.nn.Parameter(torch.tensor(math.log(self.feature_norm)))
                          if learn_scale else None)

    def forward(self, x):
        x = x.reshape((x.shape[0],) + self.input_shape)
        x = x.contiguous(memory_format=torch.channels_last)
        feats = self.blocks(x).flatten(1)
        if self.feature_norm:  # also set with learn_scale: the scale it starts at
            scale = self.feature_norm if self.log_scale is None else self.log_scale.exp()
            feats = torch.nn.functional.normalize(feats, dim=1) * scale
        return feats


def block_groups(y_train, width, n_variants=4):
    """``fit``'s ``groups`` for harder tasks: the characters in blocks of
    ``width`` consecutive character numbers, at one rotation (class codes are
    ``character * n_variants + variant``, :func:`rotate_classes`: 4
    rotations, 8 with their mirror images). The upstream files number
    characters alphabet by alphabet (the 8 known alphabets are contiguous
    ranges), so a block is mostly one alphabet."""
    return (y_train // n_variants // width) * n_variants + y_train % n_variants


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-home", default=None)
    parser.add_argument("--offline", action="store_true", help="never download")
    parser.add_argument("--steps", type=int, default=None,
                        help="meta-steps (a multiple of 50), cosine over them")
    parser.add_argument("--minutes", type=float, default=None,
                        help="time budget instead of --steps, cosine over it")
    parser.add_argument("--episodes", type=int, default=60,
                        help="episodes per held-out alphabet (default 60: 7 x 60 x 20 "
                             "queries)")
    parser.add_argument("--eval-seed", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0, help="training seed")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--precision", default="float32")
    parser.add_argument("--image-size", type=int, default=28)
    parser.add_argument("--no-rotations", action="store_true")
    parser.add_argument("--mirror", action="store_true",
                        help="also the rotations' mirror images as classes (rotate_classes' "
                             "mirror=True: 5776 classes)")
    parser.add_argument("--copies", type=int, default=0, metavar="K",
                        help="add K randomly distorted copies of each training drawing, "
                             "made at 105x105 and resized (augmentation.distorted_copies)")
    parser.add_argument("--copy-strength", type=float, default=0.5,
                        help="the copies' distortion strength (1: Koch et al.'s ranges)")
    parser.add_argument("--splice", type=int, default=0, metavar="K",
                        help="experiment: K new characters per block of 20 character numbers, "
                             "each drawing two halves of two of the block's characters by "
                             "the same drawer (spliced_characters), before the rotations")
    parser.add_argument("--block-fraction", type=float, default=1.0, metavar="F",
                        help="experiment: meta-train on a random fraction F of the blocks of "
                             "20 character numbers only (keep_blocks; fewer alphabets)")
    parser.add_argument("--test-copies", type=int, default=0, metavar="K",
                        help="also score with K distorted copies of each support drawing "
                             "(made at 105x105, --copy-strength) in the support set")
    parser.add_argument("--drawer-pairs", action="store_true",
                        help="also score one episode per ordered pair of drawers of each "
                             "alphabet (test_shift=0) and print each alphabet's worst drawers "
                             "and its accuracy without them")
    parser.add_argument("--test-shift", type=int, default=None,
                        help="also score with this test_shift (default: the preset's)")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                        help="an estimator parameter changed from the preset (repeatable)")
    parser.add_argument("--affine", type=float, default=0.0,
                        help="random affine distortions of the training images at this "
                             "strength (augmentation.RandomAffine; 1 = Koch et al.'s ranges)")
    parser.add_argument("--groups", type=int, default=0, metavar="WIDTH",
                        help="harder tasks: fit(X, y, groups) with blocks of WIDTH "
                             "consecutive characters at one rotation (block_groups)")
    parser.add_argument("--feature-norm", type=float, default=0.0, metavar="SCALE",
                        help="experiment: Conv-4 features scaled to this norm (cosine "
                             "prototypes at a fixed scale; ProbeConv4; with --set "
                             "head=prototype, as the preset's head is 'cosine')")
    parser.add_argument("--learn-scale", action="store_true",
                        help="experiment: with --feature-norm, a learnt scale starting there "
                             "(cosine prototypes with a learned scale; ProbeConv4)")
    parser.add_argument("--no-last-pool", action="store_true",
                        help="experiment: Conv-4 without its last max-pool (ProbeConv4)")
    parser.add_argument("--blocks", type=int, default=PROBE_DEFAULTS["n_blocks"],
                        help="experiment: this many convolution blocks (ProbeConv4; 5 "
                             "takes 56x56 down to 1x1)")
    parser.add_argument("--first-stride", type=int, default=PROBE_DEFAULTS["first_stride"],
                        help="experiment: the first convolution's stride (ProbeConv4; 2 "
                             "takes 56x56 images to 28x28 maps)")
    parser.add_argument("--first-kernel", type=int, default=PROBE_DEFAULTS["first_kernel"],
                        help="experiment: the first convolution's width (ProbeConv4)")
    parser.add_argument("--first-pool", type=int, default=PROBE_DEFAULTS["first_pool"],
                        help="experiment: the first block's max-pool size (ProbeConv4; 4 "
                             "runs only the first convolution at 56x56)")
    parser.add_argument("--pretrain-minutes", type=float, default=0.0, metavar="MINUTES",
                        help="experiment: first train a Conv-4 on all meta-training classes "
                             "at once (a cosine classifier, shifts of up to augment_shift "
                             "px) for this many minutes, then meta-train from its weights; "
                             "with --minutes, counted inside that budget")
    parser.add_argument("--ensemble", action="append", default=[], metavar="FILE",
                        help="with --load: also load this saved model (repeatable) and score "
                             "the ensemble, each query's probabilities averaged over the "
                             "models (--set applies to every model)")
    parser.add_argument("--save", default=None,
                        help="save the meta-trained model here (a .joblib name pickles it, "
                             "as the experiment's backbones need)")
    parser.add_argument("--load", default=None,
                        help="score this saved model instead of meta-training one (--set "
                             "then changes test-time parameters, e.g. n_inner_steps_test=10); "
                             "with --steps N, first meta-train it N meta-steps more (warm "
                             "start, cosine over the N steps from the model's meta rate or "
                             "--set lr=..., with --groups and the --set episode shape)")
    return parser


def train(args, params, X_train, y_train):
    """Meta-train the estimator of ``params`` for ``--steps`` or ``--minutes``."""
    callbacks = []
    if args.steps is not None:
        params.update(max_epochs=max(1, args.steps // params["meta_batches_per_epoch"]))
    else:
        # Pretraining, if any, counts inside the budget.
        minutes = args.minutes - args.pretrain_minutes
        params.update(max_epochs=100_000, lr_schedule="constant")
        callbacks = [TimeLimit(minutes), TimeCosineLR(minutes)]
    if uses_probe_backbone(args):
        size = (1, args.image_size, args.image_size)
        params.update(module=ProbeConv4, task_batching="threads", module_params=dict(
            input_shape=size, n_filters=params.pop("n_filters", 64),
            feature_norm=args.feature_norm, last_pool=not args.no_last_pool,
            learn_scale=args.learn_scale, **probe_options(args)))
    if args.pretrain_minutes:
        # A Conv4Backbone instance: task_batching="auto" still picks threads.
        params.update(module=pretrain_backbone(args, params, X_train, y_train))
    cls = FOMAMLClassifier
    if args.affine:
        cls = _with_affine(args.affine)
    clf = cls(**params, precision=args.precision, callbacks=callbacks,
              adapt_on_fit=False, random_state=args.seed, verbose=1)
    print("Parameters:", {k: v for k, v in sorted(params.items())}, flush=True)
    minutes = fit_and_save(args, clf, X_train, y_train)
    print(f"\n{clf.n_meta_steps_} meta-steps in {minutes:.1f} min ({clf.precision_}, "
          f"{args.threads} threads)")
    return clf, minutes


def pretrain_backbone(args, params, X_train, y_train, batch_size=256, lr=3e-3,
                      scale=10.0):
    """``--pretrain-minutes``: a Conv-4 (the estimator's ``Conv4Backbone``,
    ``n_filters`` of ``params``) trained as one classifier over every
    meta-training class for ``args.pretrain_minutes`` minutes: features and
    class weights normalised, logits their cosine similarity times a learnt
    scale; Adam from ``lr`` annealed to 0 along a cosine over the minutes;
    every image shifted by up to ``augment_shift`` pixels (border pixels fill
    the gap), as in meta-training. Returns the trained body."""
    from fomaml_sklearn.backbones import build_backbone

    gen = torch.Generator().manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    size = args.image_size
    X = torch.as_tensor(np.asarray(X_train, dtype=np.float32)).reshape(len(y_train), -1)
    classes, y = np.unique(y_train, return_inverse=True)
    y = torch.as_tensor(y)
    body = build_backbone("conv4", size * size, input_shape=(1, size, size),
                          n_filters=params.get("n_filters", 64), generator=gen)
    # Small rows, so that Adam's steps (about lr per entry) turn them quickly.
    weights = torch.nn.Parameter(0.01 * torch.randn(len(classes), body.out_features,
                                                    generator=gen))
    log_scale = torch.nn.Parameter(torch.tensor(math.log(scale)))
    opt = torch.optim.Adam([*body.parameters(), weights, log_scale], lr=lr)
    shift = RandomShift(int(params.get("augment_shift", 0)), (1, size, size))
    body.train()
    t0, seconds, steps, loss_sum = time.perf_counter(), 60 * args.pretrain_minutes, 0, 0.0
    while (elapsed := time.perf_counter() - t0) < seconds:
        for group in opt.param_groups:
            group["lr"] = lr * (1 + math.cos(math.pi * elapsed / seconds)) / 2
        idx = torch.randint(len(y), (batch_size,), generator=gen)
        xb = shift(X[idx], rng)
        feats = torch.nn.functional.normalize(body(xb), dim=1)
        logits = log_scale.exp() * feats @ torch.nn.functional.normalize(weights, dim=1).T
        loss = torch.nn.functional.cross_entropy(logits, y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        steps, loss_sum = steps + 1, loss_sum + loss.item()
        if steps % 200 == 0:
            print(f"pretraining: {steps} steps of {batch_size} images, loss "
                  f"{loss_sum / 200:.3f}, scale {log_scale.exp().item():.2f}, "
                  f"{elapsed / 60:.1f} min", flush=True)
            loss_sum = 0.0
    print(f"pretrained {steps} steps of {batch_size} images ({steps * batch_size / len(y):.1f} "
          f"epochs of {len(classes)} classes) in {(time.perf_counter() - t0) / 60:.1f} min",
          flush=True)
    return body


def probe_options(args):
    """ProbeConv4's block options from the command line (``PROBE_DEFAULTS``' keys)."""
    return dict(n_blocks=args.blocks, first_pool=args.first_pool,
                first_stride=args.first_stride, first_kernel=args.first_kernel)


def uses_probe_backbone(args):
    """Whether the options ask for the experiment's backbone, ProbeConv4."""
    return bool(args.feature_norm or args.no_last_pool
                or probe_options(args) != PROBE_DEFAULTS)


def save_model(clf, path):
    """``--save``: the estimator's safe format for the built-in backbones; a
    pickle (joblib) for ProbeConv4, user code the safe format cannot rebuild
    (``run`` asks for a ``.joblib`` name then, before meta-training)."""
    if str(path).endswith(".joblib"):
        import joblib

        joblib.dump(clf, path)
    else:
        clf.save(path)


def load_model(path):
    """``--load``: a ``.joblib`` pickle of :func:`save_model` (trusted: this
    benchmark's own files) or the estimator's safe format."""
    if str(path).endswith(".joblib"):
        import joblib

        return joblib.load(path)
    return FOMAMLClassifier.load(path)


def fit_and_save(args, clf, X_train, y_train):
    """``clf.fit`` (with ``--groups``' blocks if given), then ``--save``; the
    minutes the fit took."""
    t0 = time.perf_counter()
    if args.groups:
        n_variants = 8 if args.mirror else 4
        clf.fit(X_train, y_train, groups=block_groups(y_train, args.groups, n_variants))
    else:
        clf.fit(X_train, y_train)
    minutes = (time.perf_counter() - t0) / 60
    if args.save:
        save_model(clf, args.save)
    return minutes


def carry_on(args, clf, X_train, y_train):
    """Meta-train the loaded ``clf`` ``--steps`` meta-steps more (warm start:
    its meta-parameters and optimizer state go on) from its ``lr`` (the
    saved one, or ``--set lr=...``) annealed along a cosine over those
    steps, with ``--groups`` if given."""
    before = clf.n_meta_steps_
    clf.set_params(warm_start=True, lr_schedule="cosine", callbacks=None, verbose=1,
                   max_epochs=max(1, args.steps // clf.meta_batches_per_epoch))
    minutes = fit_and_save(args, clf, X_train, y_train)
    print(f"\n{clf.n_meta_steps_ - before} meta-steps more ({clf.n_meta_steps_} in all) in "
          f"{minutes:.1f} min (lr {clf.lr:g}, cosine; {clf.n_ways}-way tasks"
          + (f", groups of {args.groups}" if args.groups else "") + ")")
    return clf, minutes


def run(args):
    torch.set_num_threads(args.threads)
    if args.load is None and (args.steps is None) == (args.minutes is None):
        raise SystemExit("give exactly one of --steps and --minutes (or --load FILE)")
    if args.pretrain_minutes < 0 or (args.minutes is not None
                                     and args.pretrain_minutes >= args.minutes):
        raise SystemExit(f"--pretrain-minutes {args.pretrain_minutes:g}: give 0 or more minutes, "
                         "fewer than --minutes (pretraining counts inside that budget)")
    if args.pretrain_minutes and (args.load or uses_probe_backbone(args)):
        raise SystemExit("--pretrain-minutes trains a new built-in Conv-4; it does not apply "
                         "to --load or to the experiment's backbone (ProbeConv4) options")
    if args.pretrain_minutes and args.save and not args.save.endswith(".joblib"):
        raise SystemExit(f"--save {args.save}: a pretrained Conv-4 is passed to the estimator "
                         "as a module instance, which the estimator's safe format cannot "
                         "rebuild; give a .joblib file name to pickle the model instead")
    if args.ensemble and not args.load:
        raise SystemExit("--ensemble FILE scores saved models together: give the first one "
                         "with --load FILE")
    if args.load and args.minutes is not None:
        raise SystemExit("--load continues for --steps N meta-steps, not --minutes")
    if args.groups and args.no_rotations:
        raise SystemExit("--groups assumes the four rotations of each character")
    for flag, value in (("--copies", args.copies), ("--test-copies", args.test_copies)):
        if value < 0:
            raise SystemExit(f"{flag} must be >= 0 (distorted copies of each drawing); "
                             f"got {value}")
    if not 0 <= args.splice <= SPLICE_WIDTH:
        raise SystemExit(f"--splice {args.splice}: give 0 to {SPLICE_WIDTH} spliced characters "
                         f"per block of {SPLICE_WIDTH}")
    if not 0 < args.block_fraction <= 1:
        raise SystemExit(f"--block-fraction {args.block_fraction:g}: give a fraction in (0, 1]")
    if args.splice and args.copies:
        raise SystemExit("--splice pairs drawings drawer by drawer, and --copies adds drawings "
                         "out of drawer order: give one of them")
    if args.mirror and args.no_rotations:
        raise SystemExit("--mirror adds the mirror images of the four rotations; "
                         "drop --no-rotations")
    if args.learn_scale and not args.feature_norm > 0:
        raise SystemExit("--learn-scale learns the scale of normalised features: give the "
                         "scale it starts at with --feature-norm SCALE (e.g. 3)")
    if args.save and uses_probe_backbone(args) and not args.save.endswith(".joblib"):
        raise SystemExit(f"--save {args.save}: the experiment's backbone (ProbeConv4) is "
                         "user code, which the estimator's safe format cannot rebuild; give "
                         "a .joblib file name to pickle the model instead")
    changes = parse_set(args.set)  # parsed once, before the data are loaded
    params = {**presets.OMNIGLOT_WITHIN_ALPHABET, **changes}
    if args.feature_norm and params.get("head") == "cosine":
        raise SystemExit("--feature-norm normalises the features in the experiment's backbone, "
                         "and head='cosine' normalises them again: add --set head=prototype "
                         "(the probe with --learn-scale is head='cosine')")
    if args.splice and args.groups and args.splice < params["n_ways"]:
        raise SystemExit(
            f"--splice {args.splice} with --groups: each block's {args.splice} spliced "
            f"characters form groups of their own, and groups of fewer than "
            f"n_ways={params['n_ways']} classes are never drawn; give --splice "
            f"{params['n_ways']} or more")
    test_shift = params.pop("test_shift", 0) if args.test_shift is None else args.test_shift
    params.pop("test_shift", None)
    print(machine_line(), flush=True)
    t0 = time.perf_counter()
    X_train, y_train, held_out = load(args.data_home, args.offline, args.image_size,
                                      rotations=not args.no_rotations, mirror=args.mirror,
                                      copies=args.copies, copy_strength=args.copy_strength,
                                      seed=args.seed, splice=args.splice,
                                      block_fraction=args.block_fraction)
    eps = episodes(held_out, args.episodes, args.eval_seed)
    print(f"Meta-training: {len(np.unique(y_train))} classes ({len(y_train)} images, "
          f"{args.image_size}x{args.image_size}); held out: "
          + ", ".join(f"{n} ({len(v)})" for n, v in sorted(held_out.items()))
          + f"; {len(eps)} within-alphabet {WAYS}-way 1-shot episodes; loaded in "
          f"{time.perf_counter() - t0:.1f} s", flush=True)
    minutes, members = None, []
    if args.load:
        clf = load_model(args.load)
        clf.set_params(**changes)
        print(f"Loaded {args.load}: {clf.n_meta_steps_} meta-steps; parameters set "
              + ", ".join(f"{k}={v!r}" for k, v in sorted(changes.items())))
        if args.steps:
            clf, minutes = carry_on(args, clf, X_train, y_train)
        for path in args.ensemble:
            members.append(load_model(path).set_params(**changes))
            print(f"Ensemble member {path}: {members[-1].n_meta_steps_} meta-steps")
    else:
        clf, minutes = train(args, params, X_train, y_train)
    results = {}
    full_size = held_out_full_size(args.data_home, args.offline) if args.test_copies else None
    for copies in sorted({0, args.test_copies}):
        for shift in sorted({0, test_shift}):
            clf.set_params(test_shift=shift)
            t0 = time.perf_counter()
            accs, names = score(clf, held_out, eps, full_size, copies, args.copy_strength,
                                members)
            mean, ci_ep, ci_alpha, per = summary(accs, names)
            results[(shift, copies) if args.test_copies else shift] = mean
            with_copies = f", {copies} test copies" if copies else ""
            print(f"within-alphabet {WAYS}-way 1-shot, test_shift={shift}{with_copies}: "
                  f"{100 * mean:.2f} % +- {100 * ci_ep:.2f} (episodes) +- "
                  f"{100 * ci_alpha:.2f} (alphabets); {time.perf_counter() - t0:.0f} s")
            print("  per alphabet: " + ", ".join(f"{n} {100 * a:.1f}" for n, a in per.items()))
    out = dict(n_steps=clf.n_meta_steps_, minutes=minutes, accuracy=results)
    if args.drawer_pairs:
        out["drawers"] = score_drawer_pairs(clf, held_out, args.eval_seed, members)
    return out


def score_drawer_pairs(clf, held_out, seed, members=()):
    """``--drawer-pairs``: score every ordered pair of drawers (no test-time
    shifts) and print, per alphabet, the accuracy, the three worst drawers
    and the accuracy without them."""
    clf.set_params(test_shift=0)
    eps = drawer_pair_episodes(held_out, seed)
    t0 = time.perf_counter()
    accs, _ = score(clf, held_out, eps, members=members)
    table = drawer_summary(accs, eps)
    without_worst = [t[3][0] for t in table.values() if t[3]]
    print(f"Every ordered pair of drawers ({len(eps)} episodes, test_shift=0, "
          f"{time.perf_counter() - t0:.0f} s): {100 * accs.mean():.2f} %"
          + (f"; without each alphabet's worst drawer: {100 * np.mean(without_worst):.2f} %"
             if without_worst else ""))
    for name, (mean, order, per, without) in table.items():
        print(f"  {name}: {100 * mean:.1f}; worst drawers "
              + ", ".join(f"{d} ({100 * per[d]:.0f})" for d in order[:3])
              + f", best {100 * per.max():.0f}; without the 1 / 2 / 3 worst: "
              + " / ".join(f"{100 * w:.1f}" for w in without))
    return table


def main(argv=None):
    return run(build_parser().parse_args(argv))


if __name__ == "__main__":
    main()
