"""The lesson's 3-vs-7 classifier: losses, data, accuracy, and the CLI."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

import functional_sgd as fsgd
from functional_sgd.app._cli import DIGITS_FILES, main

SCORES = jnp.array([-3.0, -0.5, 0.0, 0.7, 4.0])
TARGETS = jnp.array([0.0, 1.0, 1.0, 0.0, 1.0])


def sigmoid(s):
    return 1 / (1 + np.exp(-np.asarray(s, np.float64)))


def test_linear_classifier_is_the_lessons_sum_per_image():
    x = jax.random.uniform(jax.random.key(0), (5, 64))
    w, b = jax.random.normal(jax.random.key(1), (64,)), jnp.array(0.3)
    lesson = np.array([(np.asarray(image) * np.asarray(w)).sum() + 0.3 for image in x])
    np.testing.assert_allclose(fsgd.linear_classifier((w, b), x), lesson, rtol=1e-5)


def test_mnist_loss_is_the_lessons_formula():
    p = sigmoid(SCORES)
    expected = np.where(np.asarray(TARGETS) == 1, 1 - p, p).mean()
    # float32 sigmoid against float64: a few ulps
    np.testing.assert_allclose(fsgd.mnist_loss(SCORES, TARGETS), expected, rtol=1e-6)


def test_cross_entropy_is_the_textbook_formula_and_stays_finite():
    p, t = sigmoid(SCORES), np.asarray(TARGETS)
    expected = (-t * np.log(p) - (1 - t) * np.log(1 - p)).mean()
    np.testing.assert_allclose(fsgd.binary_cross_entropy(SCORES, TARGETS), expected, rtol=1e-6)
    # a confident wrong score: sigmoid(100) is 1.0 in float32 and log(1 - p) would be -inf
    wrong = fsgd.binary_cross_entropy(jnp.array([100.0]), jnp.array([0.0]))
    np.testing.assert_allclose(wrong, 100.0, rtol=1e-6)


@pytest.mark.parametrize("function", [fsgd.mnist_loss, fsgd.binary_cross_entropy])
def test_losses_refuse_shapes_that_would_broadcast(function):
    with pytest.raises(ValueError, match=r"scores have shape \(5,\) but targets have shape"):
        function(SCORES, TARGETS[:, None])


def test_classifier_refuses_weights_that_do_not_fit():
    with pytest.raises(ValueError, match=r"need w of shape \(64,\).*got w of shape \(63,\)"):
        fsgd.linear_classifier((jnp.zeros(63), jnp.array(0.0)), jnp.zeros((2, 64)))


def test_digits_split_is_held_out_and_labelled():
    data = fsgd.digits_3_vs_7(jax.random.key(0), valid_fraction=0.25)
    assert data.train_x.shape == (272, 64) and data.valid_x.shape == (90, 64)  # 362 images
    assert 0 <= data.train_x.min() and data.train_x.max() <= 1
    # a partition of the 3s and 7s: every image in exactly one of the two sets
    from sklearn.datasets import load_digits

    digits = load_digits()
    keep = np.isin(digits.target, (3, 7))
    original = sorted(row.tobytes() for row in (digits.data[keep] / 16).astype(np.float32))
    split = sorted(row.tobytes() for row in np.concatenate([data.train_x, data.valid_x]))
    assert split == original
    assert set(np.unique(data.train_y)) == {0.0, 1.0}
    assert int(data.train_y.sum() + data.valid_y.sum()) == 183  # the 3s of the data set


@pytest.mark.parametrize("valid_fraction, message", [
    (0.999, r"valid_fraction=0\.999 holds out all 362 images and leaves none for training; "
            r"it must be at most 0\.9986\."),
    (1.0, r"valid_fraction must lie in \(0, 1\); got 1\.0"),
    (0.0, r"valid_fraction must lie in \(0, 1\); got 0\.0"),
])
def test_a_split_that_leaves_no_training_image_is_refused(valid_fraction, message):
    with pytest.raises(ValueError, match=message):
        fsgd.digits_3_vs_7(jax.random.key(0), valid_fraction=valid_fraction)


def test_the_largest_split_leaves_one_training_image():
    data = fsgd.digits_3_vs_7(jax.random.key(0), valid_fraction=0.9986)
    assert len(data.train_y) == 1 and len(data.valid_y) == 361


def test_digits_command_stops_when_accuracy_stops_improving(tmp_path, capsys):
    status = main(["digits", "--out", str(tmp_path)])
    text = capsys.readouterr().out
    assert status == 0
    accuracies = [float(a) for a in re.findall(r"epoch\s+\d+\s+train loss [\d.]+\s+valid "
                                               r"accuracy ([\d.]+)", text)]
    assert 12 < len(accuracies) < 30  # the stop rule ended the run (patience 12)
    best = int(np.argmax(accuracies))  # the first best
    assert accuracies[best] >= 0.97 and max(accuracies[best + 1:]) <= accuracies[best]
    assert len(accuracies) == best + 1 + 12
    assert (f"stopped after {len(accuracies)} epochs: the validation accuracy has not "
            "improved for 12 epochs.") in text
    assert f"kept the weights of epoch {best + 1}: valid accuracy {accuracies[best]:.3f}" in text
    for name in DIGITS_FILES:
        with Image.open(tmp_path / name) as image:
            assert image.format == "PNG" and image.size[0] > image.size[1]


def test_fit_classifier_keeps_the_best_epoch(tmp_path):
    data = fsgd.digits_3_vs_7(jax.random.key(0))
    (w, b), reports = fsgd.fit_classifier(data, key=jax.random.key(1), patience=4,
                                          keep_best=True, epochs=30)
    _, by_epoch = fsgd.fit_classifier(data, key=jax.random.key(1), patience=4, epochs=30,
                                      on_epoch=lambda report: None)
    assert reports == by_epoch  # measured in the loop or epoch by epoch: the same
    accuracy = fsgd.lesson._classify.accuracy((w, b), data.valid_x, data.valid_y)
    assert float(accuracy) == max(r.valid_accuracy for r in reports)


def test_cross_entropy_also_reaches_97_percent():
    data = fsgd.digits_3_vs_7(jax.random.key(1))
    _, reports = fsgd.fit_classifier(data, key=jax.random.key(2), loss="cross-entropy",
                                     epochs=10)
    assert [r.epoch for r in reports] == list(range(1, 11))
    assert reports[-1].valid_accuracy >= 0.97


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    """A tiny MNIST_SAMPLE-style folder of real 8x8 digits saved as PNG."""
    from sklearn.datasets import load_digits

    root = tmp_path_factory.mktemp("mnist_sample")
    digits = load_digits()
    for digit, label in (("3", 3), ("7", 7)):
        images = digits.images[digits.target == label]
        for part, chosen in (("train", images[:24]), ("valid", images[24:30])):
            folder = root / part / digit
            folder.mkdir(parents=True)
            for i, image in enumerate(chosen):
                pixels = np.round(image * 255 / 16).astype(np.uint8)
                Image.fromarray(pixels, mode="L").save(folder / f"{i}.png")
    return root


def test_image_folder_is_read_as_the_lesson_lays_it_out(image_folder):
    data = fsgd.load_image_folder(image_folder)
    assert data.train_x.shape == (48, 64) and data.valid_x.shape == (12, 64)
    assert data.image_shape == (8, 8)
    np.testing.assert_array_equal(data.train_y, [1.0] * 24 + [0.0] * 24)
    from sklearn.datasets import load_digits

    digits = load_digits()
    first_three = digits.images[digits.target == 3][0].reshape(-1) / 16
    np.testing.assert_allclose(data.train_x[0], first_three, atol=0.5 / 255 + 1e-7)


def test_digits_command_trains_on_an_image_folder(image_folder, tmp_path, capsys):
    status = main(["digits", "--data", str(image_folder), "--batch-size", "8", "--epochs", "5",
                   "--out", str(tmp_path)])
    text = capsys.readouterr().out
    assert status == 0
    assert "48 training images, 12 held out, 8x8 pixels" in text
    assert len(re.findall(r"epoch\s+\d+\s+train loss", text)) == 5
    assert (tmp_path / DIGITS_FILES[0]).exists()


def _folder_of(root, save):
    """An MNIST_SAMPLE-style folder whose every part holds one image, written by ``save``."""
    for part in ("train", "valid"):
        for digit in ("3", "7"):
            (root / part / digit).mkdir(parents=True)
            save(root / part / digit / "a.png")
    return root


def _png(array, **kwargs):
    return lambda path: Image.fromarray(array, **kwargs).save(path, format="PNG")


PIXEL_DEPTHS = [
    # 8-bit images are divided by 255, 16-bit ones by 65535 (not clipped at 255)
    ("8-bit gray", _png(np.array([[0, 117, 255]], np.uint8)), [0, 117 / 255, 1]),
    ("16-bit gray", _png(np.array([[0, 30000, 65535]], np.uint16)), [0, 30000 / 65535, 1]),
    ("16-bit gray, low values", _png(np.array([[1, 200, 255]], np.uint16)),
     [1 / 65535, 200 / 65535, 255 / 65535]),
    ("8-bit colour", _png(np.full((1, 3, 3), 117, np.uint8)), [117 / 255] * 3),
]


@pytest.mark.parametrize("save, expected", [(s, e) for _, s, e in PIXEL_DEPTHS],
                         ids=[name for name, _, _ in PIXEL_DEPTHS])
def test_pixels_are_read_at_their_own_depth(save, expected, tmp_path):
    data = fsgd.load_image_folder(_folder_of(tmp_path, save))
    assert data.image_shape == (1, 3)
    for pixels in (data.train_x, data.valid_x):
        np.testing.assert_allclose(pixels, [expected] * 2, rtol=1e-6, atol=1e-7)


def test_a_32_bit_image_is_refused_not_clipped(tmp_path, capsys):
    tiff = lambda path: Image.fromarray(np.array([[0, 70000]], np.int32)).save(path, "TIFF")
    _folder_of(tmp_path, tiff)
    with pytest.raises(ValueError, match=r"train/3/a\.png' has 'I' pixels \(32-bit or signed\)"
                                         r"; expected an 8-bit .* or 16-bit grayscale image"):
        fsgd.load_image_folder(tmp_path)
    assert main(["digits", "--data", str(tmp_path), "--no-figures"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "has 'I' pixels" in err


@pytest.mark.parametrize("limit", [40, 20], ids=["warned by Pillow", "refused by Pillow"])
def test_an_image_past_pillows_bomb_limit_is_one_line_naming_it(limit, tmp_path, monkeypatch,
                                                                capsys):
    """Pillow warns past MAX_IMAGE_PIXELS and refuses past twice that; both are refused,
    so a 15000 x 15000 PNG (225 M pixels) is too. An 8x8 image (64 pixels) stands in."""
    from PIL import Image as PILImage

    _folder_of(tmp_path, _png(np.zeros((8, 8), np.uint8)))
    monkeypatch.setattr(PILImage, "MAX_IMAGE_PIXELS", limit)
    message = (r"train/3/a\.png' is too large to read safely: Image size \(64 pixels\) exceeds "
               rf"limit of {limit if limit == 40 else 2 * limit} pixels.*raise "
               r"PIL\.Image\.MAX_IMAGE_PIXELS")
    with pytest.raises(ValueError, match=message):
        fsgd.load_image_folder(tmp_path)
    assert main(["digits", "--data", str(tmp_path), "--no-figures"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1
    assert re.search(message, captured.err) and "Traceback" not in captured.err


def _broken(root, how):
    for part in ("train", "valid"):
        for digit in ("3", "7"):
            (root / part / digit).mkdir(parents=True)
            Image.new("L", (8, 8)).save(root / part / digit / "a.png")
    if how == "missing":
        (root / "valid" / "7" / "a.png").unlink()
        (root / "valid" / "7").rmdir()
    elif how == "empty":
        (root / "train" / "3" / "a.png").unlink()
    elif how == "not an image":
        (root / "train" / "7" / "a.png").write_text("hello")
    elif how == "sizes":
        Image.new("L", (28, 28)).save(root / "valid" / "3" / "b.png")


@pytest.mark.parametrize("how, message", [
    ("missing", "has no valid/7 sub-folder"),
    ("empty", r"train/3' holds no \.png images"),
    ("not an image", "is not a readable image"),
    ("sizes", r"differ in size: \[\(8, 8\), \(28, 28\)\]"),
])
def test_malformed_folders_get_a_one_line_error(how, message, tmp_path, capsys):
    _broken(tmp_path, how)
    with pytest.raises(ValueError, match=message):
        fsgd.load_image_folder(tmp_path)
    assert main(["digits", "--data", str(tmp_path), "--no-figures"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and re.search(message, err) and "Traceback" not in err
