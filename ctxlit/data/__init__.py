"""LightningDataModules. Each exposes ``num_classes``, ``class_names`` and ``input_shape``
right after construction (the CLI links ``num_classes`` into the model), and yields
``(images, targets)`` batches with float, normalised images."""

from ctxlit.data.cityscapes import CityscapesDataModule
from ctxlit.data.food import FoodDeliveryDataModule
from ctxlit.data.imagenet import ImageNetDataModule
from ctxlit.data.synthetic import SyntheticContextDataModule, SyntheticContextDataset

__all__ = [
    "CityscapesDataModule",
    "FoodDeliveryDataModule",
    "ImageNetDataModule",
    "SyntheticContextDataModule",
    "SyntheticContextDataset",
]
