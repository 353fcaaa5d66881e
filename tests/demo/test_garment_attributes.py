"""Instance attributes measured from Fashion-MNIST pixels: tone and size words on synthetic images, thresholds
per class from the training split, and adjectives placed in a caption name."""

from __future__ import annotations

import numpy as np
import pytest

from modaloom.demo import garment_attributes as ga


def garment(value: int, side: int) -> np.ndarray:
    """A 28 x 28 image: a centred square of ``side`` pixels at stored value ``value`` on a 0 background."""
    image = np.zeros((28, 28), dtype=np.uint8)
    start = (28 - side) // 2
    image[start:start + side, start:start + side] = value
    return image


def test_measure_reads_the_garments_mean_value_and_coverage():
    images = np.stack([garment(100, 10), garment(200, 20), np.zeros((28, 28), dtype=np.uint8)])
    images[0, 0, 0] = ga.INK - 1  # faint background noise is not garment
    measures = ga.measure(images)
    assert measures[0].tolist() == pytest.approx([100.0, 100 / 784])
    assert measures[1].tolist() == pytest.approx([200.0, 400 / 784])
    assert measures[2].tolist() == [0.0, 0.0]  # an empty frame: no garment
    with pytest.raises(ValueError, match="N, H, W"):
        ga.measure(np.zeros((28, 28)))


def test_darker_larger_images_get_dark_and_wide_within_their_class():
    # class 0: values 60/120/180/240 at growing sizes; class 1: all at value 250 (dark for class 0), small
    train = np.stack([garment(v, s) for v, s in ((60, 6), (120, 10), (180, 16), (240, 22))]
                     + [garment(250, s) for s in (4, 6, 8)])
    labels = [0, 0, 0, 0, 1, 1, 1]
    cuts = ga.thresholds(ga.measure(train), labels)
    assert set(cuts) == {"all", "0", "1"}
    test = np.stack([garment(50, 6), garment(250, 24), garment(150, 12), garment(250, 4), garment(250, 24)])
    words = ga.words(ga.measure(test), [0, 0, 0, 1, 5], cuts)  # class 5: not in training, the overall cuts
    assert words[0] == ("light", "slim") and words[1] == ("dark", "wide") and words[2] == ("medium", "slim")
    assert words[3] == ("dark", "slim") and words[4] == ("dark", "wide")
    # one image reads by its own class's thresholds: dark among class 0's garments, light among class 1's
    same = ga.measure(np.stack([garment(180, 16), garment(180, 16)]))
    assert ga.words(same, [0, 1], cuts) == [("dark", "wide"), ("light", "wide")]
    with pytest.raises(ValueError, match="at least one"):
        ga.thresholds(np.zeros((0, 2)), [])


def test_adjectives_go_before_the_noun_and_fix_the_article():
    assert ga.describe("a sneaker", ["dark", "wide"]) == "a dark, wide sneaker"
    assert ga.describe("an open shoe", ["light", "slim"]) == "a light, slim open shoe"
    assert ga.describe("a bag", ["old"]) == "an old bag"
    assert ga.describe("someone's running shoe", ["medium"]) == "someone's medium running shoe"
    assert ga.describe("some pants", []) == "some pants"
    with pytest.raises(ValueError, match="article and a noun"):
        ga.describe("boots", ["dark"])
