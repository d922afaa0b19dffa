"""Data of a continual run: image sources as in-memory tensors, and class-incremental task splits."""

from .dataset import ImageDataset
from .datasets import DATASETS, load_dataset
from .splits import Task, split_tasks

__all__ = ["DATASETS", "ImageDataset", "Task", "load_dataset", "split_tasks"]
