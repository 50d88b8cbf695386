"""``stylize``: source portraits → one domain's stylized portraits (the ``stylized`` table).

Per source row (AvatarArtist §3.1, DESIGN.md "Stylize"): the head model's mesh of the row's
coefficients is projected by the row's camera to the 68 landmarks, drawn as a MediaPipe-style
face-landmark image (:mod:`avatar4d.geometry.landmark_image`); diffusers'
``StableDiffusionControlNetImg2ImgPipeline`` re-runs ``strength`` of the diffusion from the noised
portrait (SDEdit) with the domain's prompt and negative prompt, classifier-free guidance and the
landmark ControlNet at ``controlnet_scale``. The stylized row keeps the source's camera and
coefficients (its mesh). The ``realistic`` domain is not stylized: its rows carry the source image.

Every row's noise comes from its own seed (the run seed, the domain and the source id), so a row
re-made after a failure is the same row (on the same device and library versions).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from avatar4d.config import Config, ConfigError
from avatar4d.data.codec import encode_png
from avatar4d.data.stylized_schema import META_STYLIZE_CONFIG, META_STYLIZER_SHA256, stylized_schema
from avatar4d.geometry.camera import Camera
from avatar4d.geometry.landmark_image import draw_landmark_image
from avatar4d.geometry.morphable import FaceParams, MorphableModel, default_head_model
from avatar4d.tracking.fitting import project_landmarks
from factory.stages.common import fixed_threads

if TYPE_CHECKING:  # pragma: no cover
    import pyarrow as pa

    from factory.domains import DomainSpec

logger = logging.getLogger(__name__)

PRECISIONS = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclasses.dataclass
class StylizeConfig(Config):
    """Options of :class:`StylizeStage`.

    ``models``: ``tiny`` (random small networks, the embedded default), ``paper-random`` (Stable
    Diffusion 1.5 sizes, random; benchmarks) or ``pretrained`` (``sd_path`` + ``controlnet_path``).
    ``steps`` None: each domain's own (30 in the catalog). ``resolution`` None: the source images'
    (a multiple of 8 for Stable Diffusion's VAE and UNet). ``batch_size`` rows per pipeline call.
    """

    models: str = "tiny"
    sd_path: str | None = None
    controlnet_path: str | None = None
    steps: int | None = None
    resolution: int | None = None
    batch_size: int = 4
    device: str = "cpu"
    precision: str = "float32"
    num_threads: int | None = 1
    model_seed: int = 0
    png_compress_level: int = 1

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {list(PRECISIONS)}, got {self.precision!r}")
        if self.batch_size < 1 or (self.steps is not None and self.steps < 1):
            raise ConfigError("batch_size and steps must be >= 1")
        if self.resolution is not None and (self.resolution < 8 or self.resolution % 8):
            raise ConfigError(f"resolution must be a multiple of 8, got {self.resolution}")


def row_seed(run_seed: int, domain: str, source_id: str) -> int:
    """63-bit seed of one stylized row (BLAKE2b of run seed, domain and source id)."""
    digest = hashlib.blake2b(f"{run_seed}/{domain}/{source_id}".encode(), digest_size=8,
                             person=b"avatar4d-stylize").digest()
    return int.from_bytes(digest, "little") >> 1


def landmark_images(head: MorphableModel, face_params: Tensor, camera_labels: Tensor, resolution: int) -> Tensor:
    """Conditioning images uint8 [B, 3, R, R] of rows' coefficients [B, D] and camera labels [B, 25]."""
    params = FaceParams.from_vector(face_params.float(), head.identity_dim, head.expression_dim)
    with torch.no_grad():
        points = project_landmarks(head, params, Camera.from_label(camera_labels.float()))  # [B, 68, 2]
    return draw_landmark_image(points, resolution)


class StylizeStage:
    """Loads the pipeline once; maps source rows of one domain to stylized Arrow rows."""

    def __init__(self, config: StylizeConfig, *, face_params_dim: int, identity_dim: int | None,
                 image_resolution: int, head: MorphableModel | None = None, run_seed: int = 0) -> None:
        from factory.stylize_models import build_pipeline, pipeline_sha256

        self.config = config
        self.head = head or default_head_model()
        if identity_dim is not None and identity_dim != self.head.identity_dim:
            raise ConfigError(f"the portraits' coefficients have {identity_dim} identity values, the head model "
                              f"{self.head.identity_dim}")
        self.run_seed = run_seed
        self.resolution = config.resolution or image_resolution
        if self.resolution % 8:
            raise ConfigError(f"the portraits are {image_resolution}² px: give a resolution that is a multiple of 8")
        self.image_resolution = image_resolution
        self._pipelines: dict[str | None, tuple[Any, str]] = {}
        self._build = lambda sd_path: build_pipeline(config.models, sd_path=sd_path,
                                                     controlnet_path=config.controlnet_path, device=config.device,
                                                     dtype=PRECISIONS[config.precision], seed=config.model_seed)
        self._sha = pipeline_sha256
        self.pipeline(None)  # the default model loads now (a bad path fails the worker's start)
        self._schema = stylized_schema(
            face_params_dim=face_params_dim, identity_dim=identity_dim, image_resolution=image_resolution,
            extra_metadata={META_STYLIZE_CONFIG: config.to_json(), META_STYLIZER_SHA256: self.sha256(None)})

    @property
    def schema(self) -> pa.Schema:
        return self._schema

    def pipeline(self, base_model: str | None) -> Any:
        """The pipeline of a domain's base model (None: ``sd_path``); one kept besides the default."""
        key = base_model if self.config.models == "pretrained" else None
        if key not in self._pipelines:
            for other in [k for k in self._pipelines if k is not None]:
                del self._pipelines[other]  # bound memory: one community model at a time
            pipe = self._build(key or self.config.sd_path)
            self._pipelines[key] = (pipe, self._sha(pipe))
        return self._pipelines[key][0]

    def sha256(self, base_model: str | None) -> str:
        self.pipeline(base_model)
        key = base_model if self.config.models == "pretrained" else None
        return self._pipelines[key][1]

    def stylize(self, domain: DomainSpec, images: Tensor, face_params: Tensor, cameras: Tensor,
                seeds: list[int]) -> Tensor:
        """Source images uint8 [B, 3, S, S] → stylized uint8 [B, 3, S, S] (the source size)."""
        from PIL import Image

        if domain.kind == "realistic":
            return images
        cfg, res = self.config, self.resolution
        pipe = self.pipeline(domain.base_model)
        controls = landmark_images(self.head, face_params, cameras, res)  # [B, 3, R, R]
        outputs = []
        for start in range(0, images.shape[0], cfg.batch_size):
            part = slice(start, start + cfg.batch_size)
            sources = [Image.fromarray(img.permute(1, 2, 0).numpy()).resize((res, res), Image.BICUBIC)
                       for img in images[part]]
            conditions = [Image.fromarray(img.permute(1, 2, 0).numpy()) for img in controls[part]]
            generators = [torch.Generator(cfg.device).manual_seed(seed) for seed in seeds[part]]
            with fixed_threads(cfg.device, cfg.num_threads):
                result = pipe(prompt=[domain.prompt] * len(sources),
                              negative_prompt=[domain.negative_prompt] * len(sources),
                              image=sources, control_image=conditions, strength=domain.strength,
                              num_inference_steps=cfg.steps or domain.steps, guidance_scale=domain.guidance_scale,
                              controlnet_conditioning_scale=domain.controlnet_scale, generator=generators,
                              output_type="np", height=res, width=res)
            array = torch.from_numpy(np.round(result.images * 255).clip(0, 255).astype(np.uint8))  # [b, R, R, 3]
            outputs.append(array.permute(0, 3, 1, 2))
        stylized = torch.cat(outputs)
        if res != self.image_resolution:
            stylized = torch.nn.functional.interpolate(stylized.float(), size=(self.image_resolution,) * 2,
                                                       mode="bicubic", antialias=True).round().clamp(0, 255)
            stylized = stylized.to(torch.uint8)
        return stylized

    def __call__(self, domain: DomainSpec, chunk_id: str, rows: dict[str, Any]) -> pa.RecordBatch:
        """Decoded source rows (``sample_id`` list, ``image`` uint8 [B, 3, S, S], ``camera`` [B, 25],
        ``face_params`` [B, D]) → stylized rows of :attr:`schema`."""
        import pyarrow as pa

        ids = list(rows["sample_id"])
        seeds = [row_seed(self.run_seed, domain.name, sample_id) for sample_id in ids]
        stylized = self.stylize(domain, rows["image"], rows["face_params"], rows["camera"], seeds)
        n = len(ids)
        schema = self._schema
        realistic = domain.kind == "realistic"
        columns = {
            "sample_id": pa.array([f"{domain.name}/{sample_id}" for sample_id in ids], pa.string()),
            "chunk_id": pa.array([chunk_id] * n, pa.string()),
            "domain": pa.array([domain.name] * n, pa.string()),
            "source_id": pa.array(ids, pa.string()),
            "seed": pa.array(seeds, pa.int64()),
            "camera": pa.array(rows["camera"].float().numpy().tolist(), schema.field("camera").type),
            "face_params": pa.array(rows["face_params"].float().numpy().tolist(), schema.field("face_params").type),
            "image": pa.array([encode_png(image.float() / 127.5 - 1.0, self.config.png_compress_level)
                               for image in stylized], pa.binary()),
            "prompt": pa.array(["" if realistic else domain.prompt] * n, pa.string()),
            "strength": pa.array([0.0 if realistic else domain.strength] * n, pa.float32()),
            "controlnet_scale": pa.array([0.0 if realistic else domain.controlnet_scale] * n, pa.float32()),
            "stylizer_sha256": pa.array(["none" if realistic else self.sha256(domain.base_model)] * n, pa.string()),
        }
        return pa.RecordBatch.from_arrays([columns[name] for name in schema.names], schema=schema)
