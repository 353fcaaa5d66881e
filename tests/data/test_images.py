"""Image features: decoding (incl. alpha and corrupt bytes), crops, normalisation, MAE / BEiT patch masks."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from modaloom.data.images import (
    IMAGE_NORMS,
    ImageTransform,
    blockwise_patch_mask,
    center_crop,
    decode_image,
    random_patch_mask,
    random_resized_crop,
    reencode_if_larger,
    resize_shorter_side,
    to_chw_float,
)
from modaloom.errors import ConfigError, DataError


def encoded(array: np.ndarray, fmt: str = "PNG", mode: str | None = None) -> bytes:
    out = io.BytesIO()
    Image.fromarray(array, mode=mode).save(out, format=fmt)
    return out.getvalue()


def gradient(height: int, width: int) -> np.ndarray:
    """An RGB image whose red channel encodes the column and green the row, to check geometry."""
    rows, cols = np.mgrid[0:height, 0:width]
    return np.stack([cols * 255 // max(width - 1, 1), rows * 255 // max(height - 1, 1),
                     np.full_like(rows, 128)], axis=-1).astype(np.uint8)


def test_decode_gray_and_transparent_images_to_rgb() -> None:
    gray = decode_image(encoded(np.full((4, 5), 77, np.uint8)))
    assert gray.mode == "RGB" and gray.size == (5, 4) and gray.getpixel((0, 0)) == (77, 77, 77)
    rgba = np.zeros((3, 3, 4), np.uint8)  # fully transparent black -> white background
    assert decode_image(encoded(rgba)).getpixel((1, 1)) == (255, 255, 255)


def test_corrupt_bytes_raise_data_error_naming_where() -> None:
    with pytest.raises(DataError, match="cats.tsv:4: cannot decode image"):
        decode_image(b"not an image at all", where="cats.tsv:4")
    truncated = encoded(gradient(64, 64), "JPEG")[:200]
    with pytest.raises(DataError):
        decode_image(truncated)


def test_resize_and_center_crop_geometry() -> None:
    image = Image.fromarray(gradient(100, 200))
    resized = resize_shorter_side(image, 50)
    assert resized.size == (100, 50)
    crop = center_crop(resized, 50, 50)
    assert crop.size == (50, 50)
    red = np.asarray(crop)[:, :, 0].astype(int)
    assert abs(red[:, 25].mean() - 127) < 10  # the middle column of the source stays in the middle


def test_random_resized_crop_is_seeded_and_sized() -> None:
    image = Image.fromarray(gradient(60, 80))
    a = random_resized_crop(image, 32, 32, np.random.default_rng(1))
    b = random_resized_crop(image, 32, 32, np.random.default_rng(1))
    c = random_resized_crop(image, 32, 32, np.random.default_rng(2))
    assert a.size == (32, 32)
    assert np.array_equal(np.asarray(a), np.asarray(b))
    assert not np.array_equal(np.asarray(a), np.asarray(c))


def test_normalisation_matches_the_formula() -> None:
    image = Image.fromarray(np.full((2, 2, 3), 255, np.uint8))
    out = to_chw_float(image, "imagenet")
    mean, std = IMAGE_NORMS["imagenet"]
    assert out.shape == (3, 2, 2) and out.dtype == np.float32
    np.testing.assert_allclose(out[:, 0, 0], (1 - np.array(mean)) / np.array(std), rtol=1e-6)
    with pytest.raises(ConfigError, match="valid choices"):
        to_chw_float(image, "imagenett")


@pytest.mark.parametrize("crop", ["center", "random_resized", "resize"])
def test_transform_gives_chw_float32(crop: str) -> None:
    transform = ImageTransform(24, 32, crop=crop, norm="half", hflip=True)
    out = transform(encoded(gradient(50, 70), "JPEG"), np.random.default_rng(0))
    assert out.shape == (3, 24, 32) and out.dtype == np.float32
    assert out.min() >= -1.001 and out.max() <= 1.001


def test_mae_random_mask_has_exact_ratio_and_varies() -> None:
    rng = np.random.default_rng(0)
    masks = [random_patch_mask(196, 0.75, rng) for _ in range(5)]
    assert all(m.sum() == 147 and m.dtype == bool for m in masks)
    assert len({m.tobytes() for m in masks}) == 5


def test_beit_blockwise_mask_is_near_ratio_and_blocky() -> None:
    rng = np.random.default_rng(0)
    ratios, neighbours = [], []
    for _ in range(20):
        mask = blockwise_patch_mask(14, 14, 0.4, rng)
        assert mask.shape == (196,) and mask.sum() <= round(0.4 * 196)
        ratios.append(mask.mean())
        grid = mask.reshape(14, 14)
        # share of masked patches whose right neighbour is masked too: high for blocks, ~0.4 for random
        pairs = grid[:, :-1] & grid[:, 1:]
        neighbours.append(pairs.sum() / max(grid[:, :-1].sum(), 1))
    assert 0.35 < np.mean(ratios) <= 0.4
    assert np.mean(neighbours) > 0.7


def test_reencode_shrinks_only_large_images() -> None:
    small = encoded(gradient(20, 30))
    assert reencode_if_larger(small, 64) == small
    large = reencode_if_larger(encoded(gradient(100, 300)), 64)
    assert decode_image(large).size == (64, 21)
