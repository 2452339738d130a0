"""Data sets and batches: file order, normalisation, seeded calibration, helpful errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from eaq.data import (
    calibration_batches,
    dataset_names,
    eval_batches,
    load_dataset,
    to_tensor_batch,
)
from eaq.errors import EaqError
from eaq.paths import default_data_root, repo_root, resolve_data_root
from tests.conftest import require_file

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
NORM = dict(mean=MEAN, std=STD, input_size=32)


@pytest.fixture(scope="module")
def cifar10_test(data_root):
    require_file(data_root, "cifar10/test.npz")
    return load_dataset("cifar10", "test", data_root)


@pytest.fixture(scope="module")
def cifar10_train(data_root):
    if not any((data_root / "cifar10" / f).is_file() for f in ("train.npz", "train_5k.npz")):
        pytest.skip(f"needs {data_root}/cifar10/train.npz or train_5k.npz")
    return load_dataset("cifar10", "train", data_root)


def test_paths(monkeypatch, tmp_path):
    assert (repo_root() / "pyproject.toml").is_file()
    monkeypatch.setenv("EAQ_DATA_ROOT", str(tmp_path))
    assert default_data_root() == tmp_path
    assert resolve_data_root(None) == tmp_path
    assert resolve_data_root("/x/y") == Path("/x/y")
    monkeypatch.delenv("EAQ_DATA_ROOT")
    assert default_data_root().parts[-3:] == (".cache", "eaq", "data")


def test_dataset_names():
    assert dataset_names() == ["cifar10", "cifar100", "imagenet"]


def test_cifar10_test_split(cifar10_test, data_root):
    assert len(cifar10_test) == 10_000 and cifar10_test.num_classes == 10
    assert cifar10_test.images.dtype == np.uint8 and cifar10_test.images.shape[1:] == (32, 32, 3)
    assert cifar10_test.source == data_root / "cifar10" / "test.npz"


def test_eval_batches_limit_keeps_file_order(cifar10_test, data_root):
    batches = eval_batches(cifar10_test, batch_size=64, limit=200, **NORM)
    assert batches.n_images == 200 and len(batches) == 4
    xs, ys = zip(*batches, strict=True)
    x, y = torch.cat(xs), torch.cat(ys)
    assert x.shape == (200, 3, 32, 32) and x.dtype == torch.float32
    assert y.dtype == torch.int64
    with np.load(data_root / "cifar10" / "test.npz") as f:
        raw_x, raw_y = f["x"][:200], f["y"][:200]
    assert torch.equal(y, torch.from_numpy(raw_y))
    pixels = torch.from_numpy(raw_x).permute(0, 3, 1, 2).float() / 255
    expected = (pixels - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    torch.testing.assert_close(x, expected)
    # iterable twice, and the same both times
    assert torch.equal(next(iter(batches))[0], xs[0])


def test_eval_batches_full_and_resized(cifar10_test):
    full = eval_batches(cifar10_test, **NORM)
    assert full.n_images == 10_000 and len(full) == 40
    big = eval_batches(cifar10_test, mean=MEAN, std=STD, input_size=64, batch_size=8, limit=8)
    ((x, _),) = list(big)
    assert x.shape == (8, 3, 64, 64)


def test_to_tensor_batch_resize_is_plain_bilinear():
    img = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    x = to_tensor_batch(img, mean=(0, 0, 0), std=(1, 1, 1), input_size=224)
    ref = torch.nn.functional.interpolate(
        torch.from_numpy(img).permute(0, 3, 1, 2).float() / 255,
        size=(224, 224),
        mode="bilinear",
        align_corners=False,
        antialias=False,
    )
    torch.testing.assert_close(x, ref)


def test_calibration_is_seeded_and_from_train(cifar10_train):
    assert cifar10_train.split == "train"
    a = calibration_batches(cifar10_train, n=100, seed=0, batch_size=32, **NORM)
    b = calibration_batches(cifar10_train, n=100, seed=0, batch_size=32, **NORM)
    c = calibration_batches(cifar10_train, n=100, seed=1, batch_size=32, **NORM)
    xa = torch.cat([x for x, _ in a])
    assert xa.shape == (100, 3, 32, 32) and [len(y) for _, y in a] == [32, 32, 32, 4]
    assert torch.equal(xa, torch.cat([x for x, _ in b]))
    assert not torch.equal(xa, torch.cat([x for x, _ in c]))
    # every calibration image is a training image, none repeated
    train = to_tensor_batch(cifar10_train.images, **NORM).flatten(1)
    calib = xa.flatten(1)
    match = torch.cdist(calib, train).argmin(dim=1)
    assert torch.equal(train[match], calib)
    assert len(set(match.tolist())) == 100


def test_held_out_draw_is_disjoint_from_calibration(cifar10_train):
    from eaq.data import calibration_indices

    calib = calibration_indices(len(cifar10_train), 256, seed=3)
    held = calibration_indices(len(cifar10_train), 512, seed=3, offset=256)
    assert len(set(held)) == 512 and not set(calib) & set(held)
    # the same seed's longer draw is the calibration draw followed by the held-out one
    assert calibration_indices(len(cifar10_train), 768, seed=3) == calib + held
    xa = calibration_batches(cifar10_train, n=4, seed=3, offset=256, batch_size=4, **NORM)[0][0]
    want = to_tensor_batch(cifar10_train.images[held[:4]], **NORM)
    assert torch.equal(xa, want)
    with pytest.raises(EaqError, match="after 10 images held out"):
        calibration_batches(cifar10_train, n=len(cifar10_train), offset=10, **NORM)


def test_calibration_rejects_test_split_and_bad_sizes(cifar10_test, cifar10_train):
    with pytest.raises(EaqError, match="training split"):
        calibration_batches(cifar10_test, n=8, **NORM)
    with pytest.raises(EaqError, match="the calibration set is empty: --calib-size must be >= 1"):
        calibration_batches(cifar10_train, n=0, **NORM)
    with pytest.raises(EaqError, match=f"larger than the {len(cifar10_train)} images"):
        calibration_batches(cifar10_train, n=len(cifar10_train) + 1, **NORM)


def test_unknown_dataset_lists_names(tmp_path):
    with pytest.raises(
        EaqError, match="unknown dataset 'mnist'; valid: cifar10, cifar100, imagenet"
    ):
        load_dataset("mnist", "test", tmp_path)
    with pytest.raises(EaqError, match="unknown split 'dev'"):
        load_dataset("cifar10", "dev", tmp_path)


def test_missing_data_says_where_and_what_to_do(tmp_path):
    with pytest.raises(EaqError) as info:
        load_dataset("cifar10", "test", tmp_path)
    msg = str(info.value)
    assert str(tmp_path / "cifar10" / "test.npz") in msg
    assert str(tmp_path / "cifar-10-batches-py") in msg
    assert "set --data-root or EAQ_DATA_ROOT to a folder holding cifar10/test.npz" in msg
    assert "--download" in msg
    with pytest.raises(EaqError, match="train_5k.npz") as info:
        load_dataset("cifar100", "train", tmp_path)
    assert "a folder holding cifar100/train.npz" in str(info.value)  # the set that is missing
    with pytest.raises(EaqError, match="imagenet/val"):
        load_dataset("imagenet", "test", tmp_path)


def test_failed_download_is_an_eaq_error(tmp_path, monkeypatch):
    monkeypatch.setattr("eaq.models.weights.host_reachable", lambda url, timeout=3.0: False)
    with pytest.raises(EaqError, match="could not download cifar10"):
        load_dataset("cifar10", "test", tmp_path, download=True)


def test_torchvision_format_is_read(tmp_path):
    import pickle

    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    data = rng.integers(0, 256, (4, 3072), dtype=np.uint8)
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({"data": data, "labels": [3, 1, 4, 1]}, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"c{i}" for i in range(10)]}, f)
    # torchvision checks md5 sums of its official files: a hand-made folder is "corrupt"
    with pytest.raises(EaqError, match="incomplete or corrupt"):
        load_dataset("cifar10", "test", tmp_path)
