"""Check and measure the GPU path on a machine with CUDA, in under 5 minutes.

No machine of the project has a GPU, so the path that ``device="auto"`` and
``task_batching="auto"`` take there (FOMAML's batched path: all tasks of a
meta-batch at once, ``torch.func.vmap`` over the backbone) has only run on
CPUs. Run this as it is on a CUDA machine (``python benchmarks/gpu_check.py``)
and send back its output. It

1. checks that the per-task loop and the batched path give the same FOMAML
   meta-gradient on the device (float64: within 1e-9 of each tensor's largest
   entry, floored at 1e-3 of the largest entry of the whole meta-gradient;
   float32: within 5e-2, rounding only: a max-pool window with near-equal
   values can flip its argmax between the two layouts), for the fixed and the
   prototype head, 1 and 5 inner steps; **exits 1 on a mismatch**;
2. counts the host-device synchronisations of one batched meta-step with
   ``torch.cuda.set_sync_debug_mode("warn")`` (1 expected: the loss and the
   accuracy read together for skorch's history);
3. prints the throughput table of ``benchmarks/throughput.py``'s workload
   (Conv-4 64, 28x28, 5-way 1-shot, meta-batch 32; tasks per second, timed
   round-robin, median): the loop and the batched path in float32, the loop
   in bfloat16 autocast where the GPU runs it natively, and the batched path
   under ``torch.compile`` (the 15-query 1-step row only, its warm-up
   reported) while the time budget allows;
4. prints the tasks per second of ``FOMAMLClassifier.fit`` on the Omniglot
   benchmark's shape (Conv-4 64, 28x28, 5-way 1-shot, 5 queries per class,
   meta-batch 16) with the defaults (``precision_`` and ``task_batching_``
   are printed) and with ``precision="float32"``.

Without CUDA it says so and exits 0. ``--device cpu --quick`` runs the same
steps at tiny sizes on the CPU (the test suite's smoke run).

Usage: python benchmarks/gpu_check.py [--device cuda] [--repeats 5] [--quick]
"""

import argparse
import sys
import time
import warnings

import numpy as np
import torch

from fomaml_sklearn import FOMAMLClassifier
from fomaml_sklearn.algorithms import FOMAML, meta_gradient
from fomaml_sklearn.algorithms.runner import MetaBatch
from fomaml_sklearn.backbones import Conv4Backbone
from fomaml_sklearn.heads import MetaModel

WAYS, ALPHA = 5, 0.4
BUDGET_S = 270  # optional columns are skipped once this much time has passed


class Sizes:
    def __init__(self, quick):
        self.side = 12 if quick else 28
        self.filters = 4 if quick else 64
        self.meta_batch = 4 if quick else 32
        self.queries = (1, 3) if quick else (1, 15)
        self.steps = (1, 2) if quick else (1, 5)
        self.fit_steps = 2 if quick else 30
        self.quick = quick


def _model(sizes, head, device, dtype=torch.float32, seed=0):
    with torch.random.fork_rng(devices=[]):  # the caller's generators stay as they were
        torch.manual_seed(seed)
        backbone = Conv4Backbone((1, sizes.side, sizes.side), sizes.filters)
        meta = MetaModel(backbone, sizes.side**2, head=head, n_rows=WAYS)
    return meta.to(device=device, dtype=dtype)


def _tasks(sizes, queries, n_tasks, device, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    shape = (1, sizes.side, sizes.side)
    tasks = [(torch.rand((WAYS,) + shape, generator=g), torch.arange(WAYS),
              torch.rand((WAYS * queries,) + shape, generator=g),
              torch.arange(WAYS).repeat_interleave(queries)) for _ in range(n_tasks)]
    tasks = [(a.to(device, dtype), b.to(device), c.to(device, dtype), d.to(device))
             for a, b, c, d in tasks]
    return MetaBatch.from_tasks(tasks, WAYS)


def _grads(meta, batch, steps, batched, precision="float32"):
    return meta_gradient(meta, batch, WAYS, FOMAML(), inner_lr=ALPHA, n_inner_steps=steps,
                         precision=precision, batched=batched)


def _difference(got, ref):
    """Largest per-tensor difference, relative to the tensor's largest entry
    floored at 1e-3 of the largest entry overall."""
    top = max(float(r.abs().max()) for r in ref)
    return max(float((a - r).abs().max()) / max(float(r.abs().max()), 1e-3 * top, 1e-30)
               for a, r in zip(got, ref))


def check_gradients(sizes, device):
    """Step 1; returns True when every case agrees."""
    ok = True
    print("1. meta-gradient, batched path against the per-task loop "
          "(largest relative difference; tolerance)")
    for dtype, tol in ((torch.float64, 1e-9), (torch.float32, 5e-2)):
        for head in ("fixed", "prototype"):
            for steps in sizes.steps:
                meta = _model(sizes, head, device, dtype)
                batch = _tasks(sizes, 3, 4, device, dtype)
                ref = _grads(meta, batch, steps, batched=False)
                got = _grads(meta, batch, steps, batched=True)
                err = _difference(got.grads, ref.grads)
                same = err <= tol and abs(got.loss - ref.loss) <= tol * abs(ref.loss) + 1e-12
                ok &= same
                print(f"   {str(dtype)[6:]:>8} {head:>9} head, {steps} step(s): "
                      f"{err:.1e} (<= {tol:g}) loss {got.loss:.6g} vs {ref.loss:.6g} "
                      f"{'ok' if same else 'MISMATCH'}")
    return ok


def count_syncs(sizes, device):
    """Step 2: host-device synchronisations in one batched meta-step."""
    if device.type != "cuda":
        print("2. synchronisations: measured on CUDA only (on the CPU see "
              "tests/test_gpu_path.py, which counts them with a dispatch hook)")
        return
    meta = _model(sizes, "prototype", device)
    batch = _tasks(sizes, 3, 4, device)
    _grads(meta, batch, 1, batched=True)  # warm-up (cuDNN, allocator)
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            _grads(meta, batch, 1, batched=True)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    syncs = [str(w.message).splitlines()[0] for w in caught
             if "synchroniz" in str(w.message).lower()]
    print(f"2. synchronisations in one batched meta-step: {len(syncs)} (expected 1)")
    for s in syncs:
        print(f"   {s}")


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def _time_round_robin(fns, repeats, device):
    for fn in fns.values():
        fn()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            _sync(device)
            t0 = time.perf_counter()
            fn()
            _sync(device)
            times[name].append(time.perf_counter() - t0)
    return {name: sorted(t)[len(t) // 2] for name, t in times.items()}


def _bf16_native(device):
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    from fomaml_sklearn._config import resolve_precision

    return resolve_precision("auto", device) == "bfloat16"


def throughput(sizes, device, repeats, start):
    """Step 3."""
    bf16 = _bf16_native(device)
    print(f"3. throughput, tasks/s: Conv-4 {sizes.filters}, {sizes.side}x{sizes.side}, "
          f"{WAYS}-way 1-shot, meta-batch {sizes.meta_batch}, median of {repeats}"
          + ("" if bf16 else "; bfloat16 not native on this device: not timed"))
    print(f"   {'queries':>7}{'steps':>6}{'loop32':>9}{'batch32':>9}{'loop bf16':>10}"
          f"{'batch32 compiled':>18}")
    meta = _model(sizes, "fixed", device)
    for queries in sizes.queries:
        batch = _tasks(sizes, queries, sizes.meta_batch, device)
        for steps in sizes.steps:
            fns = {"loop32": lambda: _grads(meta, batch, steps, False),
                   "batch32": lambda: _grads(meta, batch, steps, True)}
            if bf16:
                fns["loop_bf16"] = lambda: _grads(meta, batch, steps, False, "bfloat16")
            rates = {k: sizes.meta_batch / t
                     for k, t in _time_round_robin(fns, repeats, device).items()}
            compiled = "-"
            first_row = queries == sizes.queries[-1] and steps == sizes.steps[0]
            if first_row and sizes.quick:
                compiled = "skipped (quick)"
            elif first_row and time.perf_counter() - start < BUDGET_S / 2:
                compiled = _compiled_rate(sizes, meta, batch, steps, repeats, device)
            elif first_row:
                compiled = "skipped (time)"
            print(f"   {queries:>7}{steps:>6}{rates['loop32']:>9.1f}{rates['batch32']:>9.1f}"
                  f"{rates['loop_bf16'] if bf16 else float('nan'):>10.1f}{compiled:>18}",
                  flush=True)


def _compiled_rate(sizes, meta, batch, steps, repeats, device):
    """The batched meta-step under torch.compile (graph breaks allowed)."""
    try:
        fn = torch.compile(lambda: _grads(meta, batch, steps, True))
        t0 = time.perf_counter()
        fn()
        _sync(device)
        warm = time.perf_counter() - t0
        rate = sizes.meta_batch / _time_round_robin({"c": fn}, repeats, device)["c"]
        return f"{rate:.1f} ({warm:.0f}s warm-up)"
    except Exception as exc:  # report, do not fail: compile is optional here
        return f"n/a ({type(exc).__name__})"
    finally:
        torch._dynamo.reset()


def fit_rate(sizes, device):
    """Step 4: tasks per second of fit on the Omniglot benchmark's shape."""
    rng = np.random.default_rng(0)
    n_classes, per_class = 40, 20
    X = (rng.random((n_classes * per_class, sizes.side**2)) < 0.2).astype(np.float32)
    y = np.repeat(np.arange(n_classes), per_class)
    print(f"4. fit on the Omniglot shape (Conv-4 {sizes.filters}, {sizes.side}x{sizes.side}, "
          f"5-way 1-shot, 5 queries, meta-batch 16, {sizes.fit_steps} meta-steps)")
    for label, extra in (("defaults", {}), ("precision='float32'", {"precision": "float32"})):
        def fit(steps, extra=extra):
            clf = FOMAMLClassifier("conv4", n_filters=sizes.filters,
                                   input_shape=(1, sizes.side, sizes.side), n_ways=5,
                                   k_shot=1, n_query=5, meta_batch_size=16, max_epochs=1,
                                   meta_batches_per_epoch=steps, device=device,
                                   adapt_on_fit=False, random_state=0, **extra)
            _sync(device)
            t0 = time.perf_counter()
            clf.fit(X, y)
            _sync(device)
            return clf, time.perf_counter() - t0

        fit(1)  # warm-up
        clf, seconds = fit(sizes.fit_steps)
        print(f"   {label:>20}: {16 * sizes.fit_steps / seconds:8.1f} tasks/s "
              f"(precision_={clf.precision_}, task_batching_={clf.task_batching_})")


def describe(device, quick):
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        return (f"Device: {p.name}, {p.total_memory / 2**30:.0f} GiB, compute capability "
                f"{p.major}.{p.minor}; torch {torch.__version__}, CUDA {torch.version.cuda}, "
                f"cuDNN {torch.backends.cudnn.version()}; native bf16: {_bf16_native(device)}")
    if quick:
        return f"Device: CPU (quick mode), torch {torch.__version__}"
    from throughput import machine_line

    return machine_line()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:N or cpu")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="tiny sizes (smoke test)")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("CUDA is not available on this machine: nothing to check (exit 0). "
              "Run this on a machine with a GPU, or --device cpu --quick for a smoke run.")
        return 0
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    sizes = Sizes(args.quick)
    print(describe(device, args.quick))
    ok = check_gradients(sizes, device)
    count_syncs(sizes, device)
    throughput(sizes, device, args.repeats, start)
    fit_rate(sizes, device)
    print(f"Done in {time.perf_counter() - start:.0f} s: "
          + ("the batched path agrees with the loop." if ok else
             "MISMATCH between the batched path and the loop (see step 1)."))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
