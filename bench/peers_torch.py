"""Peers from the torch side: ``torch.compile`` around the lesson's step and
around the whole loop, and fastai's ``Learner``; each replays the workload's
schedule (see :mod:`bench.peers`).
"""

import numpy as np

from bench.peers import Unavailable

FASTAI_INSTALL = ("pip install --no-deps fastai fastcore fasttransform 'plum-dispatch<2.10' "
                  "'fastprogress<1.1' fastdownload && pip install pandas beartype")
"""fastai beside an installed torch: ``pip install fastai`` pulls torchvision,
whose PyPI wheel pins (and so replaces) torch; ``fastai.learner`` and
``fastai.data`` need none of torchvision, and fastprogress 1.1 pulls a web
framework that 1.0 did not."""


# ---- torch.compile ---------------------------------------------------------

def _torch():
    try:
        import torch
    except ImportError as error:
        raise Unavailable(f"torch does not import ({error})") from None
    return torch


def _torch_data(problem, device):
    torch = _torch()
    as_tensor = lambda a: torch.as_tensor(np.array(a), device=device)
    indices = None if problem.indices is None else as_tensor(problem.indices.astype(np.int64))
    return torch, as_tensor(problem.start), as_tensor(problem.x), as_tensor(problem.y), indices


def _compiled_first_call(torch, run):
    """``run`` whose first call (the one that compiles) runs with torch's
    compile caches off, so it costs what a first compile costs, and turns a
    failure of the compiler into :class:`Unavailable`."""
    import torch._inductor.config
    from torch._dynamo.exc import TorchDynamoException
    from torch._inductor.exc import CppCompileError, InvalidCxxCompiler

    torch._dynamo.reset()  # no graph of an earlier workload is reused
    compiled = []

    def first_then_warm():
        if compiled:
            return run()
        try:
            with torch._inductor.config.patch(force_disable_caches=True):
                out = run()
        except (TorchDynamoException, CppCompileError, InvalidCxxCompiler) as error:
            reason = " ".join(str(error).split())[:200]
            raise Unavailable(f"torch.compile fails here: {type(error).__name__}: "
                              f"{reason}") from None
        compiled.append(True)
        return out

    return first_then_warm


def torch_compiled_step(problem, device, *, compile=None):
    """The lesson's step (loss, ``loss.backward()``, in-place update) under
    ``torch.compile`` with its defaults, driven by a Python loop as
    ``reference.fit`` drives it. Dynamo breaks the graph at ``backward()``
    (``trace_autograd_ops`` is off by default). ``compile``: a stand-in for
    ``torch.compile`` (the tests pass one that compiles nothing)."""
    torch, start, x, y, indices = _torch_data(problem, device)
    lr, steps = problem.workload.lr, problem.workload.steps
    a = start.clone().requires_grad_()
    a.grad = torch.zeros_like(a)  # with None at the first call, the second would recompile

    def step(a, x, y, rows):
        xb, yb = (x, y) if rows is None else (x[rows], y[rows])
        loss = ((xb @ a - yb) ** 2).mean()
        loss.backward()
        with torch.no_grad():
            a.sub_(lr * a.grad)
            a.grad.zero_()
        return loss.detach()

    compiled = (compile or torch.compile)(step)

    def run():
        with torch.no_grad():
            a.copy_(start)
        losses = [compiled(a, x, y, None if indices is None else indices[t])
                  for t in range(steps)]
        torch.stack(losses).cpu()
        return a.detach().cpu().numpy().copy()

    return run if compile else _compiled_first_call(torch, run)


def torch_compiled_loop(problem, device, *, compile=None):
    """The whole loop in one ``torch.compile(..., fullgraph=True)``: a Python
    loop that dynamo unrolls (its compile time grows with the steps). The
    gradient of ``mean(r²)`` is written out, ``2/b Xᵀr``: dynamo does not
    trace ``backward()`` or ``torch.autograd.grad`` inside a compiled graph
    by default."""
    torch, start, x, y, indices = _torch_data(problem, device)
    lr, steps = problem.workload.lr, problem.workload.steps

    def loop(a, x, y, indices):
        losses = []
        for t in range(steps):
            xb, yb = (x, y) if indices is None else (x[indices[t]], y[indices[t]])
            r = xb @ a - yb
            losses.append((r * r).mean())
            a = a - lr * (2.0 / yb.shape[0]) * (r @ xb)
        return a, torch.stack(losses)

    compiled = (compile or torch.compile)(loop, fullgraph=True)

    def run():
        params, _ = compiled(start, x, y, indices)
        return params.cpu().numpy()

    return run if compile else _compiled_first_call(torch, run)


def torch_compiled_scan(problem, device, *, compile=None):
    """The whole loop as torch's own scan (``torch._higher_order_ops.scan``,
    a prototype) under ``torch.compile(..., fullgraph=True)``: one compiled
    body, whatever the number of steps. Gradient written out, as in
    :func:`torch_compiled_loop`."""
    torch, start, x, y, indices = _torch_data(problem, device)
    try:
        from torch._higher_order_ops.scan import scan
    except ImportError as error:
        raise Unavailable(f"this torch has no scan to compile ({error})") from None
    lr, steps = problem.workload.lr, problem.workload.steps
    # Full batch: the scan still needs something to scan over.
    xs = torch.zeros(steps, 1, dtype=torch.long, device=x.device) if indices is None else indices

    def loop(a, x, y, xs):
        def step(a, rows):
            xb, yb = (x, y) if indices is None else (x[rows], y[rows])
            r = xb @ a - yb
            return a - lr * (2.0 / yb.shape[0]) * (r @ xb), (r * r).mean()

        return scan(step, a, xs)

    compiled = (compile or torch.compile)(loop, fullgraph=True)

    def run():
        params, _ = compiled(start, x, y, xs)
        return params.cpu().numpy()

    return run if compile else _compiled_first_call(torch, run)


# ---- fastai ----------------------------------------------------------------

def fastai_learner(problem, device):
    """fastai's ``Learner`` over ``list(zip(x, y))`` (the course's dataset),
    ``nn.Linear(d, 1, bias=False)``, ``MSELossFlat``, fastai's ``SGD``
    (no momentum, no weight decay), ``learn.fit(epochs)``.

    fastai shuffles with its own generator, so its ``DataLoader`` replays
    our schedule instead: ``shuffle_fn`` returns each epoch's order of an
    epoch schedule, ``get_idxs`` the rows of a random one (one epoch of
    ``steps`` batches), and a full batch is ``bs=n``, one step an epoch.
    The validation set is empty: the workload trains only.
    """
    torch, start, x, y, _ = _torch_data(problem, "cpu")  # fastai moves each batch to device
    try:
        from fastai.data.core import DataLoaders
        from fastai.data.load import DataLoader
        from fastai.learner import Learner
        from fastai.losses import MSELossFlat
        from fastai.optimizer import SGD
    except ImportError as error:
        raise Unavailable(f"fastai does not import ({error}); pip install fastai would "
                          f"replace torch, so: {FASTAI_INSTALL}") from None
    w = problem.workload
    dataset = list(zip(x, y))
    bs = w.batch_size or w.n
    if w.schedule == "full":
        loader, epochs = dict(shuffle=False), w.steps
    elif w.schedule == "epoch":
        steps_per_epoch = w.n // bs
        epochs = w.steps // steps_per_epoch
        orders = [problem.indices[e * steps_per_epoch:(e + 1) * steps_per_epoch].reshape(-1)
                  for e in range(epochs)]
        state = {"epoch": 0}

        def replay(idxs):
            order = orders[state["epoch"] % epochs]
            state["epoch"] += 1
            return order.tolist()

        loader = dict(shuffle=True, shuffle_fn=replay)
    else:
        rows = problem.indices.reshape(-1).tolist()
        loader, epochs = dict(shuffle=False, n=len(rows), get_idxs=lambda: rows), 1
    train = DataLoader(dataset, bs=bs, device=device, **loader)
    model = torch.nn.Linear(w.d, 1, bias=False)
    learn = Learner(DataLoaders(train, DataLoader([], bs=bs, device=device)), model,
                    loss_func=MSELossFlat(), opt_func=SGD, lr=w.lr)
    if device is not None:
        model.to(device)

    def run():
        if w.schedule == "epoch":
            state["epoch"] = 0
        with torch.no_grad():
            model.weight.copy_(start[None, :])
        with learn.no_logging():
            learn.fit(epochs)
        return model.weight.detach().cpu().numpy()[0].copy()

    return run
