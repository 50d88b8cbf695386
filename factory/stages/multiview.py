"""``multiview``: multi-view, multi-expression sets of one identity (the ``multiview`` table).

Following Portrait4D / AvatarArtist: a **dynamic** set holds ``expressions`` expressions ×
``cameras`` cameras per identity (head reenactment), a **static** set one expression × ``cameras``
cameras (3D reconstruction). Each view stores the image, depth, opacity and the composited
rendering features that the renderer trainer supervises; each identity row stores its w and
parametric triplane once (all its views share them).

Identities of the two sets are distinct: an identity's seed is ``sample_seed(run, domain, set,
index)``, so dynamic #3 and static #3 are different people (the paper samples the two sets from
different expression sources). The same seed gives the same identity (z, identity coefficients,
w, triplane) in either set.

Per identity (its own seeded generator): z, identity coefficients, per-expression expression/jaw
coefficients, ``expressions × cameras`` FFHQ-like cameras. w comes from the mapping conditioned on
the frontal camera (EG3D's multi-view convention), so it does not depend on the views. Work per
identity: one parametric-triplane pass, one synthesis per expression (its first camera), then the
other cameras re-render that expression's planes (renderer + super-resolution only).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from avatar4d.config import Config
from avatar4d.data.codec import encode_png, encode_tensor, torch_dtype
from avatar4d.data.schema import MULTIVIEW, MULTIVIEW_SETS, TensorSpec, multiview_schema
from avatar4d.generators import Generator4D
from avatar4d.geometry.camera import Camera, PoseSampler, PoseSamplerConfig
from avatar4d.geometry.morphable import FaceParams, MorphableModel
from factory.chunks import Chunk
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
    with_latent_identity,
)
from factory.stages.multiview_rows import multiview_record_batch
from factory.stages.synthesize import ffhq_pose_config

if TYPE_CHECKING:  # pragma: no cover
    import pyarrow as pa

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class MultiviewConfig(Config):
    """Options of :class:`MultiviewStage` (see :class:`~factory.stages.synthesize.SynthesizeConfig`
    for truncation, batching and reproducibility). ``batch_size`` counts (identity, expression) pairs."""

    expressions: int = 4
    cameras: int = 4
    batch_size: int = 8
    truncation_psi: float = 0.7
    truncation_cutoff: int | None = None
    triplane_dtype: str = "float16"
    depth_dtype: str = "float32"
    features_dtype: str = "float16"
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

    def __post_init__(self) -> None:
        check_common_config(batch_size=self.batch_size, num_threads=self.num_threads, precision=self.precision,
                            device=self.device, png_compress_level=self.png_compress_level,
                            encode_threads=self.encode_threads)
        if self.expressions < 1 or self.cameras < 1:
            raise ValueError(f"expressions and cameras must be >= 1, got {self.expressions}, {self.cameras}")
        for dtype in (self.triplane_dtype, self.depth_dtype, self.features_dtype):
            TensorSpec((1,), dtype)

    def expressions_of(self, set_name: str) -> int:
        if set_name not in MULTIVIEW_SETS:
            raise ValueError(f"unknown multiview set {set_name!r}; choose from {list(MULTIVIEW_SETS)}")
        return self.expressions if set_name == "dynamic" else 1


@dataclasses.dataclass
class IdentityDraws:
    """Random inputs of n identities with E expressions and K cameras each (CPU): z [n, z_dim],
    face params vectors [n, E, D], vertices [n, E, V, 3], camera labels [n, E, K, 25]."""

    z: Tensor
    face_params: Tensor
    vertices: Tensor
    cameras: Tensor


@dataclasses.dataclass
class MultiviewSamples:
    """Outputs of n identities (CPU): w [n, w_dim], triplane [n, 4, C, R, R], and per view [n, E, K, ...]:
    image [3, S, S] in [-1, 1] (float32), depth / opacity [1, N, N], features [C, N, N]; tensors
    other than the image are already in their stored dtypes."""

    set_name: str
    draws: IdentityDraws
    w: Tensor
    triplane: Tensor
    image: Tensor
    depth: Tensor
    opacity: Tensor
    features: Tensor


def render_planes(generator: Generator4D, planes: Tensor, ws: Tensor, camera: Camera) -> dict[str, Tensor]:
    """Render expression-specific planes [B, 3, C, R, R] from new cameras: the tail of
    ``synthesis`` (volume rendering + super-resolution) without the backbones."""
    rendered = generator.renderer(planes, generator.decoder, camera, generator.config.neural_resolution)
    image = generator.superresolution(rendered.rgb, rendered.features, ws)  # [B, 3, S, S]
    return {"image": image, "depth": rendered.depth, "opacity": rendered.opacity, "features": rendered.features}


class MultiviewStage:
    """Loads one domain's generator; maps a multiview :class:`Chunk` (dynamic or static identities)
    to an Arrow record batch with one row per identity."""

    def __init__(self, domain: str, checkpoint: str | Path, config: MultiviewConfig | None = None, *,
                 head: MorphableModel | None = None) -> None:
        self.domain = domain
        self.config = config or MultiviewConfig()
        self.generator, self.checkpoint_info, self.head = load_stage_generator(checkpoint, self.config.device, head)
        self.pose_sampler = PoseSampler(self.config.poses)
        self.encoders = EncoderPool(self.config.encode_threads)
        gcfg = self.generator.config
        n, c, r = gcfg.neural_resolution, gcfg.plane_channels, gcfg.plane_resolution
        self.triplane_spec = TensorSpec((4, c, r, r), self.config.triplane_dtype)
        self.depth_spec = TensorSpec((1, n, n), self.config.depth_dtype)
        self.features_spec = TensorSpec((c, n, n), self.config.features_dtype)
        self.truncation_cutoff = resolve_truncation_cutoff(self.config.truncation_cutoff, self.generator)
        self._schema = multiview_schema(
            w_dim=self.generator.w_dim, face_params_dim=self.head.identity_dim + self.head.expression_dim + 3,
            triplane=self.triplane_spec, depth=self.depth_spec, features=self.features_spec,
            identity_dim=self.head.identity_dim, blob_triplane=self.config.blob_triplane,
            extra_metadata={"avatar4d.image": json.dumps({"format": "png", "resolution": gcfg.image_resolution,
                                                          "channels": 3}),
                            "avatar4d.multiview_config": self.config.to_json()})

    @property
    def schema(self) -> pa.Schema:
        return self._schema

    @property
    def generator_sha256(self) -> str:
        return self.checkpoint_info.weights_sha256

    def draw(self, set_name: str, seeds: list[int]) -> IdentityDraws:
        """Each identity's z, expressions, meshes and cameras from its own seeded generator."""
        cfg, head = self.config, self.head
        e, k = cfg.expressions_of(set_name), cfg.cameras
        zs, params, vertices, cameras = [], [], [], []
        for seed in seeds:
            gen = torch.Generator().manual_seed(int(seed))
            zs.append(torch.randn(1, self.generator.z_dim, generator=gen))
            identity = head.random_params(1, generator=gen, identity_scale=cfg.identity_scale)
            identity = with_latent_identity(self.generator, identity, zs[-1], cfg.truncation_psi).identity
            moves = head.random_params(e, generator=gen, expression_scale=cfg.expression_scale, jaw_max=cfg.jaw_max)
            labels = self.pose_sampler.sample(e * k, gen).camera.to_label().float()  # [E*K, 25]
            faces = [FaceParams(identity, moves.expression[i:i + 1], moves.jaw[i:i + 1]) for i in range(e)]
            params.append(torch.cat([f.to_vector().float().cpu() for f in faces]))  # [E, D]
            vertices.append(torch.cat([head.vertices(f).float().cpu() for f in faces]))  # [E, V, 3], one at a time
            cameras.append(labels.reshape(e, k, -1))
        return IdentityDraws(z=torch.cat(zs), face_params=torch.stack(params), vertices=torch.stack(vertices),
                             cameras=torch.stack(cameras))

    def generate(self, set_name: str, indices: list[int], seeds: list[int]) -> MultiviewSamples:
        """Identities ``indices`` of ``set_name`` with their ``seeds`` (item order kept)."""
        if len(indices) != len(seeds) or not indices:
            raise ValueError("generate needs as many seeds as indices, and at least one")
        cfg, device, bs, g = self.config, self.config.device, self.config.batch_size, self.generator
        with fixed_threads(device, cfg.num_threads), torch.no_grad():
            draws = self.draw(set_name, seeds)
        n, e, k = len(indices), cfg.expressions_of(set_name), cfg.cameras
        with inference_context(device, cfg.num_threads, cfg.precision):
            ws_out, tri_out = [], []
            frontal = self.pose_sampler.frontal(bs).to(device)
            for plan in plan_batches(indices, bs):
                ws = g.mapping(draws.z[plan.gather_index(bs)].to(device), frontal, truncation_psi=cfg.truncation_psi,
                               truncation_cutoff=self.truncation_cutoff)  # [bs, num_ws, w_dim]
                ws_out.append((plan, ws))
                triplane = g.parametric_triplane(ws)[0].stacked()  # [bs, 4, C, R, R]
                tri_out.append((plan, triplane.to(torch_dtype(self.triplane_spec))))
            ws_all = scatter_rows(ws_out, n)  # [n, num_ws, w_dim]
            # (identity, expression) pairs: position identity_index * E + expression
            pair_identity = [i for i in range(n) for _ in range(e)]
            pair_expression = [x for _ in range(n) for x in range(e)]
            positions = [indices[i] * e + x for i, x in zip(pair_identity, pair_expression)]
            # stored dtypes, cast on the device (image stays float32 until PNG quantisation)
            dtypes = {"image": torch.float32, "depth": torch_dtype(self.depth_spec),
                      "opacity": torch_dtype(self.depth_spec), "features": torch_dtype(self.features_spec)}
            views: dict[str, list] = {name: [] for name in dtypes}
            for plan in plan_batches(positions, bs):
                slots = plan.gather_index(bs)  # [bs] pair indices
                ident, expr = torch.tensor(pair_identity)[slots], torch.tensor(pair_expression)[slots]
                ws = ws_all[ident].to(device)
                labels = draws.cameras[ident, expr]  # [bs, K, 25]
                vertices = draws.vertices[ident, expr].to(device)  # [bs, V, 3]
                out = g.synthesis(ws, Camera.from_label(labels[:, 0].to(device)), vertices, noise_mode="const")
                per_camera = [{"image": out.image, "depth": out.depth, "opacity": out.opacity,
                               "features": out.features}]
                for cam in range(1, k):
                    per_camera.append(render_planes(g, out.planes, ws, Camera.from_label(labels[:, cam].to(device))))
                for name in views:  # [bs, K, ...]
                    views[name].append((plan, torch.stack([v[name].to(dtypes[name]) for v in per_camera], dim=1)))
        pairs = {name: scatter_rows(parts, n * e) for name, parts in views.items()}  # [n*E, K, ...]
        return MultiviewSamples(set_name=set_name, draws=draws, w=ws_all[:, 0].float(),
                                triplane=scatter_rows(tri_out, n),
                                **{name: t.reshape(n, e, k, *t.shape[2:]) for name, t in pairs.items()})

    def record_batch(self, chunk_id: str, indices: list[int], seeds: list[int],
                     samples: MultiviewSamples) -> pa.RecordBatch:
        """Encode generated identities as rows of :attr:`schema`."""
        n, e, k = samples.image.shape[:3]
        level, keys = self.config.png_compress_level, [(i, x, c) for i in range(n) for x in range(e) for c in range(k)]
        encoded = {
            "image": self.encoders.map(lambda key: encode_png(samples.image[key], level), keys),
            "depth": self.encoders.map(lambda key: encode_tensor(samples.depth[key], self.depth_spec), keys),
            "opacity": self.encoders.map(lambda key: encode_tensor(samples.opacity[key], self.depth_spec), keys),
            "features": self.encoders.map(lambda key: encode_tensor(samples.features[key], self.features_spec), keys),
        }
        views = [{"camera": samples.draws.cameras[i, x, c], "face_params": samples.draws.face_params[i, x],
                  "expression_index": x, "camera_index": c, **{name: encoded[name][j] for name in encoded}}
                 for j, (i, x, c) in enumerate(keys)]
        encoded_views = [views[i * e * k:(i + 1) * e * k] for i in range(n)]
        return multiview_record_batch(
            self._schema, domain=self.domain, set_name=samples.set_name, chunk_id=chunk_id, indices=indices,
            seeds=seeds, w=samples.w, triplanes=[encode_tensor(t, self.triplane_spec) for t in samples.triplane],
            views=encoded_views, generator_sha256=self.generator_sha256, generator_kind=self.generator.kind,
            factory_version=FACTORY_VERSION)

    def __call__(self, chunk: Chunk) -> pa.RecordBatch:
        """One row per identity of the chunk (dynamic: expressions × cameras views; static: cameras views)."""
        if chunk.table != MULTIVIEW:
            raise ValueError(f"MultiviewStage makes multiview rows, got chunk {chunk.chunk_id}")
        if chunk.domain != self.domain:
            raise ValueError(f"this stage hosts domain {self.domain!r}, got chunk {chunk.chunk_id}")
        indices, seeds = list(chunk.item_indices), chunk.seeds()
        samples = self.generate(chunk.set_name, indices, seeds)
        return self.record_batch(chunk.chunk_id, indices, seeds, samples)
