"""Training samples of the renderer from the factory's multiview sets (``<data>/multiview.lance``).

Rows are static (one expression, several cameras: source and target are two views) or dynamic
(several expressions × cameras: source and target differ in expression and camera). They stream
through :class:`train.data.RankStream` (per-rank shares, shuffled, fork-safe Lance readers); the
factory makes as many static as dynamic identities, so micro-batches are half static, half dynamic
in expectation (an exact split per micro-batch would need a filtered reader, not built yet).
:func:`make_multiview` writes such a table from the procedural world with the factory's own stage.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from avatar4d.data.schema import dataset_uri

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class RendererBatch:
    """source/target images [B, 3, S, S] in [-1, 1]; triplane [B, 4, C, R, R]; source/target face params
    [B, P]; target camera labels [B, 25]; target depth / opacity [B, 1, N, N], features [B, C, N, N]."""

    source_image: Tensor
    target_image: Tensor
    triplane: Tensor
    source_face_params: Tensor
    target_face_params: Tensor
    target_camera: Tensor
    target_depth: Tensor
    target_opacity: Tensor
    target_features: Tensor
    domains: list[str]


def pick_views(batch: dict[str, Any], generator: torch.Generator) -> RendererBatch:
    """One (source, target) view pair per multiview row: different cameras, and different expressions
    when the row has several."""
    views = batch["views"]
    splits = views["row_splits"].tolist()
    sources, targets = [], []
    for row in range(len(splits) - 1):
        first, last = splits[row], splits[row + 1]
        count = last - first
        source = first + int(torch.randint(count, (1,), generator=generator))
        expressions, cameras = views["expression_index"][first:last], views["camera_index"][first:last]
        s_expr, s_cam = int(views["expression_index"][source]), int(views["camera_index"][source])
        differ = (cameras != s_cam) & ((expressions != s_expr) | (int(expressions.max()) == 0))
        candidates = torch.nonzero(differ).flatten()
        if len(candidates) == 0:
            candidates = torch.tensor([i for i in range(count) if first + i != source] or [source - first])
        targets.append(first + int(candidates[torch.randint(len(candidates), (1,), generator=generator)]))
        sources.append(source)

    def image(index: list[int]) -> Tensor:
        return views["image"][index].float() / 127.5 - 1.0  # uint8 → [-1, 1]

    return RendererBatch(
        source_image=image(sources), target_image=image(targets), triplane=batch["triplane"].float(),
        source_face_params=views["face_params"][sources].float(),
        target_face_params=views["face_params"][targets].float(),
        target_camera=views["camera"][targets].float(), target_depth=views["depth"][targets].float(),
        target_opacity=views["opacity"][targets].float(), target_features=views["features"][targets].float(),
        domains=list(batch["domain"]))


def make_multiview(data: str | Path, *, domains: tuple[str, ...] = ("pixar", "greek_statue"), identities: int = 8,
                   run_seed: int = 0, expressions: int = 3, cameras: int = 3) -> str:
    """``<data>/multiview.lance`` with ``identities`` static and dynamic world identities per domain
    (the factory's multiview stage and exactly-once sink, no Ray); returns its URI."""
    from factory.chunks import Chunk
    from factory.domains import load_domains
    from factory.generators import ensure_domain_generator
    from factory.sink import LanceCommitter, write_fragments
    from factory.stages.multiview import MultiviewConfig, MultiviewStage

    data = Path(data)
    uri = dataset_uri(str(data), "multiview")
    catalog, committer = load_domains(), None
    for domain in domains:
        checkpoint = ensure_domain_generator(catalog.get(domain), data / "generators" / "world-tiny", "tiny", "world")
        stage = MultiviewStage(domain, checkpoint, MultiviewConfig(expressions=expressions, cameras=cameras,
                                                                   batch_size=16, num_threads=None))
        for set_name in ("static", "dynamic"):
            chunk = Chunk(table="multiview", domain=domain, set_name=set_name, index=0, start=0, stop=identities,
                          run_seed=run_seed)
            batch = stage(chunk)
            committer = committer or LanceCommitter(uri, stage.schema)
            committer.commit([chunk.chunk_id], write_fragments(uri, batch, stage.schema))
    logger.info("wrote %d multiview identities to %s", 2 * identities * len(domains), uri)
    return uri
