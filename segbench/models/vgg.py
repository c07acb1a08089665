"""Old home of the VGG encoder, kept so that imports and the ``_target_`` of checkpoints written
before the move (``segbench.models.vgg.VGGEncoder``) still resolve; new code imports
:mod:`segbench.models.encoders`."""

from segbench.models.encoders.vgg import VGG_STAGES, VGGEncoder

__all__ = ["VGG_STAGES", "VGGEncoder"]
