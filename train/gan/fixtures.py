"""Small real ``stylized.lance`` datasets for GAN tests and benchmarks (CPU, seconds, no Ray).

:func:`make_world_stylized` renders portraits of a procedural-world domain (the factory's own
synthesize stage with the domain's world generator) and stores them as that domain's stylized
rows: the images have the domain's look and carry their true meshes and cameras, so a fine-tune
on them can be checked against ground truth.
"""

from __future__ import annotations

from pathlib import Path

from avatar4d.data.stylized_schema import stylized_schema, stylized_uri


def make_world_stylized(data: str | Path, *, domains: tuple[str, ...] = ("pixar",), per_domain: int = 32,
                        run_seed: int = 0, batch_size: int = 16) -> str:
    """``<data>/stylized.lance`` with ``per_domain`` world renders per domain; returns its URI."""
    import pyarrow as pa

    from factory.chunks import PAIRS_SET, Chunk
    from factory.domains import load_domains
    from factory.generators import ensure_domain_generator
    from factory.sink import LanceCommitter, write_fragments
    from factory.stages import SynthesizeConfig, SynthesizeStage

    data = Path(data)
    uri = stylized_uri(str(data))
    catalog = load_domains()
    committer = None
    for domain in domains:
        checkpoint = ensure_domain_generator(catalog.get(domain), data / "generators" / "world-tiny", "tiny", "world")
        stage = SynthesizeStage(domain, checkpoint, SynthesizeConfig(batch_size=batch_size, num_threads=None))
        chunk = Chunk(table="pairs", domain=domain, set_name=PAIRS_SET, index=0, start=0, stop=per_domain,
                      run_seed=run_seed)
        pairs = stage(chunk)
        dims = stage.face_params_dim
        schema = stylized_schema(face_params_dim=dims, identity_dim=stage.head.identity_dim,
                                 image_resolution=stage.image_resolution)
        n = pairs.num_rows
        columns = {
            "sample_id": pa.array([f"{domain}/{sid}" for sid in pairs.column("sample_id").to_pylist()]),
            "chunk_id": pa.array([f"stylized/{domain}/world/{run_seed}"] * n),
            "domain": pa.array([domain] * n),
            "source_id": pairs.column("sample_id"),
            "seed": pairs.column("seed"),
            "camera": pairs.column("camera"),
            "face_params": pairs.column("face_params"),
            "image": pairs.column("image"),
            "prompt": pa.array([""] * n),
            "strength": pa.array([0.0] * n, pa.float32()),
            "controlnet_scale": pa.array([0.0] * n, pa.float32()),
            "stylizer_sha256": pa.array([stage.generator_sha256] * n),
        }
        table = pa.table({name: columns[name] for name in schema.names}).cast(schema)
        committer = committer or LanceCommitter(uri, schema)
        committer.commit([columns["chunk_id"][0].as_py()], write_fragments(uri, table, schema))
    return uri
