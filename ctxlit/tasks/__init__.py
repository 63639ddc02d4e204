"""LightningModules: what is trained and how it is measured."""

from pytorch_lightning.core import saving as _saving

from ctxlit.backbones import Placement
from ctxlit.tasks.classification import ClassificationTask
from ctxlit.tasks.segmentation import SegmentationTask

__all__ = ["ClassificationTask", "Placement", "SegmentationTask"]

# A checkpoint of ``python -m ctxlit.fit`` names ctxlit.cli.instantiate_module as the function
# that rebuilds its task (Lightning's hyper-parameter "_instantiator"), and Lightning calls only
# the ones in this allowlist; Lightning has no public way to register one. Ours is Lightning's
# own instantiate_module with the block options made plain partials (see ctxlit.cli).
if isinstance(getattr(_saving, "_ALLOWED_INSTANTIATORS", None), set):
    _saving._ALLOWED_INSTANTIATORS.add("ctxlit.cli.instantiate_module")
