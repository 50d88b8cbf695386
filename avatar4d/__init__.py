"""avatar4d: open-domain 4D avatar generation (AvatarArtist, CVPR 2025) as a distributed system.

The core library depends on torch + numpy only; Ray, DeepSpeed, Lance, MLflow and diffusers are
used by the ``factory``, ``train`` and ``serve`` packages and imported lazily where the core needs
them.
"""

__version__ = "0.1.0"
