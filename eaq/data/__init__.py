"""Data sets (CIFAR-10/100 in memory, ImageNet folders) and their batches."""

from eaq.data.datasets import DATASETS, ImageSet, dataset_names, load_dataset
from eaq.data.loaders import (
    EvalBatches,
    calibration_batches,
    calibration_indices,
    eval_batches,
    to_tensor_batch,
)

__all__ = [
    "DATASETS",
    "EvalBatches",
    "ImageSet",
    "calibration_batches",
    "calibration_indices",
    "dataset_names",
    "eval_batches",
    "load_dataset",
    "to_tensor_batch",
]
