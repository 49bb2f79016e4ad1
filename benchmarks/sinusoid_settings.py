"""Settings of FOMAMLRegressor on sinusoids: inner rate, inner steps, meta
learning rate, rules; query MSE on 300 new waves after 1 and 10 test-time
inner steps (10 support points), after ``STEPS`` meta-steps of 10 tasks.
Chose the regressor's defaults and the learning tests' settings.

Usage: python benchmarks/sinusoid_settings.py [STEPS [NAME ...]]   (1 thread;
default 2000 meta-steps, every setting)
"""

import sys
import time
import warnings

import torch

from fomaml_sklearn import FOMAMLRegressor
from fomaml_sklearn.algorithms import IMAML
from fomaml_sklearn.datasets import make_sinusoid_tasks

torch.set_num_threads(1)
warnings.simplefilter("ignore")  # diverging settings print nan
X, y, g = make_sinusoid_tasks(n_tasks=5000, n_points=20, random_state=0)
Xt, yt, gt = make_sinusoid_tasks(n_tasks=300, n_points=20, random_state=1)
steps = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
configs = [
 ("fomaml a.01 k1", dict()),
 ("fomaml a.05 k1", dict(inner_lr=0.05)),
 ("fomaml a.1 k1", dict(inner_lr=0.1)),
 ("fomaml a.01 k5", dict(n_inner_steps=5)),
 ("fomaml a.05 k5", dict(inner_lr=0.05, n_inner_steps=5)),
 ("fomaml a.01 k1 lr3e-3", dict(lr=3e-3)),
 ("maml a.01 k1", dict(algorithm="maml")),
 ("maml a.05 k1", dict(algorithm="maml", inner_lr=0.05)),
 ("anil a.1 k1", dict(algorithm="anil", inner_lr=0.1)),
 ("fo-anil a.1 k5", dict(algorithm="fo-anil", inner_lr=0.1, n_inner_steps=5)),
 ("pretrained a.01", dict(n_inner_steps=0)),
 ("pretrained a.05", dict(n_inner_steps=0, inner_lr=0.05)),
 ("imaml lam1 k5", dict(algorithm="imaml", n_inner_steps=5)),
 ("imaml lam1 k20", dict(algorithm="imaml", n_inner_steps=20)),
 ("imaml lam10 k5", dict(algorithm=IMAML(lam=10.0), n_inner_steps=5)),
 ("imaml lam0.1 k20", dict(algorithm=IMAML(lam=0.1), n_inner_steps=20)),
]
names = sys.argv[2:]
configs = [(n, kw) for n, kw in configs if not names or n in names]
for name, kw in configs:
    t = time.time()
    reg = FOMAMLRegressor(max_epochs=steps // 100, meta_batches_per_epoch=100, random_state=0,
                          device="cpu", adapt_on_fit=False, **kw).fit(X, y, groups=g)
    sec = time.time() - t
    res = []
    for k in (1, 10):
        reg.set_params(n_inner_steps_test=k)
        mse = reg.evaluate(Xt, yt, gt, n_episodes=300, random_state=0).mse
        res.append(f"{k} steps {mse:.3f}")
    print(f"{name:<24} {sec:6.1f}s  " + "  ".join(res), flush=True)
