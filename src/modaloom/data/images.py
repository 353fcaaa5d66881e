"""Image features with Pillow and numpy: decode, resize / crop, normalise to CHW float32, patch masks.

torchvision does not import beside this torch build, so the few transforms pre-training needs live here.
Random choices always come from a caller-supplied ``numpy.random.Generator`` so that loading is
deterministic for a seed and independent of the number of DataLoader workers.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, UnidentifiedImageError

from modaloom.errors import ConfigError, DataError, choices_text

# Per-channel (mean, std) on the 0..1 scale.
IMAGE_NORMS: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "clip": ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)),
    "half": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    "none": ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),
}
CROP_MODES = ("center", "random_resized", "resize")


def decode_image(data: bytes | np.ndarray, where: str = "") -> Image.Image:
    """Decode encoded image bytes (PNG, JPEG, ...) into an RGB Pillow image; bad bytes raise DataError."""
    raw = data.tobytes() if isinstance(data, np.ndarray) else bytes(data)
    try:
        image = Image.open(io.BytesIO(raw))
        image.load()
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
        prefix = f"{where}: " if where else ""
        raise DataError(f"{prefix}cannot decode image ({len(raw)} bytes): {exc}") from exc
    if image.mode != "RGB":
        # Transparent images are composited on white so that the alpha channel does not turn black.
        has_alpha = image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info
        if has_alpha:
            image = image.convert("RGBA")
            background = Image.new("RGBA", image.size, (255, 255, 255, 255))
            image = Image.alpha_composite(background, image)
        image = image.convert("RGB")
    return image


def resize_shorter_side(image: Image.Image, size: int) -> Image.Image:
    """Resize keeping the aspect ratio so that the shorter side equals ``size`` (bicubic)."""
    width, height = image.size
    scale = size / min(width, height)
    new_size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return image if new_size == image.size else image.resize(new_size, Image.Resampling.BICUBIC)


def center_crop(image: Image.Image, height: int, width: int) -> Image.Image:
    """Cut the central ``height`` x ``width`` window (the image must be at least that large)."""
    img_width, img_height = image.size
    left = max(0, (img_width - width) // 2)
    top = max(0, (img_height - height) // 2)
    return image.crop((left, top, left + width, top + height))


def random_resized_crop(
    image: Image.Image,
    height: int,
    width: int,
    rng: np.random.Generator,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> Image.Image:
    """Crop a random area fraction in ``scale`` with aspect ratio in ``ratio`` (log-uniform), resize it.

    Ten tries; when none fits, falls back to the central crop with the ratio clamped into ``ratio``.
    """
    img_width, img_height = image.size
    area = img_width * img_height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(log_ratio[0], log_ratio[1]))
        crop_w = round(math.sqrt(target_area * aspect))
        crop_h = round(math.sqrt(target_area / aspect))
        if 0 < crop_w <= img_width and 0 < crop_h <= img_height:
            top = int(rng.integers(0, img_height - crop_h + 1))
            left = int(rng.integers(0, img_width - crop_w + 1))
            box = (left, top, left + crop_w, top + crop_h)
            return image.resize((width, height), Image.Resampling.BICUBIC, box=box)
    in_ratio = img_width / img_height
    if in_ratio < ratio[0]:
        crop_w, crop_h = img_width, round(img_width / ratio[0])
    elif in_ratio > ratio[1]:
        crop_w, crop_h = round(img_height * ratio[1]), img_height
    else:
        crop_w, crop_h = img_width, img_height
    left, top = (img_width - crop_w) // 2, (img_height - crop_h) // 2
    box = (left, top, left + crop_w, top + crop_h)
    return image.resize((width, height), Image.Resampling.BICUBIC, box=box)


def to_chw_float(image: Image.Image, norm: str = "imagenet") -> np.ndarray:
    """RGB image -> (3, H, W) float32, scaled to 0..1 then normalised with ``IMAGE_NORMS[norm]``."""
    mean, std = _norm(norm)
    array = np.asarray(image, dtype=np.float32) / 255.0
    array = (array - np.asarray(mean, dtype=np.float32)) / np.asarray(std, dtype=np.float32)
    return np.ascontiguousarray(array.transpose(2, 0, 1))


def _norm(norm: str) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    if norm not in IMAGE_NORMS:
        raise ConfigError(f"unknown image normalisation {norm!r}; valid choices: {choices_text(IMAGE_NORMS)}")
    return IMAGE_NORMS[norm]


@dataclass
class ImageTransform:
    """Decode + crop + normalise an encoded image to a (3, height, width) float32 array.

    ``crop``: "center" resizes the shorter side to ``resize_to`` (default: the target size) then cuts the
    centre; "random_resized" draws a random area/ratio crop (training augmentation); "resize" squashes the
    image to the target size. ``hflip`` flips left-right with probability 0.5 (training only).
    """

    height: int = 224
    width: int = 224
    crop: str = "center"
    norm: str = "imagenet"
    resize_to: int = 0
    scale_min: float = 0.08
    hflip: bool = False

    def __post_init__(self) -> None:
        if self.crop not in CROP_MODES:
            raise ConfigError(f"unknown image crop {self.crop!r}; valid choices: {choices_text(CROP_MODES)}")
        if self.height <= 0 or self.width <= 0:
            raise ConfigError(f"image size must be positive, got {self.height}x{self.width}")
        _norm(self.norm)

    def __call__(self, data: bytes | np.ndarray, rng: np.random.Generator, where: str = "") -> np.ndarray:
        image = decode_image(data, where)
        if self.crop == "random_resized":
            image = random_resized_crop(image, self.height, self.width, rng, scale=(self.scale_min, 1.0))
        elif self.crop == "center":
            image = resize_shorter_side(image, self.resize_to or max(self.height, self.width))
            image = center_crop(image, self.height, self.width)
        else:
            image = image.resize((self.width, self.height), Image.Resampling.BICUBIC)
        if self.hflip and rng.random() < 0.5:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return to_chw_float(image, self.norm)


def random_patch_mask(num_patches: int, ratio: float, rng: np.random.Generator) -> np.ndarray:
    """MAE masking: exactly ``round(ratio * num_patches)`` patches chosen uniformly; True = masked."""
    if not 0.0 <= ratio < 1.0:
        raise ConfigError(f"mask ratio must be in [0, 1), got {ratio}")
    mask = np.zeros(num_patches, dtype=bool)
    mask[rng.permutation(num_patches)[: round(ratio * num_patches)]] = True
    return mask


def blockwise_patch_mask(
    grid_height: int,
    grid_width: int,
    ratio: float,
    rng: np.random.Generator,
    min_block: int = 16,
    aspect: tuple[float, float] = (0.3, 1 / 0.3),
    max_tries: int = 10,
) -> np.ndarray:
    """BEiT masking: add random rectangles (area >= ``min_block`` patches, log-uniform aspect) until
    about ``ratio`` of the grid is masked. Returns a flat (grid_height * grid_width,) bool array.

    A block is accepted only when it adds new patches without overshooting the target, so the result
    never exceeds ``round(ratio * N)`` and usually reaches it within a few patches.
    """
    if not 0.0 <= ratio < 1.0:
        raise ConfigError(f"mask ratio must be in [0, 1), got {ratio}")
    mask = np.zeros((grid_height, grid_width), dtype=bool)
    target = round(ratio * grid_height * grid_width)
    log_aspect = (math.log(aspect[0]), math.log(aspect[1]))
    masked = 0
    while masked < target:
        added = 0
        remaining = target - masked
        for _ in range(max_tries):
            area = rng.uniform(min(min_block, remaining), remaining)
            block_aspect = math.exp(rng.uniform(*log_aspect))
            block_h = round(math.sqrt(area * block_aspect))
            block_w = round(math.sqrt(area / block_aspect))
            if not (0 < block_h <= grid_height and 0 < block_w <= grid_width):
                continue
            top = int(rng.integers(0, grid_height - block_h + 1))
            left = int(rng.integers(0, grid_width - block_w + 1))
            window = mask[top : top + block_h, left : left + block_w]
            new = block_h * block_w - int(window.sum())
            if 0 < new <= remaining:
                window[...] = True
                added = new
                break
        if added == 0:
            break
        masked += added
    return mask.reshape(-1)


def image_size_of(data: bytes, where: str = "") -> tuple[int, int]:
    """(width, height) of encoded image bytes, checking that the whole image decodes (preprocess-time)."""
    return decode_image(data, where).size


def reencode_if_larger(data: bytes, max_side: int, where: str = "") -> bytes:
    """Shrink an image whose longer side exceeds ``max_side`` and re-encode it (PNG keeps alpha-free RGB
    lossless; other formats go to JPEG quality 95). Smaller images keep their original bytes."""
    image = decode_image(data, where)
    if max_side <= 0 or max(image.size) <= max_side:
        return data
    source_format = Image.open(io.BytesIO(data)).format
    scale = max_side / max(image.size)
    size = (max(1, round(image.size[0] * scale)), max(1, round(image.size[1] * scale)))
    image = image.resize(size, Image.Resampling.BICUBIC)
    out = io.BytesIO()
    if source_format == "PNG":
        image.save(out, format="PNG")
    else:
        image.save(out, format="JPEG", quality=95)
    return out.getvalue()
