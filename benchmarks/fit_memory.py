"""Peak memory of fit's final adaptation (``adapt_on_fit=True``) as the
number of training samples grows.

fit ends by adapting to all the classes of ``y``. It uses at most a fixed
number of examples (1024, the same number from every class), so its memory
and time stay flat however large ``X`` is. Each size runs in its own
subprocess (Conv-4, 64 filters, 28x28 random images in 100 classes,
``max_epochs=0``: only the network's construction and the final adaptation),
and reports the peak resident memory above the level after loading the data.

Usage: python benchmarks/fit_memory.py [--sizes 2000 8000 32000] [--threads 2]
"""

import argparse
import json
import resource
import subprocess
import sys
import time


def _one(n, threads):
    import numpy as np
    import torch

    from fomaml_sklearn import FOMAMLClassifier

    torch.set_num_threads(threads)
    rng = np.random.default_rng(0)
    X = rng.random((n, 1, 28, 28), dtype=np.float32)
    y = np.repeat(np.arange(100), n // 100)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    clf = FOMAMLClassifier("conv4", max_epochs=0, device="cpu", precision="float32",
                           random_state=0).fit(X, y)
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert clf.task_model_ is not None and len(clf.classes_) == 100
    return {"seconds": seconds, "growth_mib": (peak - before) / 1024,
            "data_mib": X.nbytes / 2**20}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[2000, 8000, 32000])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(_one(args.child, args.threads)))
        return 0
    print(f"Conv-4 64, 28x28, 100 classes, max_epochs=0, adapt_on_fit=True, "
          f"{args.threads} threads")
    print(f"{'samples':>8}{'data MiB':>10}{'fit s':>8}{'peak growth MiB':>17}")
    for n in args.sizes:
        out = subprocess.run([sys.executable, __file__, "--child", str(n),
                              "--threads", str(args.threads)],
                             capture_output=True, text=True, check=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"{n:>8}{r['data_mib']:>10.0f}{r['seconds']:>8.1f}{r['growth_mib']:>17.0f}",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
