"""CIFAR-10/100 and ImageNet test and training splits.

CIFAR splits are held in memory as uint8 NHWC arrays. They are read, in this order, from

1. eaq's ``.npz`` files: ``ROOT/cifar10/test.npz``, ``ROOT/cifar10/train.npz`` or, for the
   training split, ``ROOT/cifar10/train_5k.npz`` (a 5,000-image subset for calibration);
   each holds ``x`` (N x 32 x 32 x 3 uint8), ``y`` (int64) and ``class_names``;
2. torchvision's format (``ROOT/cifar-10-batches-py``, ``ROOT/cifar-100-python``);
3. with ``download=True``, torchvision's download into ``ROOT``.

ImageNet is a torchvision ``ImageFolder`` at ``ROOT/imagenet/{train,val}``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from eaq.errors import EaqError, choices_hint


def _data_hint(name: str, split: str, *, offer_download: bool = True) -> str:
    """What to do about a missing or broken data set, naming the file that would be read."""
    hint = f"set --data-root or EAQ_DATA_ROOT to a folder holding {name}/{split}.npz"
    return hint + (", or pass --download when online" if offer_download else "")


@dataclass(frozen=True)
class _Spec:
    torchvision_class: str
    torchvision_folder: str
    npz_files: dict[str, tuple[str, ...]] = field(default_factory=dict)


_CIFAR = {
    name: _Spec(
        torchvision_class=name.upper(),
        torchvision_folder=folder,
        npz_files={"test": ("test.npz",), "train": ("train.npz", "train_5k.npz")},
    )
    for name, folder in (("cifar10", "cifar-10-batches-py"), ("cifar100", "cifar-100-python"))
}
DATASETS: tuple[str, ...] = ("cifar10", "cifar100", "imagenet")
_SPLIT_ALIASES = {"val": "test", "validation": "test", "test": "test", "train": "train"}


def dataset_names() -> list[str]:
    """The data set names :func:`load_dataset` knows."""
    return list(DATASETS)


@dataclass
class ImageSet:
    """One split of a data set.

    Attributes:
        name: ``"cifar10"``, ``"cifar100"`` or ``"imagenet"``.
        split: ``"train"`` or ``"test"`` (``"val"`` for ImageNet).
        class_names: label -> class name.
        source: the file or folder it was read from.
        images: uint8 N x H x W x 3 (RGB) for CIFAR, else None.
        labels: int64 N for CIFAR, else None.
        folder: the torchvision ``ImageFolder`` for ImageNet, else None.
    """

    name: str
    split: str
    class_names: list[str]
    source: Path
    images: np.ndarray | None = None
    labels: np.ndarray | None = None
    folder: object | None = None

    def __len__(self) -> int:
        if self.images is not None:
            return int(self.images.shape[0])
        return len(self.folder)  # type: ignore[arg-type]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def in_memory(self) -> bool:
        """True for arrays in memory (CIFAR), False for an image folder (ImageNet)."""
        return self.images is not None


def load_dataset(name: str, split: str, root: Path, *, download: bool = False) -> ImageSet:
    """Load one split of a data set.

    Args:
        name: one of :func:`dataset_names`.
        split: ``"train"`` or ``"test"`` (``"val"`` is accepted for either family).
        root: the data root (see :func:`eaq.paths.resolve_data_root`).
        download: let torchvision download CIFAR into ``root`` when no local copy is found.

    Returns:
        The split as an :class:`ImageSet`.

    Raises:
        EaqError: an unknown name or split, no data under ``root``, or a failed download.
    """
    if name not in DATASETS:
        raise EaqError(f"unknown dataset {name!r}; {choices_hint(DATASETS)}")
    if split not in _SPLIT_ALIASES:
        raise EaqError(f"unknown split {split!r} for {name}; {choices_hint(['train', 'test'])}")
    root = Path(root).expanduser()
    if name == "imagenet":
        return _load_imagenet(root, "train" if split == "train" else "val")
    return _load_cifar(name, _SPLIT_ALIASES[split], root, download)


def _from_npz(name: str, split: str, path: Path) -> ImageSet:
    try:
        with np.load(path) as f:
            x, y, classes = f["x"], f["y"], f["class_names"]
    except Exception as exc:  # a truncated or foreign file
        raise EaqError(f"cannot read {path}: {type(exc).__name__}: {exc}") from exc
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[1:] != (32, 32, 3) or len(y) != len(x):
        raise EaqError(f"{path} is not a CIFAR npz (x: N x 32 x 32 x 3 uint8, y: N labels)")
    return ImageSet(
        name=name,
        split=split,
        class_names=[str(c) for c in classes],
        source=path,
        images=np.ascontiguousarray(x),
        labels=y.astype(np.int64),
    )


def _from_torchvision(name: str, split: str, root: Path, download: bool) -> ImageSet:
    import torchvision

    cls = getattr(torchvision.datasets, _CIFAR[name].torchvision_class)
    ds = cls(str(root), train=split == "train", download=download)
    return ImageSet(
        name=name,
        split=split,
        class_names=list(ds.classes),
        source=root / _CIFAR[name].torchvision_folder,
        images=np.ascontiguousarray(ds.data),
        labels=np.asarray(ds.targets, dtype=np.int64),
    )


def _load_cifar(name: str, split: str, root: Path, download: bool) -> ImageSet:
    spec = _CIFAR[name]
    candidates = [root / name / f for f in spec.npz_files[split]]
    for path in candidates:
        if path.is_file():
            return _from_npz(name, split, path)
    tv_folder = root / spec.torchvision_folder
    if tv_folder.is_dir():
        try:
            return _from_torchvision(name, split, root, download=False)
        except RuntimeError as exc:  # torchvision: "Dataset not found or corrupted"
            if not download:
                raise EaqError(
                    f"{tv_folder} is incomplete or corrupt ({exc}); {_data_hint(name, split)}"
                ) from exc
    looked = ", ".join(str(p) for p in [*candidates, tv_folder])
    if not download:
        raise EaqError(
            f"no {name} {split} split under {root}: looked for {looked}; {_data_hint(name, split)}"
        )
    return _download_cifar(name, split, root, looked)


def _download_cifar(name: str, split: str, root: Path, looked: str) -> ImageSet:
    from torchvision.datasets import CIFAR10

    from eaq.models.weights import host_reachable

    if not host_reachable(CIFAR10.url):
        raise EaqError(
            f"could not download {name} (no network to {CIFAR10.url}) and found no local copy "
            f"(looked for {looked}); {_data_hint(name, split, offer_download=False)}"
        )
    try:
        root.mkdir(parents=True, exist_ok=True)
        return _from_torchvision(name, split, root, download=True)
    except Exception as exc:  # network, disk and archive errors alike
        text = " ".join(str(exc).split())[:200]
        raise EaqError(
            f"could not download {name} into {root} ({type(exc).__name__}: {text}); "
            f"{_data_hint(name, split, offer_download=False)}"
        ) from exc


def _load_imagenet(root: Path, split: str) -> ImageSet:
    folder = root / "imagenet" / split
    if not folder.is_dir():
        raise EaqError(
            f"no imagenet {split} split: {folder} does not exist; set --data-root or "
            f"EAQ_DATA_ROOT to a folder holding imagenet/{split}/<class>/<image> "
            "(ImageNet cannot be downloaded automatically)"
        )
    from torchvision.datasets import ImageFolder

    try:
        ds = ImageFolder(str(folder))
    except (FileNotFoundError, RuntimeError) as exc:
        raise EaqError(f"cannot read imagenet {split} at {folder}: {exc}") from exc
    return ImageSet(
        name="imagenet", split=split, class_names=list(ds.classes), source=folder, folder=ds
    )
