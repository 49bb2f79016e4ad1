"""torch.compile on the heavy part of a task step, against eager (issue #26).

A first-order task step is forward and backward passes of Conv-4 on a few
images: the support set in training mode (batch statistics) and the queries
with the support statistics held (evaluation mode). This script compiles the
loss of each as a function of the parameter tensors (inductor's CPU back end,
``dynamic=False``; AOTAutograd compiles the backward too) and times forward
plus ``torch.autograd.grad`` against eager, round-robin in one process, after
checking both give the same gradient. It prints the compile time (the first
call) as well::

    python benchmarks/compile_probe.py --threads 2

Conv-4 64, 28x28 random images, 5 classes, float32. If the compiled passes
are not clearly faster here, compiling a whole task step (these passes plus
a few small tensor operations) cannot be either.
"""

import argparse
import os
import sys
import time

import torch
from torch.func import functional_call
from torch.nn import functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from fomaml_sklearn.backbones import Conv4Backbone  # noqa: E402

from throughput import machine_line, time_interleaved  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--calls", type=int, default=20, help="passes per timing")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(machine_line())
    torch.manual_seed(0)
    body = Conv4Backbone((1, 28, 28), 64)
    names = [n for n, _ in body.named_parameters()]
    params = [p.detach().clone().requires_grad_(True) for p in body.parameters()]
    buffers = dict(body.named_buffers())
    dim = body(torch.rand(2, 784)).shape[1]

    def loss(params, x, y, weight, bias):
        feats = functional_call(body, {**dict(zip(names, params)), **buffers}, (x,))
        return F.cross_entropy(F.linear(feats, weight, bias), y)

    compiled = torch.compile(loss, dynamic=False)
    print("pass, images: eager s, compiled s per pass; eager / compiled; compile s")
    for train, rows in [(True, 5), (False, 5), (False, 25), (False, 75)]:
        x = torch.rand(rows, 784)
        y = torch.arange(5).repeat_interleave(rows // 5)
        head = [torch.randn(5, dim, requires_grad=True), torch.randn(5, requires_grad=True)]

        def grads(fn, x=x, y=y, head=head, train=train):
            body.train(train)  # the compiled function is guarded on it
            return torch.autograd.grad(fn(params, x, y, *head), params + head)

        t0 = time.perf_counter()
        got = grads(compiled)
        warm = time.perf_counter() - t0
        ref = grads(loss)
        scale = max(float(b.abs().max()) for b in ref)  # (a bias before BatchNorm: ~0)
        for a, b in zip(got, ref):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5 * scale)
        t = time_interleaved({
            "eager": lambda: [grads(loss) for _ in range(args.calls)],
            "compiled": lambda: [grads(compiled) for _ in range(args.calls)]}, args.repeats)
        e, c = t["eager"] / args.calls, t["compiled"] / args.calls
        print(f"  {'support (train)' if train else 'queries (eval)'}, {rows}: "
              f"{e * 1e3:.2f} ms, {c * 1e3:.2f} ms; {e / c:.2f}x; {warm:.1f} s", flush=True)


if __name__ == "__main__":
    main()
