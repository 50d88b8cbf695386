"""Small real datasets for trainer tests, benchmarks and demos (CPU, seconds).

:func:`make_pairs` runs the factory's own synthesize stage with tiny per-domain generators (random
GANs or the procedural world; the checkpoints land in ``<data>/generators/tiny/<domain>`` or
``<data>/generators/world-tiny/<domain>`` as ``factory run`` puts them) and
commits the rows with the exactly-once sink, without starting Ray. :func:`make_encoded` runs the
factory's encode stage in-process (tiny random CLIP/DINO encoders; latents of a given or a seeded
random tiny VAE) into ``encoded.lance``, the table :mod:`train.dit.task` reads.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from avatar4d.data.schema import dataset_uri

logger = logging.getLogger(__name__)

TINY_DOMAINS = ("pixar", "greek_statue")


def make_pairs(data: str | Path, *, domains: tuple[str, ...] = TINY_DOMAINS, per_domain: int = 8,
               run_seed: int = 0, kind: str = "gan", batch_size: int | None = None) -> str:
    """``<data>/pairs.lance`` with ``per_domain`` tiny pairs per domain from ``kind`` generators (a
    random ``gan`` or the procedural ``world``); returns its URI. Another ``run_seed`` draws other
    identities (held-out sets)."""
    from factory.chunks import PAIRS_SET, Chunk
    from factory.domains import load_domains
    from factory.generators import ensure_domain_generator
    from factory.sink import LanceCommitter, write_fragments
    from factory.stages import SynthesizeConfig, SynthesizeStage

    data = Path(data)
    uri = dataset_uri(str(data), "pairs")
    catalog = load_domains()
    committer = None
    for domain in domains:
        folder = "tiny" if kind == "gan" else f"{kind}-tiny"
        checkpoint = ensure_domain_generator(catalog.get(domain), data / "generators" / folder, "tiny", kind)
        stage = SynthesizeStage(domain, checkpoint, SynthesizeConfig(batch_size=batch_size or per_domain,
                                                                     num_threads=None))
        chunk = Chunk(table="pairs", domain=domain, set_name=PAIRS_SET, index=0, start=0, stop=per_domain,
                      run_seed=run_seed)
        batch = stage(chunk)
        committer = committer or LanceCommitter(uri, stage.schema)
        committer.commit([chunk.chunk_id], write_fragments(uri, batch, stage.schema))
    logger.info("wrote %d pairs to %s", per_domain * len(domains), uri)
    return uri


@torch.no_grad()
def make_encoded(data: str | Path, *, vae_checkpoint: str | Path | None = None, seed: int = 0) -> str:
    """``<data>/encoded.lance`` for every row of ``<data>/pairs.lance`` by the factory's encode stage
    (tiny random CLIP/DINO encoders, no Ray); returns its URI.

    ``vae_checkpoint`` None: a tiny VAE initialised from ``seed`` is saved to ``<data>/vae-tiny`` and used.
    """
    from avatar4d.data.encoded_schema import encoded_uri
    from avatar4d.models.vae import VAE_PRESETS, TriplaneVAE, save_vae
    from factory.encode import EncodeRunConfig, run_encode

    data = Path(data)
    if vae_checkpoint is None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            vae = TriplaneVAE(VAE_PRESETS.get("tiny"))
        vae_checkpoint = data / "vae-tiny"
        save_vae(vae_checkpoint, vae, metadata={"origin": "random-init", "seed": seed})
    run_encode(EncodeRunConfig(data=str(data), vae_checkpoint=str(vae_checkpoint)), local=True, progress=False)
    uri = encoded_uri(str(data))
    logger.info("encoded %s with the VAE %s", uri, vae_checkpoint)
    return uri
