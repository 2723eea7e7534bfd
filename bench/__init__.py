"""Benchmarks of functional-sgd against the lesson's torch loop and its peers.

* ``python -m pytest bench --benchmark-enable --bench-size=full``: the suite;
* ``python -m bench.run``: runs it and writes ``bench/results/REPORT.md``;
* ``python -m bench.run --devices all``: the same workloads on every device
  (``--help`` for the other comparisons; ``bench/investigations/`` holds
  one-off measurements).

Peers a user could pick instead (``bench/peers.py``): a hand-written
``jax.jit(lax.scan)``, Keras 3 on JAX (``pip install -e ".[bench]"``),
``torch.compile``, and fastai's ``Learner``, which ``pip install fastai``
cannot add beside an installed torch (it pulls torchvision, which replaces
torch); ``bench.peers_torch.FASTAI_INSTALL`` is the command that can.
"""
