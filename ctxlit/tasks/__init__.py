"""LightningModules: what is trained and how it is measured."""

from ctxlit.tasks.classification import ClassificationTask, Placement

__all__ = ["ClassificationTask", "Placement"]
