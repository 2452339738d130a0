"""Batch augmentation on uint8 NHWC image tensors, driven by an explicit generator."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageOps


def random_crop_flip(
    images: torch.Tensor, padding: int, flip: bool, generator: torch.Generator
) -> torch.Tensor:
    """Random crop after zero padding, then random horizontal flip, per image (NHWC uint8)."""
    n, h, w, _ = images.shape
    out = images
    if padding > 0:
        padded = torch.nn.functional.pad(images, (0, 0, padding, padding, padding, padding))
        oy = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
        ox = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
        iy = oy[:, None] + torch.arange(h)
        ix = ox[:, None] + torch.arange(w)
        out = padded[torch.arange(n)[:, None, None], iy[:, :, None], ix[:, None, :]]
    if flip:
        mask = torch.rand(n, generator=generator) < 0.5
        out = torch.where(mask[:, None, None, None], out.flip(2), out)
    return out


class RandAugment:
    """timm's RandAugment on each image of a uint8 NHWC batch (PIL per image)."""

    def __init__(self, config: str, image_size: int, mean: tuple[float, float, float]) -> None:
        from timm.data.auto_augment import rand_augment_transform

        fill = tuple(round(255 * m) for m in mean)
        self.transform = rand_augment_transform(
            config, {"translate_const": int(image_size * 0.45), "img_mean": fill}
        )
        for op in self.transform.ops:
            if op.name.startswith("Posterize"):
                op.aug_fn = _posterize

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        arr = images.numpy()
        out = [np.asarray(self.transform(Image.fromarray(a))) for a in arr]
        return torch.from_numpy(np.stack(out))


def _posterize(img: Image.Image, bits_to_keep: int, **_) -> Image.Image:
    """timm's posterize, where keeping 0 bits gives a black image as Pillow used to.

    timm's ``PosterizeIncreasing`` asks for 0 bits at magnitude 10, which ``rand-m9-mstd0.5``
    reaches; Pillow 13 raises ValueError for it.
    """
    if bits_to_keep >= 8:
        return img
    if bits_to_keep <= 0:
        return Image.new(img.mode, img.size)
    return ImageOps.posterize(img, bits_to_keep)


def normalize(images: torch.Tensor, mean, std) -> torch.Tensor:
    """uint8 NHWC -> float32 NCHW, scaled to [0, 1] and normalised."""
    x = images.permute(0, 3, 1, 2).float().div_(255)
    m = torch.tensor(mean).view(1, 3, 1, 1)
    s = torch.tensor(std).view(1, 3, 1, 1)
    return (x - m) / s
