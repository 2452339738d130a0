"""Deterministic evaluation batches and seeded calibration batches.

Images come out as normalised float32 NCHW tensors: ``(pixel / 255 - mean) / std`` per channel,
with the mean and std of the model (:attr:`eaq.models.ModelInfo.mean` / ``std``).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from eaq.data.datasets import ImageSet
from eaq.errors import EaqError

Batch = tuple[Tensor, Tensor]
CIFAR_SIZE = 32
IMAGENET_CROP_PCT = 0.875  # resize to size / 0.875, then centre-crop (the usual eval transform)


def to_tensor_batch(
    images: np.ndarray,
    *,
    mean: Sequence[float],
    std: Sequence[float],
    input_size: int,
) -> Tensor:
    """uint8 N x H x W x 3 -> normalised float32 N x 3 x S x S.

    Resizing (when ``input_size`` differs from H) is bilinear without antialiasing.

    Examples:
        >>> x = np.full((1, 32, 32, 3), 255, dtype=np.uint8)
        >>> to_tensor_batch(x, mean=(0.5,) * 3, std=(0.5,) * 3, input_size=32).unique()
        tensor([1.])
    """
    x = torch.from_numpy(np.array(images, dtype=np.uint8, copy=True))
    x = x.permute(0, 3, 1, 2).float().div_(255.0)
    if x.shape[-1] != input_size or x.shape[-2] != input_size:
        x = F.interpolate(
            x, size=(input_size, input_size), mode="bilinear", align_corners=False, antialias=False
        )
    m = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    return ((x - m) / s).contiguous()


def _folder_transform(mean: Sequence[float], std: Sequence[float], input_size: int):
    from torchvision import transforms

    return transforms.Compose(
        [
            transforms.Resize(int(round(input_size / IMAGENET_CROP_PCT))),
            transforms.CenterCrop(input_size),
            transforms.ToTensor(),
            transforms.Normalize(mean, std),
        ]
    )


def _folder_batches(
    ds: ImageSet, indices: Sequence[int], *, mean, std, input_size: int, batch_size: int
) -> Iterator[Batch]:
    from torch.utils.data import DataLoader, Subset

    folder = ds.folder
    transform = _folder_transform(mean, std, input_size)

    class _Transformed(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return len(folder)

        def __getitem__(self, i: int):
            image, label = folder[i]
            return transform(image), label

    loader = DataLoader(
        Subset(_Transformed(), list(indices)), batch_size=batch_size, shuffle=False, num_workers=0
    )
    for x, y in loader:
        yield x, y.long()


class EvalBatches:
    """Batches of the first ``n_images`` images of a split, in file order.

    Iterating yields ``(images, labels)``; ``len()`` is the number of batches and
    ``n_images`` the number of images (for progress bars). It can be iterated more than once.
    """

    def __init__(
        self,
        ds: ImageSet,
        *,
        mean: Sequence[float],
        std: Sequence[float],
        input_size: int,
        batch_size: int,
        n_images: int,
    ) -> None:
        self.ds = ds
        self.mean = tuple(mean)
        self.std = tuple(std)
        self.input_size = input_size
        self.batch_size = batch_size
        self.n_images = n_images

    def __len__(self) -> int:
        return -(-self.n_images // self.batch_size)

    def __iter__(self) -> Iterator[Batch]:
        norm = dict(mean=self.mean, std=self.std, input_size=self.input_size)
        if not self.ds.in_memory:
            yield from _folder_batches(
                self.ds, range(self.n_images), batch_size=self.batch_size, **norm
            )
            return
        for start in range(0, self.n_images, self.batch_size):
            stop = min(start + self.batch_size, self.n_images)
            x = to_tensor_batch(self.ds.images[start:stop], **norm)
            y = torch.from_numpy(self.ds.labels[start:stop].copy())
            yield x, y


def _check_norm(mean, std, input_size: int, batch_size: int) -> None:
    if len(mean) != 3 or len(std) != 3:
        raise EaqError(f"mean and std need 3 values (RGB), got {tuple(mean)} and {tuple(std)}")
    if any(s <= 0 for s in std):
        raise EaqError(f"std must be positive, got {tuple(std)}")
    if input_size < 1:
        raise EaqError(f"input size must be >= 1, got {input_size}")
    if batch_size < 1:
        raise EaqError(f"--batch-size must be >= 1, got {batch_size}")


def eval_batches(
    ds: ImageSet,
    *,
    mean: Sequence[float],
    std: Sequence[float],
    input_size: int,
    batch_size: int = 256,
    limit: int | None = None,
) -> EvalBatches:
    """Evaluation batches over the first ``limit`` images of ``ds``, in the file's order.

    Args:
        ds: a split from :func:`eaq.data.load_dataset`.
        mean: per-channel mean the model expects.
        std: per-channel std the model expects.
        input_size: square size the model expects; CIFAR images are resized (bilinear, no
            antialiasing) when it is not 32, ImageNet images resized and centre-cropped.
        batch_size: images per batch (the last one may be smaller).
        limit: use only the first ``limit`` images; all of them when None.

    Returns:
        An iterable of ``(float32 N x 3 x S x S, int64 N)`` with ``len()`` and ``n_images``.

    Raises:
        EaqError: ``limit`` < 1 or a bad batch size, size or normalisation.
    """
    _check_norm(mean, std, input_size, batch_size)
    if limit is not None and limit < 1:
        raise EaqError(f"--limit must be >= 1, got {limit}")
    n = len(ds) if limit is None else min(int(limit), len(ds))
    return EvalBatches(
        ds, mean=mean, std=std, input_size=input_size, batch_size=batch_size, n_images=n
    )


def calibration_indices(n_total: int, n: int, seed: int, offset: int = 0) -> list[int]:
    """``n`` distinct indices out of ``range(n_total)``, drawn by a generator seeded by ``seed``.

    The draw is positions ``offset .. offset + n`` of one seeded permutation, so draws of the
    same seed at offsets 0 (calibration) and ``n_calib`` (a held-out set) never share an image.

    Examples:
        >>> calibration_indices(10, 3, seed=0) == calibration_indices(10, 3, seed=0)
        True
        >>> set(calibration_indices(10, 3, 0)) & set(calibration_indices(10, 3, 0, offset=3))
        set()
    """
    g = torch.Generator().manual_seed(int(seed))
    return torch.randperm(n_total, generator=g)[offset : offset + n].tolist()


def calibration_batches(
    ds_train: ImageSet,
    *,
    n: int = 256,
    seed: int = 0,
    mean: Sequence[float],
    std: Sequence[float],
    input_size: int,
    batch_size: int = 64,
    offset: int = 0,
) -> list[Batch]:
    """``n`` training images drawn without replacement, seeded, as normalised batches.

    Args:
        ds_train: the training split (calibrating on the test split would leak it).
        n: number of images (``--calib-size``).
        seed: seeds a ``torch.Generator``; the same seed draws the same images.
        mean: per-channel mean the model expects.
        std: per-channel std the model expects.
        input_size: square size the model expects.
        batch_size: images per batch.
        offset: skip the first ``offset`` images of the seeded draw (``offset=n_calib`` gives
            a set disjoint from the calibration images, e.g. to score plans).

    Returns:
        A list of ``(images, labels)`` batches holding ``n`` images in all.

    Raises:
        EaqError: ``n`` < 1, ``n`` larger than the split, or a split other than ``train``.
    """
    _check_norm(mean, std, input_size, batch_size)
    if ds_train.split != "train":
        raise EaqError(
            f"calibration draws from the training split, got the {ds_train.split} split of "
            f"{ds_train.name}"
        )
    if n < 1:
        raise EaqError(f"the calibration set is empty: --calib-size must be >= 1, got {n}")
    if n + offset > len(ds_train):
        raise EaqError(
            f"--calib-size {n}{f' (after {offset} images held out)' if offset else ''} is "
            f"larger than the {len(ds_train)} images of the {ds_train.name} training split "
            f"({ds_train.source}); pass --calib-size <= {len(ds_train) - offset}"
        )
    idx = calibration_indices(len(ds_train), n, seed, offset)
    norm = dict(mean=mean, std=std, input_size=input_size)
    if not ds_train.in_memory:
        return list(_folder_batches(ds_train, idx, batch_size=batch_size, **norm))
    batches = []
    for start in range(0, n, batch_size):
        chunk = np.asarray(idx[start : start + batch_size])
        x = to_tensor_batch(ds_train.images[chunk], **norm)
        y = torch.from_numpy(ds_train.labels[chunk].copy())
        batches.append((x, y))
    return batches
