"""The torch referee refuses bad input clearly, never mutates its inputs, and
never imports the player (functional_sgd)."""

import collections
import functools
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import reference  # noqa: E402  (needs torch)

N = 10
X = np.stack([np.linspace(-1, 1, N), np.ones(N)], axis=1).astype(np.float32)
Y = X @ np.array([3.0, 2.0], np.float32) + 0.5
START = np.array([0.5, 0.75], np.float32)
INDICES = np.arange(12).reshape(4, 3) % N


def mse(a, x, y):
    return ((x @ a - y) ** 2).mean()


def call(**changes):
    """reference.fit on the lesson's problem with some arguments changed;
    ``None`` for steps drops it."""
    kwargs = dict(loss=mse, params=START, data=(X, Y), lr=0.1, steps=3)
    kwargs.update(changes)
    return reference.fit(**kwargs)


def schedule(indices, **changes):
    return call(steps=None, indices=indices, **changes)


# (case, kwargs, error, what the message must match: the argument, what it got
# and what was expected). "was" says what reference.fit did before these
# checks: silent (accepted), traceback (an error from torch, NumPy or Python
# deep inside, not naming the argument), clear (already named it; the message
# now says more). Lists for indices or a data element were coerced before;
# like functional_sgd.fit, the referee now asks for arrays.
CASES = [
    # indices
    ("indices -1 (was silent: the last row)", dict(indices=np.full((4, 3), -1)), ValueError,
     r"indices must lie in \[0, 10\) \(data has n=10 rows\); got values from -1 to -1 "
     r"\(negative"),
    ("indices = n (was traceback: IndexError)", dict(indices=np.full((4, 3), N)), ValueError,
     r"indices must lie in \[0, 10\).*from 10 to 10"),
    ("indices far too large (was traceback)", dict(indices=INDICES + 10**6), ValueError,
     r"indices must lie in \[0, 10\).*to 1000009"),
    ("indices float (was silent: truncated)", dict(indices=INDICES + 0.7), TypeError,
     r"indices must have an integer dtype.*got dtype float64"),
    ("indices bool (was silent: rows 0 and 1)", dict(indices=INDICES > 4), TypeError,
     r"indices must have an integer dtype.*got dtype bool"),
    ("indices torch float (was silent)", dict(indices=torch.tensor(INDICES, dtype=torch.float32)),
     TypeError, r"indices must have an integer dtype.*got dtype torch.float32"),
    ("indices str (was traceback)", dict(indices=np.full((4, 3), "1")), TypeError,
     r"indices must have an integer dtype.*got dtype <U1"),
    ("indices 1-D (was clear)", dict(indices=np.arange(3)), ValueError,
     r"indices must have shape \(steps, batch_size\); got shape \(3,\)"),
    ("indices 3-D (was clear)", dict(indices=INDICES[..., None]), ValueError,
     r"indices must have shape \(steps, batch_size\); got shape \(4, 3, 1\)"),
    ("indices no steps (was traceback: empty TensorList)", dict(indices=np.zeros((0, 3), int)),
     ValueError, r"indices must not be empty.*got shape \(0, 3\)"),
    ("indices empty batches (was silent)", dict(indices=np.zeros((4, 0), int)), ValueError,
     r"indices must not be empty.*got shape \(4, 0\)"),
    ("indices a list (was silent: coerced)", dict(indices=INDICES.tolist()), TypeError,
     r"indices must be an integer array of shape \(steps, batch_size\).*got \[\[0, 1, 2\]"),
    ("indices ragged list (was traceback)", dict(indices=[[1, 2], [3]]), TypeError,
     r"indices must be an integer array.*got \[\[1, 2\], \[3\]\] of type list"),
    ("indices disagree with steps (was clear)", dict(indices=INDICES, steps=5), ValueError,
     r"steps=5 disagrees with indices of shape \(4, 3\)"),
    ("indices with data () (was silent: ignored)", dict(indices=INDICES, data=(),
                                                        loss=lambda a: (a ** 2).sum()),
     ValueError, r"indices need data to index, but data is \(\)"),
    # lr
    ("lr '0.1' (was silent)", dict(lr="0.1"), TypeError, r"lr must be a real number.*got '0.1' "
                                                        r"of type str"),
    ("lr True (was silent: 1.0)", dict(lr=True), TypeError, r"lr must be a real number.*got True"),
    ("lr np.bool_ (was silent)", dict(lr=np.bool_(True)), TypeError, r"lr must be a real number"),
    ("lr complex (was traceback)", dict(lr=0.1 + 0j), TypeError,
     r"lr must be a real number.*got \(0.1\+0j\) of type complex"),
    ("lr nan (was clear)", dict(lr=float("nan")), ValueError, r"lr must be a finite number > 0; "
                                                             r"got nan"),
    ("lr inf (was clear)", dict(lr=float("inf")), ValueError, r"lr must be a finite number > 0; "
                                                             r"got inf"),
    ("lr 0 (was clear)", dict(lr=0), ValueError, r"lr must be a finite number > 0; got 0.0"),
    ("lr negative (was clear)", dict(lr=-0.1), ValueError, r"lr must be a finite number > 0; "
                                                          r"got -0.1"),
    ("lr a list (was traceback)", dict(lr=[0.1]), TypeError, r"lr must be a real number.*got "
                                                            r"\[0.1\] of type list"),
    ("lr an array (was traceback)", dict(lr=np.array([0.1, 0.2])), TypeError,
     r"lr must be a real number.*got ndarray of dtype float64 and shape \(2,\)"),
    ("lr a 1-element tensor (was silent)", dict(lr=torch.tensor([0.1])), TypeError,
     r"lr must be a real number.*shape \(1,\)"),
    ("lr None (was traceback)", dict(lr=None), TypeError, r"lr must be a real number.*got None"),
    # steps
    ("steps True (was silent: one step)", dict(steps=True), TypeError,
     r"steps must be an int.*got True of type bool"),
    ("steps 0 (was traceback: empty TensorList)", dict(steps=0), ValueError,
     r"steps must be >= 1.*got 0"),
    ("steps negative (was traceback)", dict(steps=-3), ValueError, r"steps must be >= 1.*got -3"),
    ("steps 3.0 (was traceback)", dict(steps=3.0), TypeError,
     r"steps must be an int.*got 3.0 of type float"),
    ("steps '3' (was traceback)", dict(steps="3"), TypeError, r"steps must be an int.*got '3'"),
    ("steps missing (was clear)", dict(steps=None), TypeError, r"steps is required"),
    # data
    ("data an array, not a tuple (was clear)", dict(data=X), TypeError,
     r"data must be a tuple of arrays.*got ndarray of dtype float32 and shape \(10, 2\)"),
    ("data a dict (was clear)", dict(data={"x": X, "y": Y}), TypeError,
     r"data must be a tuple of arrays.*of type dict"),
    ("data element a string (was traceback)", dict(data=(X, "y")), TypeError,
     r"data\[1\] must be a numeric tensor or array.*got 'y' of type str"),
    ("data element None (was traceback)", dict(data=(X, None)), TypeError,
     r"data\[1\] must be a numeric tensor or array.*got None"),
    ("data element a list (was silent: coerced)", dict(data=(X, Y.tolist())), TypeError,
     r"data\[1\] must be a numeric tensor or array.*of type list"),
    ("data element of strings (was traceback)", dict(data=(X, Y.astype(str))), TypeError,
     r"data\[1\] must be a numeric tensor or array.*dtype <U"),
    ("data scalar element (was silent)", dict(data=(X, np.float32(1.0))), ValueError,
     r"data\[1\] must have a leading axis of rows; got a scalar"),
    ("data 0-d tensor (was silent)", dict(data=(X, torch.tensor(1.0))), ValueError,
     r"data\[1\] must have a leading axis of rows; got a scalar \(Tensor .* shape \(\)\)"),
    ("data leading axes differ (was traceback)", dict(data=(X, Y[:5])), ValueError,
     r"data arrays must share their leading axis.*data\[0\].shape=\(10, 2\), "
     r"data\[1\].shape=\(5,\)"),
    ("data leading axes differ, indices in both (was silent)",
     dict(data=(X, Y[:5]), steps=None, indices=INDICES % 5), ValueError,
     r"data arrays must share their leading axis"),
    ("data without rows (was silent: nan losses)", dict(data=(X[:0], Y[:0])), ValueError,
     r"data has no rows.*shape \(0, 2\)"),
    # params
    ("params int array (was traceback)", dict(params=np.array([1, 2])), TypeError,
     r"params must have a float dtype.*got dtype int64"),
    ("params int tensor (was traceback)", dict(params=torch.tensor([1, 2])), TypeError,
     r"params must have a float dtype.*got dtype torch.int64"),
    ("params bool array (was traceback)", dict(params=np.array([True, False])), TypeError,
     r"params must have a float dtype.*got dtype bool"),
    ("params a Python int (was traceback)", dict(params=3, loss=lambda a: a ** 2), TypeError,
     r"params must be a float.*got 3 of type int"),
    ("params a string (was traceback)", dict(params="ab"), TypeError,
     r"params must be a float tensor or array, or a tuple, list or dict of them; got 'ab'"),
    ("params None (was traceback)", dict(params=None), TypeError,
     r"params must be a float tensor or array.*got None"),
    ("params a set (was traceback)", dict(params={0.5, 0.75}), TypeError,
     r"params must be a float tensor or array.*of type set"),
    ("params nested dict (was traceback)", dict(params={"w": {"a": START}}), TypeError,
     r"params\['w'\] must be a float tensor or array.*of type dict"),
    ("params dict with an int leaf (was traceback)",
     dict(params={"w": START, "n": np.array(3)}), TypeError,
     r"params\['n'\] must have a float dtype.*got dtype int64"),
    ("params empty (was traceback)", dict(params=(), loss=lambda a, x, y: (y ** 2).mean()),
     ValueError, r"params is an empty tuple: nothing to train"),
    # loss
    ("loss not callable (was traceback)", dict(loss="mse"), TypeError,
     r"loss must be a function loss\(params, \*batch\).*got 'mse' of type str"),
    ("loss None (was traceback)", dict(loss=None), TypeError, r"loss must be a function.*None"),
    ("loss not a scalar (was traceback from backward)",
     dict(loss=lambda a, x, y: (x @ a - y) ** 2), ValueError,
     r"loss must return a scalar; got a tensor of shape \(10,\)\. Reduce it, e.g. with \.mean\(\)"),
    ("loss of shape (1,) (was silent)", dict(loss=lambda a, x, y: mse(a, x, y).reshape(1)),
     ValueError, r"loss must return a scalar; got a tensor of shape \(1,\)"),
    ("loss returns a float (was traceback)", dict(loss=lambda a, x, y: 1.0), TypeError,
     r"loss must return a scalar torch tensor.*got 1.0 of type float\. Write it"),
    ("loss returns NumPy (was traceback)",
     dict(loss=lambda a, x, y: np.float32(mse(a.detach(), x, y))), TypeError,
     r"loss must return a scalar torch tensor.*of type float32"),
    ("loss returns a tuple (was traceback)", dict(loss=lambda a, x, y: (mse(a, x, y), 0)),
     TypeError, r"loss must return a scalar torch tensor.*of type tuple"),
    ("loss a constant (was traceback)", dict(loss=lambda a, x, y: torch.tensor(1.0)), ValueError,
     r"loss does not depend on params: its value has no gradient"),
    ("loss complex (was traceback)", dict(loss=lambda a, x, y: mse(a, x, y) * (1 + 0j)),
     TypeError, r"loss must return a real float scalar; got dtype torch.complex64"),
    # optimizer, device
    ("optimizer not callable (was traceback)", dict(optimizer="sgd"), TypeError,
     r"optimizer must be None or a factory optimizer\(parameters, lr=lr\).*got 'sgd'"),
    ("optimizer already built (was traceback)",
     dict(optimizer=torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)), TypeError,
     r"optimizer must be None or a factory.*not an optimizer already built; got SGD"),
    ("optimizer factory returns junk (was traceback)", dict(optimizer=lambda ps, lr: object()),
     TypeError, r"optimizer\(parameters, lr=lr\) must build a torch optimizer.*it returned"),
    ("device unknown (was traceback)", dict(device="gpu0"), ValueError,
     r"device must be a torch device such as 'cpu'.*got 'gpu0'"),
]


@pytest.mark.parametrize("kwargs, error, match", [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_bad_input_gets_one_clear_error(kwargs, error, match):
    kwargs = dict(kwargs)
    if "indices" in kwargs:
        kwargs.setdefault("steps", None)
    with pytest.raises(error, match=match) as info:
        call(**kwargs)
    # Raised by reference's own checks, not by torch or NumPy deep inside.
    assert info.traceback[-1].frame.f_globals["__name__"] == "reference"


def snapshot(tree):
    """Copies of every array in a flat container, to compare after the call."""
    if isinstance(tree, (tuple, list)):
        return [snapshot(a) for a in tree]
    return tree.clone() if isinstance(tree, torch.Tensor) else np.array(tree, copy=True)


def assert_unchanged(tree, copy):
    if isinstance(tree, (tuple, list)):
        for a, b in zip(tree, copy):
            assert_unchanged(a, b)
    else:
        assert type(tree) is type(copy) and tree.dtype == copy.dtype
        np.testing.assert_array_equal(np.asarray(tree), np.asarray(copy), strict=True)


@pytest.mark.parametrize("torch_inputs", [False, True], ids=["numpy", "torch"])
def test_valid_indices_of_any_integer_kind_agree_and_nothing_is_mutated(torch_inputs):
    as_input = torch.tensor if torch_inputs else np.array
    params, data = as_input(START), (as_input(X), as_input(Y))
    schedules = [INDICES.astype(np.int64), INDICES.astype(np.int32),
                 torch.tensor(INDICES, dtype=torch.long)]
    inputs = [params, data, schedules]
    copies = snapshot(inputs)
    results = [reference.fit(mse, params, data, lr=0.1, indices=s) for s in schedules]
    results.append(reference.fit(mse, params, data, lr=0.1, steps=4,
                                 indices=schedules[0]))  # steps that agree
    assert_unchanged(inputs, copies)
    first_params, first_losses = results[0]
    assert first_params.shape == (2,) and first_losses.shape == (4,)
    for got_params, got_losses in results[1:]:  # the same bits, whatever the index dtype
        np.testing.assert_array_equal(got_params, first_params, strict=True)
        np.testing.assert_array_equal(got_losses, first_losses, strict=True)
    # And the batches really are the scheduled rows: step 0 saw rows 0, 1, 2.
    np.testing.assert_allclose(first_losses[0], mse(START, X[:3], Y[:3]), rtol=1e-6)


def test_namedtuple_params_come_back_as_that_namedtuple():
    params = collections.namedtuple("Params", "w b")(START[:1], np.float32(0.0))
    got, _ = call(params=params, loss=lambda p, x, y: mse(p.w, x[:, :1], y - p.b))
    assert type(got) is type(params) and got.w.shape == (1,) and got.b.shape == ()


def test_valid_scalars_of_numpy_and_torch_types_give_the_same_bits():
    expected = call(lr=0.1, steps=3)
    for changes in (dict(lr=np.float64(0.1)), dict(lr=torch.tensor(0.1, dtype=torch.float64)),
                    dict(steps=np.int64(3)),
                    dict(optimizer=functools.partial(torch.optim.SGD, momentum=0.0))):
        got = call(**{"lr": 0.1, "steps": 3, **changes})
        for a, b in zip(got, expected):
            np.testing.assert_array_equal(a, b, strict=True)


@pytest.mark.parametrize("code", [
    "import sys, reference",
    # Its doctests too: they run the referee on a loss written inline.
    "import doctest, sys, reference; assert doctest.testmod(reference).failed == 0",
], ids=["import", "doctest"])
def test_reference_does_not_import_functional_sgd(code):
    out = subprocess.run([sys.executable, "-c", code + "; print('functional_sgd' in sys.modules)"],
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "False"
