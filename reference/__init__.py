"""The lesson's own training loop in PyTorch, step for step.

This is the baseline the JAX library is checked against and timed against::

    y_hat = x @ a; loss = mse(y_hat, y); loss.backward()
    with torch.no_grad():
        a.sub_(lr * a.grad)
        a.grad.zero_()

It replays an explicit ``indices`` schedule, so it sees exactly the batches
``functional_sgd.fit`` saw. The loss functions of ``functional_sgd``
(``linear``, ``mse``, ``linear_mse``) are written with operators only and run
on torch tensors as they are.
"""

import numbers

import numpy as np
import torch


def fit(loss, params, data=(), *, lr, steps=None, indices=None, optimizer=None,
        device=None, drop_last=True):
    """Trains like the lesson: eager torch, ``loss.backward()``, in-place update.

    Args:
      loss: ``loss(params, *batch) -> scalar tensor`` (real, computed from params).
      params: a float tensor or array (or a Python float), or a flat tuple,
        list or dict of them. Copied, never modified.
      data: tuple of tensors or arrays sharing their leading axis, or ``()``.
      lr: learning rate, a real number ``> 0`` (a 0-d array or tensor too).
      steps: number of full-batch updates, an int ``>= 1``; may be omitted
        with ``indices``.
      indices: ``(steps, batch_size)`` integer schedule of rows in ``[0, n)``
        (NumPy, torch or JAX); never modified. With ``drop_last=False`` a
        slot may hold ``-1``, padding: that step's batch is its real rows
        only (a short batch, as torch's ``DataLoader(drop_last=False)``
        gives), so a loss that is a mean over rows is their mean.
      optimizer: ``None`` for the lesson's in-place update, or a factory
        ``optimizer(parameters, lr=lr)`` such as
        ``functools.partial(torch.optim.SGD, momentum=0.9)``.
      device: torch device to run on (default: where the inputs are).
      drop_last: ``False`` lets ``indices`` hold ``-1`` padding (see there);
        every step keeps at least one real row.

    Returns:
      ``(params, losses)`` as NumPy: params in the structure given,
      ``losses[t]`` the loss of step ``t``'s batch before its update. A
      dtype NumPy lacks (``torch.bfloat16``) comes back as ml_dtypes' (the
      one JAX uses), with the same bits; without ml_dtypes such params are
      refused before training.

    Raises:
      TypeError: an argument of the wrong type or dtype (bool or float
        indices, ``lr=True``, integer params, a loss that returns no tensor).
      ValueError: a wrong value or shape (indices outside ``[0, n)``,
        ``steps=0``, data arrays with different numbers of rows, a loss that
        is not a scalar). Every message names the argument and what it got.

    >>> import numpy as np
    >>> linear_mse = lambda a, x, y: ((x @ a - y) ** 2).mean()
    >>> x = np.array([[0.5, 1.0], [-0.5, 1.0]]); y = x @ np.array([3.0, 2.0])
    >>> params, losses = fit(linear_mse, np.zeros(2), (x, y), lr=0.5, steps=50)
    >>> np.round(params, 3).tolist(), bool(losses[-1] < 1e-6)
    ([3.0, 2.0], True)
    """
    _check_callable(loss, "loss", "a function loss(params, *batch) -> scalar tensor")
    leaves, names, rebuild = _flatten(params)
    n = _check_data(data)
    lr = _check_lr(lr)
    if not isinstance(drop_last, (bool, np.bool_)):
        raise TypeError(f"drop_last must be True or False; got {_show(drop_last)}.")
    steps, indices = _check_schedule(steps, indices, n, padding=not drop_last)
    if optimizer is not None:
        _check_callable(optimizer, "optimizer", "None or a factory optimizer(parameters, lr=lr) "
                        "such as functools.partial(torch.optim.SGD, momentum=0.9), not an "
                        "optimizer already built")
    _check_device(device)
    data = tuple(_tensor(a, device) for a in data)
    if indices is not None:  # each step's real rows (padding, -1, left out)
        indices = [torch.as_tensor(row[row >= 0], dtype=torch.long, device=_device(data, device))
                   for row in indices]

    # 1. initialize: trainable copies of the caller's params.
    leaves = [torch.nn.Parameter(_tensor(p, device).clone()) for p in leaves]
    for p, name in zip(leaves, names):  # before training, not after
        _numpy_dtype(p.dtype, name)
    model_params = rebuild(leaves)
    opt = None if optimizer is None else _check_built(optimizer(leaves, lr=lr))

    losses = []
    for t in range(steps):  # 6. repeat
        batch = data if indices is None else tuple(a[indices[t]] for a in data)
        value = loss(model_params, *batch)  # 2. predict and 3. loss
        if t == 0:  # every batch has the same shape: one check holds for all
            _check_loss_value(value)
        losses.append(value.detach())
        value.backward()  # 4. gradient
        if opt is None:  # 5. step, the lesson's way
            with torch.no_grad():
                for p in leaves:
                    p.sub_(lr * p.grad)
                    p.grad.zero_()
        else:
            opt.step()
            opt.zero_grad()
    # 7. stop: after `steps` updates, as the lesson does.
    out = rebuild([_numpy(p.detach()) for p in leaves])
    return out, _numpy(torch.stack(losses))


def _numpy(tensor):
    """``tensor`` as a NumPy array of the same bits; a dtype NumPy lacks
    (``torch.bfloat16``) as ml_dtypes' (which JAX uses too)."""
    tensor = tensor.cpu()
    try:
        return tensor.numpy()
    except TypeError:  # checked before training: ml_dtypes holds it
        bits = {1: torch.uint8, 2: torch.int16}[tensor.element_size()]
        return tensor.view(bits).numpy().view(_numpy_dtype(tensor.dtype, "the result"))


def _numpy_dtype(torch_dtype, name):
    """The NumPy dtype that holds ``torch_dtype``'s values, or a TypeError
    saying how to convert ``name``: raised before training, not after it."""
    try:
        return torch.empty((), dtype=torch_dtype).numpy().dtype
    except TypeError:
        pass
    kind = str(torch_dtype).removeprefix("torch.")
    try:
        import ml_dtypes  # JAX's own 16- and 8-bit floats: installed with JAX
        return np.dtype(getattr(ml_dtypes, kind))
    except (ImportError, AttributeError):
        raise TypeError(f"{name} has dtype {torch_dtype}, which neither NumPy nor ml_dtypes "
                        "(if installed) can hold, and fit returns NumPy arrays: pass float32 "
                        "params, e.g. tensor.float().") from None



def _tensor(a, device):
    if isinstance(a, torch.Tensor):
        return a.to(device) if device is not None else a
    array = np.asarray(a)
    if not array.flags.writeable:  # e.g. a view of a JAX array; torch wants to own it
        array = array.copy()
    return torch.as_tensor(array, device=device)


def _device(data, device):
    if device is not None:
        return device
    return data[0].device if data else None


def _flatten(params):
    """Leaves of a tensor, an array or a flat tuple/list/dict of them, their
    names for messages, and how to rebuild it; every leaf checked to be a
    float, something torch can train."""
    if isinstance(params, dict):
        keys = list(params)
        leaves, names = [params[k] for k in keys], [f"params[{k!r}]" for k in keys]
        rebuild = lambda leaves: dict(zip(keys, leaves))  # noqa: E731
    elif isinstance(params, (tuple, list)):
        kind = type(params)
        leaves, names = list(params), [f"params[{i}]" for i in range(len(params))]
        rebuild = (lambda leaves: kind(*leaves)) if hasattr(kind, "_fields") else kind
    elif _is_array(params) or isinstance(params, numbers.Number):
        leaves, names, rebuild = [params], ["params"], lambda leaves: leaves[0]
    else:
        raise TypeError("params must be a float tensor or array, or a tuple, list or dict of "
                        f"them; got {_show(params)}.")
    if not leaves:
        raise ValueError(f"params is an empty {type(params).__name__}: nothing to train.")
    for leaf, name in zip(leaves, names):
        _check_leaf(leaf, name)
    return leaves, names, rebuild


# Checks, in plain Python before the loop: each names the argument, what it
# got and what was expected.

def _is_array(a):
    return hasattr(a, "shape") and hasattr(a, "dtype")  # NumPy, torch, JAX


def _kind(a):
    """``"float"`` (real or complex), ``"int"``, ``"bool"`` or ``"other"``
    (strings, objects) for the dtype of a tensor or array."""
    if isinstance(a, torch.Tensor):
        if a.dtype == torch.bool:
            return "bool"
        return "float" if a.is_floating_point() or a.is_complex() else "int"
    try:
        kind = np.dtype(a.dtype).kind
    except TypeError:  # a dtype NumPy does not know, e.g. a JAX PRNG key's
        return "other"
    return {"f": "float", "c": "float", "i": "int", "u": "int", "b": "bool"}.get(kind, "other")


def _show(value):
    """``value`` for an error message: arrays by dtype and shape, not contents."""
    if _is_array(value) and not isinstance(value, np.generic):
        return f"{type(value).__name__} of dtype {value.dtype} and shape {tuple(value.shape)}"
    text = " ".join(repr(value).split())
    return f"{text if len(text) <= 60 else text[:57] + '...'} of type {type(value).__name__}"


def _check_callable(f, name, expected):
    if not callable(f):
        raise TypeError(f"{name} must be {expected}; got {_show(f)}.")


def _check_leaf(leaf, name):
    if isinstance(leaf, numbers.Integral):  # bool included
        raise TypeError(f"{name} must be a float (torch takes gradients of floats only, so an "
                        f"integer has nothing to train); got {_show(leaf)}. Pass e.g. "
                        f"{float(leaf)!r}.")
    if isinstance(leaf, (float, np.floating)):  # a Python or NumPy float: a 0-d tensor
        return
    if not _is_array(leaf):
        raise TypeError(f"{name} must be a float tensor or array (params is one, or a flat "
                        f"tuple, list or dict of them); got {_show(leaf)}.")
    if _kind(leaf) != "float":
        raise TypeError(f"{name} must have a float dtype (torch takes gradients of floats only, "
                        f"so there is nothing to train); got dtype {leaf.dtype}. Convert it, "
                        "e.g. with .astype(np.float32) or .float().")


def _check_data(data):
    """Returns the number of rows ``n`` of ``data`` (``None`` for ``()``)."""
    if not isinstance(data, (tuple, list)):
        raise TypeError("data must be a tuple of arrays sharing their leading axis, e.g. "
                        f"(x, y), or () for a data-free objective; got {_show(data)}. Wrap a "
                        "single array as (x,).")
    for i, a in enumerate(data):
        if not _is_array(a) or _kind(a) == "other":
            raise TypeError(f"data[{i}] must be a numeric tensor or array (NumPy, torch or "
                            f"JAX); got {_show(a)}.")
        if len(a.shape) == 0:
            raise ValueError(f"data[{i}] must have a leading axis of rows; got a scalar "
                             f"({_show(a)}).")
    if not data:
        return None
    rows = [a.shape[0] for a in data]
    if len(set(rows)) > 1:
        shapes = ", ".join(f"data[{i}].shape={tuple(a.shape)}" for i, a in enumerate(data))
        raise ValueError(f"data arrays must share their leading axis (the rows); got {shapes}.")
    if rows[0] == 0:
        raise ValueError(f"data has no rows (leading axis of length 0): {_show(data[0])}.")
    return rows[0]


def _check_lr(lr):
    """``lr`` as a Python float: a real scalar, finite and ``> 0``."""
    value = lr.item() if _is_array(lr) and tuple(lr.shape) == () else lr
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError("lr must be a real number (an int, a float or a 0-d array of one), "
                        f"e.g. lr=0.1; got {_show(lr)}.")
    value = float(value)
    if not np.isfinite(value) or value <= 0:
        raise ValueError(f"lr must be a finite number > 0; got {value}.")
    return value


def _check_steps(steps):
    if isinstance(steps, (bool, np.bool_)) or not isinstance(steps, numbers.Integral):
        raise TypeError(f"steps must be an int (the number of updates), e.g. steps=100; got "
                        f"{_show(steps)}.")
    if steps < 1:
        raise ValueError(f"steps must be >= 1 (the number of updates); got {steps}.")
    return int(steps)


def _check_schedule(steps, indices, n, padding=False):
    """Returns ``(steps, indices)``, indices a NumPy copy (or ``None``);
    with ``padding``, ``-1`` marks a padding slot."""
    if steps is not None:
        steps = _check_steps(steps)
    if indices is None:
        if steps is None:
            raise TypeError("steps is required (or pass an indices schedule), e.g. steps=100.")
        return steps, None
    if n is None:
        raise ValueError("indices need data to index, but data is (): drop indices and "
                         "pass steps for a data-free objective.")
    if not _is_array(indices):
        raise TypeError("indices must be an integer array of shape (steps, batch_size) "
                        f"(NumPy, torch or JAX); got {_show(indices)}.")
    shape = tuple(indices.shape)
    if len(shape) != 2:
        raise ValueError(f"indices must have shape (steps, batch_size); got shape {shape}.")
    if 0 in shape:
        raise ValueError(f"indices must not be empty (each step needs a row); got shape {shape}.")
    if _kind(indices) != "int":
        raise TypeError(f"indices must have an integer dtype (row numbers); got dtype "
                        f"{indices.dtype}: floats would be truncated, bools read as rows 0 and 1.")
    if isinstance(indices, torch.Tensor):
        indices = indices.cpu().numpy()
    indices = np.array(indices)  # a copy torch may own
    low, high = int(indices.min()), int(indices.max())
    if low < (-1 if padding else 0) or high >= n:
        why = " (negative indices are not read from the end; -1 marks padding only with " \
            "drop_last=False)" if low < 0 else ""
        allowed = f"[0, {n})" + (" or -1 (padding)" if padding else "")
        raise ValueError(f"indices must lie in {allowed} (data has n={n} rows); got values "
                         f"from {low} to {high}{why}.")
    empty = np.flatnonzero(indices.max(axis=1) < 0)
    if empty.size:
        raise ValueError(f"indices has steps of padding only (-1 in every slot), the first at "
                         f"step {int(empty[0])}; every step needs at least one real row.")
    if steps is not None and steps != shape[0]:
        raise ValueError(f"steps={steps} disagrees with indices of shape {shape}; omit steps "
                         "or pass as many rows of indices.")
    return shape[0], indices


def _check_device(device):
    if device is None:
        return
    try:
        torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise ValueError(f"device must be a torch device such as 'cpu' or 'cuda:0'; got "
                         f"{_show(device)} ({error}).") from None


def _check_built(opt):
    if not (callable(getattr(opt, "step", None)) and callable(getattr(opt, "zero_grad", None))):
        raise TypeError("optimizer(parameters, lr=lr) must build a torch optimizer (with step "
                        f"and zero_grad); it returned {_show(opt)}.")
    return opt


def _check_loss_value(value):
    """The loss must be a real scalar tensor computed from params."""
    if not isinstance(value, torch.Tensor):
        raise TypeError("loss must return a scalar torch tensor computed from params; got "
                        f"{_show(value)}. Write it with operators or torch functions: torch "
                        "cannot differentiate through NumPy or Python floats.")
    if value.dim() != 0:
        raise ValueError(f"loss must return a scalar; got a tensor of shape {tuple(value.shape)}. "
                         "Reduce it, e.g. with .mean().")
    if not value.is_floating_point():
        raise TypeError(f"loss must return a real float scalar; got dtype {value.dtype}.")
    if not value.requires_grad:
        raise ValueError("loss does not depend on params: its value has no gradient (or fit "
                         "was called under torch.no_grad()).")
