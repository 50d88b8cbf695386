"""Factory stages: classes that load their model in ``__init__`` and turn a :class:`~factory.chunks.Chunk`
into an Arrow record batch. No Ray imports, so they run (and unit-test) in any process."""

from factory.stages.common import FACTORY_VERSION
from factory.stages.multiview import MultiviewConfig, MultiviewStage
from factory.stages.synthesize import SynthesizeConfig, SynthesizeStage

__all__ = ["FACTORY_VERSION", "MultiviewConfig", "MultiviewStage", "SynthesizeConfig", "SynthesizeStage"]
