"""The texts of the ``fomaml-sklearn`` command line's ``--help``.

Data only (no torch): :mod:`fomaml_sklearn.cli` builds its parser from them.
"""

from .datasets import DATA_SETS

PROG = "fomaml-sklearn"
DEFAULT_MODEL = "fomaml_model.fomaml"

DESCRIPTION = ("Few-shot classification with First-Order MAML: meta-train a network on "
               "many small tasks, then adapt it to new classes from one or a few labelled "
               "examples each.")

EPILOG = """\
examples:
  fomaml-sklearn train                     # digits 0-5, offline, ~30 s on a CPU
  fomaml-sklearn evaluate fomaml_model.fomaml          # 3-way 1-shot on digits 6-9
  fomaml-sklearn train omniglot --data-home ../shared/data --offline \\
      --minutes 5 -o omniglot.fomaml                   # presets.OMNIGLOT
  fomaml-sklearn evaluate omniglot.fomaml omniglot --data-home ../shared/data \\
      --offline --ways 5 --shots 1                     # 423 unseen characters
  fomaml-sklearn predict omniglot.fomaml support/ queries/ -o predictions.csv

A folder data set has one subfolder of images per class (support/cat/1.png,
support/dog/1.png, ...). Model files are FOMAMLClassifier files (written by
train or FOMAMLClassifier.save); a FOMAMLRegressor's file is refused: load it
in Python with FOMAMLRegressor.load. Run "fomaml-sklearn COMMAND --help" for
the options of a command.
"""

TRAIN_DESCRIPTION = (
    "Meta-train a FOMAMLClassifier on N-way K-shot episodes drawn from DATA and save it "
    "to --output as a safe model file (tensors and JSON under a checksum; loading it runs "
    "no code from it). Digits (the default) trains on 0-5 so that 'evaluate' can test on "
    "the unseen 6-9. Meta-training runs --epochs x --meta-batches-per-epoch meta-steps, "
    "or until --minutes have passed; Ctrl-C stops it early and still saves, and --resume "
    "continues it."
)

TRAIN_EPILOG = """\
examples:
  fomaml-sklearn train                         # digits 0-5, mlp, ~30 s on a CPU
  fomaml-sklearn train --ways 4 --shots 5 --minutes 1 -o digits-5shot.fomaml
  fomaml-sklearn train omniglot --data-home ../shared/data --offline \\
      --minutes 5 -o omniglot.fomaml           # Conv-4, presets.OMNIGLOT
  fomaml-sklearn train omniglot --data-home ../shared/data --offline \\
      --resume omniglot.fomaml --minutes 5     # 5 more minutes, same file
  fomaml-sklearn train my_images/ --image-size 28 --ways 5 -o mine.fomaml

Model files (.fomaml) hold tensors (safetensors) and JSON under a SHA-256
checksum: loading one runs no code from it. --resume keeps the saved model's
settings and meta-parameters; Adam's moments and the episode generator
restart (a model file stores no optimizer state). --resume takes
FOMAMLClassifier files only, and leaves any other file as it is.
"""

EVALUATE_DESCRIPTION = (
    "Draw N-way K-shot episodes from the classes of DATA, adapt the model to each "
    "episode's support examples and score its queries; print the mean accuracy with its "
    "95% confidence interval. Use classes the model was not trained on: digits 6-9, "
    "Omniglot's test characters, or a folder of other classes."
)

EVALUATE_EPILOG = """\
examples:
  fomaml-sklearn evaluate fomaml_model.fomaml  # 3-way 1-shot on digits 6-9
  fomaml-sklearn evaluate omniglot.fomaml omniglot --data-home ../shared/data \\
      --offline --ways 20 --shots 1            # 423 unseen characters
  fomaml-sklearn evaluate mine.fomaml other_images/ --shots 5 --episodes 200
"""

PREDICT_DESCRIPTION = (
    "Adapt the model to the classes of SUPPORT (a folder with one subfolder of labelled "
    "images per class, a few images each) and predict a class for every image of QUERY "
    "(image files or folders, searched recursively). Prints CSV lines "
    "path,label,probability. Images are converted to the model's channels and size."
)

PREDICT_EPILOG = """\
examples:
  fomaml-sklearn predict omniglot.fomaml support/ queries/
  fomaml-sklearn predict omniglot.fomaml support/ new1.png new2.png -o labels.csv

The support folder holds one subfolder per class, named after the class:
support/alpha/1.png, support/beta/1.png, ... The CSV has one line per query
image: its path, the predicted class and that class's probability.
"""

DATA_HELP = (", ".join(f"{name!r} ({text})" for name, text in DATA_SETS.items())
             + " or a folder of images with one subfolder per class (all of them; write "
               "./NAME for a folder named like one of these). Default: digits")

MODEL_HELP = ("a FOMAMLClassifier model file (written by train or FOMAMLClassifier.save; "
              "a FOMAMLRegressor's is refused)")

RESUME_HELP = (
    "continue meta-training the model saved in MODEL on DATA (the same kind of data). "
    "Kept: its meta-parameters and all its settings (network, rule, episodes, inner loop, "
    "learning rate, precision, device, seed), so the model, episode and inner-loop "
    "options, --lr, --device, --precision, --seed and --image-size cannot be given with "
    "it. Restarted: Adam's moments and the episode generator, which a model file does not "
    "store. --epochs, --minutes and --meta-batches-per-epoch set the new budget"
)

INK_HELP = ("folder images: 'dark' strokes on a light background are inverted so that ink "
            "is 1, as in Omniglot and digits; 'auto' inverts when most pixels are light "
            "(default: auto)")

PREDICT_INK_HELP = ("'dark' strokes on a light background are inverted so that ink is 1; "
                    "'auto' decides from the support images (default: auto)")

TEST_SHIFT_HELP = ("test-time shifts: adapt on the support images and copies of them moved "
                   "by up to PX pixels, average each query's probabilities over its copies "
                   "(images only; {})")

NPROC_HELP = ("shard each meta-batch over N processes on this machine, launched with "
              "torch.distributed.run (torchrun); the same model as one process, to float "
              "tolerance (default: 1)")
