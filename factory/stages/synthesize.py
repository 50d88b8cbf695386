"""``synthesize``: one domain's 4D GAN → image–parametric-triplane pairs (the ``pairs`` table).

Per sample (from its own seed, :func:`factory.chunks.sample_seed`): z ~ N(0, I), an FFHQ-like
camera, random identity,
expression and jaw coefficients of the head model (the identity is the latent's when the generator
fixes one: the procedural world) → mesh → the domain's generator (a GAN or the world) with truncation →
the super-resolved image (PNG) and the expression-independent parametric triplane [4, C, R, R]
(raw bytes, fp16 by default). See :mod:`factory.stages.common` for why rows are bit-identical to
their regeneration.

The mapping network is conditioned on one fixed frontal camera by default (``conditioning="frontal"``:
AvatarArtist's data generation, so an identity's w does not depend on the view it is rendered from,
as in the multiview stage); ``conditioning="render"`` conditions on each sample's rendering camera
(EG3D's training-time pose conditioning, our earlier behaviour).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from avatar4d.config import Config
from avatar4d.data.codec import encode_png, encode_tensor, torch_dtype
from avatar4d.data.schema import PAIRS, TensorSpec, pairs_schema
from avatar4d.geometry.camera import Camera, PoseSampler, PoseSamplerConfig
from avatar4d.geometry.morphable import MorphableModel
from factory.chunks import PAIRS_SET, Chunk
from factory.stages.common import (
    FACTORY_VERSION,
    EncoderPool,
    check_common_config,
    fixed_threads,
    inference_context,
    load_stage_generator,
    plan_batches,
    resolve_truncation_cutoff,
    scatter_rows,
    vector_array,
    with_latent_identity,
)

if TYPE_CHECKING:  # pragma: no cover
    import pyarrow as pa

logger = logging.getLogger(__name__)


CONDITIONING_CAMERAS = ("frontal", "render")


def ffhq_pose_config() -> PoseSamplerConfig:
    """FFHQ-like camera poses: Gaussian yaw/pitch around the frontal view (EG3D's std 0.3 / 0.155),
    no roll (FFHQ crops are aligned upright), radius 2.7, FOV 18.837°."""
    return PoseSamplerConfig(distribution="gaussian", roll_range=(0.0, 0.0))


@dataclasses.dataclass
class SynthesizeConfig(Config):
    """Options of :class:`SynthesizeStage`.

    ``truncation_cutoff`` None takes the generator config's own cutoff (paper 14; tiny: all ws).
    ``batch_size`` and ``num_threads`` (CPU intra-op threads while generating; None leaves torch's
    setting) are part of what makes a row reproducible: regenerate with the same values.
    """

    batch_size: int = 8
    truncation_psi: float = 0.7
    truncation_cutoff: int | None = None
    triplane_dtype: str = "float16"
    poses: PoseSamplerConfig = dataclasses.field(default_factory=ffhq_pose_config)
    identity_scale: float = 1.0
    expression_scale: float = 0.5
    jaw_max: float = 0.2
    device: str = "cpu"
    num_threads: int | None = 1
    precision: str = "float32"
    blob_triplane: bool = True
    png_compress_level: int = 1
    encode_threads: int = 1
    conditioning: str = "frontal"       # "frontal" (AvatarArtist's data generation) or "render" (EG3D training)

    def __post_init__(self) -> None:
        check_common_config(batch_size=self.batch_size, num_threads=self.num_threads, precision=self.precision,
                            device=self.device, png_compress_level=self.png_compress_level,
                            encode_threads=self.encode_threads)
        TensorSpec((1,), self.triplane_dtype)  # validates the dtype name
        if self.identity_scale < 0 or self.expression_scale < 0 or self.jaw_max < 0:
            raise ValueError("identity_scale, expression_scale and jaw_max must be >= 0")
        if self.conditioning not in CONDITIONING_CAMERAS:
            raise ValueError(f"conditioning must be one of {list(CONDITIONING_CAMERAS)}, got {self.conditioning!r}")


@dataclasses.dataclass
class SampleDraws:
    """The random inputs of n samples (CPU): z [n, z_dim], camera labels [n, 25], face params
    vectors [n, D], mesh vertices [n, V, 3]."""

    z: Tensor
    camera: Tensor
    face_params: Tensor
    vertices: Tensor


@dataclasses.dataclass
class SynthesizedSamples:
    """Generator outputs of n samples in item order (CPU): w [n, w_dim], image [n, 3, S, S] in
    [-1, 1] (float32), triplane [n, 4, C, R, R] (in the stored dtype, e.g. float16)."""

    draws: SampleDraws
    w: Tensor
    image: Tensor
    triplane: Tensor


class SynthesizeStage:
    """Loads one domain's generator; maps a pairs :class:`Chunk` to an Arrow record batch."""

    def __init__(self, domain: str, checkpoint: str | Path, config: SynthesizeConfig | None = None, *,
                 head: MorphableModel | None = None) -> None:
        self.domain = domain
        self.config = config or SynthesizeConfig()
        self.generator, self.checkpoint_info, self.head = load_stage_generator(checkpoint, self.config.device, head)
        self.pose_sampler = PoseSampler(self.config.poses)
        self.encoders = EncoderPool(self.config.encode_threads)
        gcfg = self.generator.config
        self.triplane_spec = TensorSpec((4, gcfg.plane_channels, gcfg.plane_resolution, gcfg.plane_resolution),
                                        self.config.triplane_dtype)
        self.image_resolution = gcfg.image_resolution
        self.truncation_cutoff = resolve_truncation_cutoff(self.config.truncation_cutoff, self.generator)
        self.face_params_dim = self.head.identity_dim + self.head.expression_dim + 3
        self._schema = pairs_schema(
            w_dim=self.generator.w_dim, face_params_dim=self.face_params_dim, triplane=self.triplane_spec,
            identity_dim=self.head.identity_dim, blob_triplane=self.config.blob_triplane,
            extra_metadata={"avatar4d.image": json.dumps({"format": "png", "resolution": self.image_resolution,
                                                          "channels": 3}),
                            "avatar4d.synthesize_config": self.config.to_json()})

    @property
    def schema(self) -> pa.Schema:
        return self._schema

    @property
    def generator_sha256(self) -> str:
        return self.checkpoint_info.weights_sha256

    # --- random inputs --------------------------------------------------------------------
    def draw(self, seeds: list[int]) -> SampleDraws:
        """Each sample's z, camera, face parameters and mesh from its own seeded generator."""
        z_dim = self.generator.z_dim
        zs, labels, params, vertices = [], [], [], []
        for seed in seeds:
            gen = torch.Generator().manual_seed(int(seed))
            zs.append(torch.randn(1, z_dim, generator=gen))
            labels.append(self.pose_sampler.sample(1, gen).camera.to_label())
            face = self.head.random_params(1, generator=gen, identity_scale=self.config.identity_scale,
                                           expression_scale=self.config.expression_scale,
                                           jaw_max=self.config.jaw_max)
            face = with_latent_identity(self.generator, face, zs[-1], self.config.truncation_psi)
            params.append(face.to_vector().float().cpu())
            vertices.append(self.head.vertices(face).float().cpu())  # one mesh at a time: batch-invariant
        return SampleDraws(z=torch.cat(zs), camera=torch.cat(labels).float(), face_params=torch.cat(params),
                           vertices=torch.cat(vertices))

    # --- generation -----------------------------------------------------------------------
    def generate(self, indices: list[int], seeds: list[int]) -> SynthesizedSamples:
        """Samples ``indices`` (their positions for batching) with their ``seeds``; item order kept."""
        if len(indices) != len(seeds) or not indices:
            raise ValueError("generate needs as many seeds as indices, and at least one")
        cfg, device, bs = self.config, self.config.device, self.config.batch_size
        with fixed_threads(device, cfg.num_threads), torch.no_grad():
            draws = self.draw(seeds)
        ws_out, image_out, triplane_out = [], [], []
        with inference_context(device, cfg.num_threads, cfg.precision):
            for plan in plan_batches(indices, bs):
                index = plan.gather_index(bs)
                camera = Camera.from_label(draws.camera[index].to(device))
                conditioning = self.pose_sampler.frontal(bs).to(device) if cfg.conditioning == "frontal" else camera
                out = self.generator(draws.z[index].to(device), camera, draws.vertices[index].to(device),
                                     conditioning_camera=conditioning, truncation_psi=cfg.truncation_psi,
                                     truncation_cutoff=self.truncation_cutoff, noise_mode="const")
                ws_out.append((plan, out.ws[:, 0].float()))  # [bs, w_dim] (no style mixing: all ws equal)
                image_out.append((plan, out.image.float()))  # [bs, 3, S, S]
                # [bs, 4, C, R, R], cast on the device: half the transfer, and encoding is one copy
                triplane_out.append((plan, out.triplane.stacked().to(torch_dtype(self.triplane_spec))))
        n = len(indices)
        return SynthesizedSamples(draws=draws, w=scatter_rows(ws_out, n), image=scatter_rows(image_out, n),
                                  triplane=scatter_rows(triplane_out, n))

    def record_batch(self, chunk_id: str, indices: list[int], seeds: list[int],
                     samples: SynthesizedSamples) -> pa.RecordBatch:
        """Encode generated samples as rows of :attr:`schema`."""
        import pyarrow as pa

        schema, n, level = self._schema, len(indices), self.config.png_compress_level
        images = self.encoders.map(lambda image: encode_png(image, level), samples.image)
        triplanes = self.encoders.map(lambda triplane: encode_tensor(triplane, self.triplane_spec), samples.triplane)
        columns = {
            "sample_id": pa.array([f"{self.domain}/{i:08d}" for i in indices], pa.string()),
            "chunk_id": pa.array([chunk_id] * n, pa.string()),
            "domain": pa.array([self.domain] * n, pa.string()),
            "sample_index": pa.array(indices, pa.int64()),
            "seed": pa.array(seeds, pa.int64()),
            "w": vector_array(samples.w, schema.field("w").type),
            "camera": vector_array(samples.draws.camera, schema.field("camera").type),
            "face_params": vector_array(samples.draws.face_params, schema.field("face_params").type),
            "image": pa.array(images, pa.binary()),
            "triplane": pa.array(triplanes, pa.large_binary()),
            "generator_sha256": pa.array([self.generator_sha256] * n, pa.string()),
            "generator_kind": pa.array([self.generator.kind] * n, pa.string()),
            "factory_version": pa.array([FACTORY_VERSION] * n, pa.string()),
        }
        return pa.RecordBatch.from_arrays([columns[name] for name in schema.names], schema=schema)

    def __call__(self, chunk: Chunk) -> pa.RecordBatch:
        """Exactly ``chunk.size`` rows: sample indices ``chunk.start .. chunk.stop - 1``."""
        if chunk.table != PAIRS or chunk.set_name != PAIRS_SET:
            raise ValueError(f"SynthesizeStage makes pairs rows, got chunk {chunk.chunk_id}")
        if chunk.domain != self.domain:
            raise ValueError(f"this stage hosts domain {self.domain!r}, got chunk {chunk.chunk_id}")
        indices, seeds = list(chunk.item_indices), chunk.seeds()
        batch = self.record_batch(chunk.chunk_id, indices, seeds, self.generate(indices, seeds))
        logger.debug("chunk %s: %d rows", chunk.chunk_id, batch.num_rows)
        return batch

    def regenerate(self, sample_index: int, seed: int, chunk_id: str = "") -> dict[str, Any]:
        """One row (as a dict of Python values) re-made from its index and seed alone."""
        samples = self.generate([sample_index], [seed])
        return self.record_batch(chunk_id, [sample_index], [seed], samples).to_pylist()[0]
