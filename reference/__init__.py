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

import numpy as np
import torch


def fit(loss, params, data=(), *, lr, steps=None, indices=None, optimizer=None,
        device=None):
    """Trains like the lesson: eager torch, ``loss.backward()``, in-place update.

    Args:
      loss: ``loss(params, *batch) -> scalar tensor``.
      params: a tensor or array, or a tuple, list or dict of them. Copied,
        never modified.
      data: tuple of tensors or arrays sharing their leading axis, or ``()``.
      lr: learning rate, ``> 0``.
      steps: number of full-batch updates; may be omitted with ``indices``.
      indices: ``(steps, batch_size)`` integer schedule of rows (NumPy).
      optimizer: ``None`` for the lesson's in-place update, or a factory
        ``optimizer(parameters, lr=lr)`` such as
        ``functools.partial(torch.optim.SGD, momentum=0.9)``.
      device: torch device to run on (default: where the inputs are).

    Returns:
      ``(params, losses)`` as NumPy: params in the structure given,
      ``losses[t]`` the loss of step ``t``'s batch before its update.

    >>> import numpy as np
    >>> linear_mse = lambda a, x, y: ((x @ a - y) ** 2).mean()
    >>> x = np.array([[0.5, 1.0], [-0.5, 1.0]]); y = x @ np.array([3.0, 2.0])
    >>> params, losses = fit(linear_mse, np.zeros(2), (x, y), lr=0.5, steps=50)
    >>> np.round(params, 3).tolist(), bool(losses[-1] < 1e-6)
    ([3.0, 2.0], True)
    """
    lr = float(lr)
    if not np.isfinite(lr) or lr <= 0:
        raise ValueError(f"lr must be a finite number > 0; got {lr}.")
    if not isinstance(data, (tuple, list)):
        raise TypeError(f"data must be a tuple of arrays; got {type(data).__name__}.")
    data = tuple(_tensor(a, device) for a in data)
    if indices is not None:
        indices = np.array(indices)  # a copy torch may own
        if indices.ndim != 2:
            raise ValueError(f"indices must have shape (steps, batch_size); got {indices.shape}.")
        if steps is not None and steps != indices.shape[0]:
            raise ValueError(f"steps={steps} disagrees with indices of shape {indices.shape}.")
        steps = indices.shape[0]
        indices = torch.as_tensor(indices, dtype=torch.long, device=_device(data, device))
    elif steps is None:
        raise TypeError("steps is required (or pass an indices schedule).")

    # 1. initialize: trainable copies of the caller's params.
    leaves, rebuild = _flatten(params)
    leaves = [torch.nn.Parameter(_tensor(p, device).clone()) for p in leaves]
    model_params = rebuild(leaves)
    opt = None if optimizer is None else optimizer(leaves, lr=lr)

    losses = []
    for t in range(steps):  # 6. repeat
        batch = data if indices is None else tuple(a[indices[t]] for a in data)
        value = loss(model_params, *batch)  # 2. predict and 3. loss
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
    out = rebuild([p.detach().cpu().numpy() for p in leaves])
    return out, torch.stack(losses).cpu().numpy()


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
    """Leaves of a tensor or a flat tuple/list/dict, and how to rebuild it."""
    if isinstance(params, dict):
        keys = list(params)
        return [params[k] for k in keys], lambda leaves: dict(zip(keys, leaves))
    if isinstance(params, (tuple, list)):
        kind = type(params)
        return list(params), lambda leaves: kind(leaves)
    return [params], lambda leaves: leaves[0]
