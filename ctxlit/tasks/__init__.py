"""LightningModules: what is trained and how it is measured."""

from ctxlit.tasks.classification import ClassificationTask, Placement
from ctxlit.tasks.segmentation import SegmentationTask

__all__ = ["ClassificationTask", "Placement", "SegmentationTask"]
