"""Each pair's triplane rendered with the decoder and renderer of the generator that made it.

Decoders differ per domain (every domain's GAN is fine-tuned), so a row's ``generator_sha256``
(the ``weights_sha256`` of its generator checkpoint) picks the checkpoint. :class:`GeneratorIndex`
finds the checkpoints under a few folders (default ``<data>/generators``, where the factory keeps
them) by reading their ``checkpoint.json``; :class:`DomainRenderers` loads each one once, keeps only
its OSG decoder, volume renderer and mesh conditioner (frozen, a few kB to MB: the backbones are
dropped) and renders planes with them.

What is rendered. The stored parametric triplane is expression independent: plane 0 is the UV
neural texture, planes 1–3 the static triplane. With ``compose_expression`` (default) the row's own
expression mesh (``face_params`` → the procedural head's vertices) is rasterized over the face box
and the texture is resampled into the frontal plane (:meth:`ParametricTriplane.compose`), so the
texture plane is supervised through the renders as the generator uses it (without the GAN's
face-backbone refinement, which needs ``ws``). Without it, the static planes are rendered as they
are. Input and reconstruction always go through the same mesh, cameras and ray samples
(deterministic sampling), so their renders differ only by the reconstruction error.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import Tensor

from avatar4d.checkpoint.io import CheckpointError, read_checkpoint_info
from avatar4d.errors import UserError

# DomainRenderer lives in the core: the inference pipeline renders avatars with it too
from avatar4d.generators import DomainRenderer, is_generator
from avatar4d.geometry.morphable import FaceParams, default_head_model

logger = logging.getLogger(__name__)


class GeneratorNotFoundError(UserError):
    """No generator checkpoint with the weights a dataset row names."""


class GeneratorIndex:
    """``weights_sha256`` → checkpoint folder of every generator checkpoint under ``roots``."""

    def __init__(self, roots: list[str | Path]) -> None:
        from avatar4d import storage

        # an object-store root (s3://…/generators) is listed there; each checkpoint under it is
        # downloaded once per machine (storage.local_copy) and read from the local copy
        self.roots = [str(root) if storage.is_remote(root) else Path(root).expanduser() for root in roots]
        self.paths: dict[str, Path] = {}
        for root in self.roots:
            if isinstance(root, str):
                folders = [storage.join(root, name.rsplit("/", 1)[0]) for name in storage.list_files(root)
                           if name.endswith("/checkpoint.json")]
                info_files = [storage.local_copy(folder, marker="checkpoint.json") / "checkpoint.json"
                              for folder in sorted(folders)]
            elif root.is_dir():
                info_files = sorted(root.rglob("checkpoint.json"))
            else:
                continue
            for info_file in info_files:
                try:
                    info = read_checkpoint_info(info_file.parent)
                except CheckpointError:
                    continue
                if is_generator(info):
                    self.paths.setdefault(info.weights_sha256, info_file.parent)

    def find(self, sha256: str, domain: str = "?") -> Path:
        if sha256 not in self.paths:
            roots = ", ".join(str(r) for r in self.roots) or "(none)"
            raise GeneratorNotFoundError(f"no generator checkpoint with weights {sha256[:12]}… (domain {domain}) "
                                         f"under {roots}; pass the folder holding it with --generators")
        return self.paths[sha256]


class DomainRenderers:
    """Loads each generator's :class:`DomainRenderer` once, on first use."""

    def __init__(self, index: GeneratorIndex, device: torch.device, *, identity_dim: int | None = None,
                 expression_dim: int | None = None, compose_expression: bool = True) -> None:
        self.index = index
        self.device = device
        self.compose_expression = compose_expression
        self.head = default_head_model().to(device) if compose_expression else None
        if self.head is not None and identity_dim is not None and identity_dim != self.head.identity_dim:
            raise UserError(f"the dataset's face parameters have {identity_dim} identity coefficients, the "
                            f"procedural head model {self.head.identity_dim}: set compose_expression=False")
        self.identity_dim = identity_dim if identity_dim is not None else (self.head.identity_dim if self.head else 0)
        self.expression_dim = (expression_dim if expression_dim is not None
                               else (self.head.expression_dim if self.head else 0))
        self._loaded: dict[str, DomainRenderer] = {}

    def get(self, sha256: str, domain: str = "?") -> DomainRenderer:
        if sha256 not in self._loaded:
            path = self.index.find(sha256, domain)
            self._loaded[sha256] = DomainRenderer(path, default_head_model(), self.device).to(self.device)
            logger.info("loaded the renderer of %s (%s…) from %s", domain, sha256[:12], path)
        return self._loaded[sha256]

    def vertices(self, face_params: Tensor) -> Tensor | None:
        """Expression meshes [B, V, 3] of stored ``face_params`` [B, D] (None without composition)."""
        if self.head is None:
            return None
        params = FaceParams.from_vector(face_params.float().to(self.device), self.identity_dim, self.expression_dim)
        with torch.no_grad():
            return self.head.vertices(params)

    def groups(self, shas: list[str]) -> dict[str, list[int]]:
        """Row indices of a batch grouped by generator."""
        found: dict[str, list[int]] = {}
        for index, sha in enumerate(shas):
            found.setdefault(sha, []).append(index)
        return found
