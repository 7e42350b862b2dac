"""Data: folder scanning, patient-grouped splits, built-in datasets, in-memory decoded images."""

from kdistill.data.datasets import (
    Batch,
    DatasetBundle,
    ImageSplit,
    iterate_batches,
    load_dataset,
    load_eval_folder,
)

__all__ = ["Batch", "DatasetBundle", "ImageSplit", "iterate_batches", "load_dataset", "load_eval_folder"]
