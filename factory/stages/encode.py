"""``encode``: pairs → the DiT's precomputed inputs (the ``encoded`` table), so DiT training never
runs the image encoders or the VAE.

Per pair: the PNG is decoded and fed to CLIP (``hidden_states[-2]``) and DINOv2
(``last_hidden_state``) with each encoder's preprocessing (:mod:`avatar4d.encoders`); the
stacked parametric triplane [4, C, R, R] goes through the triplane VAE's encoder, and the posterior
mean × the VAE's latent scale (release 0.3994218) is stored, i.e. the latent in diffusion space
(divide by the scale before decoding). Tokens are stored in float16, latents in float32.

The stage maps one pairs record batch to one encoded record batch with the same rows in the same
order. On a given machine and thread count it is deterministic, and every mini-batch has exactly
``batch_size`` rows (the last one padded with copies of its last row; see
:mod:`factory.stages.common` for why fixed-size batches matter on CPU): a row encoded alone gives
the same bytes as in a full batch (tested).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from avatar4d.checkpoint import CheckpointInfo
from avatar4d.config import Config
from avatar4d.data.codec import encode_tensor
from avatar4d.data.encoded_schema import encoded_chunk_id, encoded_schema
from avatar4d.data.schema import TensorSpec, tensor_spec
from avatar4d.errors import UserError
from avatar4d.models.vae import TriplaneVAE, load_vae, scale_latent, stacked_to_vae_layout
from factory.stages.common import check_common_config, inference_context
from factory.stages.encoders import ENCODER_PRESETS, EncoderConfig, ImageEncoders

if TYPE_CHECKING:  # pragma: no cover
    import pyarrow as pa

logger = logging.getLogger(__name__)

PAIRS_COLUMNS = ("sample_id", "chunk_id", "domain", "image", "triplane")
"""The columns of ``pairs.lance`` the stage reads."""


def _tiny_encoders() -> EncoderConfig:
    return ENCODER_PRESETS.get("tiny")


@dataclasses.dataclass
class EncodeConfig(Config):
    """Options of :class:`EncodeStage`.

    ``encoders``: the image encoders (``ENCODER_PRESETS`` tiny/paper; checkpoints are local paths).
    ``token_dtype``: storage dtype of the CLIP/DINO tokens. ``store_latent_std``: also store the
    posterior std (× scale), so a trainer can sample latents instead of using the mean.
    ``precision``: ``bfloat16`` runs the encoders and the VAE under autocast (GPU); ``num_threads``:
    CPU intra-op threads while encoding (None leaves torch's setting).
    """

    encoders: EncoderConfig = dataclasses.field(default_factory=_tiny_encoders)
    batch_size: int = 8
    device: str = "cpu"
    num_threads: int | None = None
    precision: str = "float32"
    token_dtype: str = "float16"
    store_latent_std: bool = False

    def __post_init__(self) -> None:
        check_common_config(batch_size=self.batch_size, num_threads=self.num_threads, precision=self.precision,
                            device=self.device)
        TensorSpec((1,), self.token_dtype)  # validates the dtype name


@dataclasses.dataclass
class EncodedTensors:
    """Encoder outputs of n pairs (CPU, float32): clip [n, Tc, Dc], dino [n, Td, Dd],
    latent [n, E, F, h, w] (scaled posterior mean), latent_std (same shape, scaled)."""

    clip_tokens: Tensor
    dino_tokens: Tensor
    latent: Tensor
    latent_std: Tensor


class EncodeStage:
    """Loads the triplane VAE and the image encoders; maps a pairs batch to encoded rows.

    ``pairs_schema`` is the schema of the pairs dataset (its metadata holds the triplane spec,
    which must fit the VAE: [num_planes, in_channels, resolution, resolution]).
    """

    def __init__(self, vae_checkpoint: str | Path, pairs_schema: pa.Schema, config: EncodeConfig | None = None,
                 ) -> None:
        self.config = config or EncodeConfig()
        device = self.config.device
        self.vae, self.vae_info = load_vae(vae_checkpoint, device=device)
        self.vae.eval().requires_grad_(False)
        self.triplane_spec = tensor_spec(pairs_schema, "triplane")
        self._check_triplanes(self.vae, self.triplane_spec)
        self.pairs_schema = pairs_schema
        self.encoders = ImageEncoders(self.config.encoders).to(device)
        token_dtype = self.config.token_dtype
        self.clip_spec = TensorSpec(self.encoders.clip_token_shape, token_dtype)
        self.dino_spec = TensorSpec(self.encoders.dino_token_shape, token_dtype)
        self.latent_spec = TensorSpec(self.vae.config.latent_shape(), "float32")
        self.latent_scale = float(self.vae.config.latent_scale_factor)
        self._schema = encoded_schema(
            clip_tokens=self.clip_spec, dino_tokens=self.dino_spec, latent=self.latent_spec,
            latent_scale=self.latent_scale, vae_sha256=self.vae_sha256, encoder_sha256=self.encoder_sha256,
            latent_std=self.config.store_latent_std,
            extra_metadata={"avatar4d.encode_config": self.config.to_json(),
                            "avatar4d.vae_config": json.dumps(self.vae_info.config, sort_keys=True)})
        logger.info("encode stage: CLIP %s, DINO %s, latent %s (scale %g) on %s", list(self.clip_spec.shape),
                    list(self.dino_spec.shape), list(self.latent_spec.shape), self.latent_scale, device)

    @staticmethod
    def _check_triplanes(vae: TriplaneVAE, spec: TensorSpec) -> None:
        cfg = vae.config
        expected = (cfg.num_planes, cfg.in_channels, cfg.resolution, cfg.resolution)
        if spec.shape != expected:
            raise UserError(f"the pairs hold triplanes {list(spec.shape)}, the VAE encodes {list(expected)}; "
                            "use a VAE trained on this data")

    @property
    def schema(self) -> pa.Schema:
        return self._schema

    @property
    def vae_sha256(self) -> str:
        return self.vae_info.weights_sha256

    @property
    def encoder_sha256(self) -> str:
        return self.encoders.weights_sha256

    @property
    def checkpoint_info(self) -> CheckpointInfo:
        return self.vae_info

    # --- tensors --------------------------------------------------------------------------
    def encode(self, images: Tensor, triplanes: Tensor) -> EncodedTensors:
        """uint8 images [n, 3, H, W] and stacked triplanes [n, F, C, R, R] → :class:`EncodedTensors`."""
        n = images.shape[0]
        if n == 0 or triplanes.shape[0] != n:
            raise ValueError(f"encode needs as many triplanes as images (>0), got {n} and {triplanes.shape[0]}")
        cfg, device, bs = self.config, self.config.device, self.config.batch_size
        outputs: dict[str, list[Tensor]] = {"clip": [], "dino": [], "mean": [], "std": []}
        with inference_context(device, cfg.num_threads, cfg.precision):
            for start in range(0, n, bs):
                stop = min(start + bs, n)
                index = torch.arange(start, start + bs).clamp(max=stop - 1)  # a full batch, padded with the last row
                clip, dino = self.encoders(images[index].to(device))                   # [bs, Tc, Dc], [bs, Td, Dd]
                planes = triplanes[index].to(device=device, dtype=torch.float32)      # [bs, F, C, R, R]
                posterior = self.vae.encode(self.vae_layout(planes))                   # over [bs, E, F, h, w]
                outputs["clip"].append(clip[: stop - start].float().cpu())
                outputs["dino"].append(dino[: stop - start].float().cpu())
                outputs["mean"].append(posterior.mean[: stop - start].float().cpu())
                outputs["std"].append(posterior.std[: stop - start].float().cpu())
        mean, std = torch.cat(outputs["mean"]), torch.cat(outputs["std"])
        return EncodedTensors(clip_tokens=torch.cat(outputs["clip"]), dino_tokens=torch.cat(outputs["dino"]),
                              latent=scale_latent(mean, self.latent_scale), latent_std=std * self.latent_scale)

    def vae_layout(self, planes: Tensor) -> Tensor:
        """Stacked [B, F, C, R, R] → normalised VAE layout [B, C, F, R, R] (what ``encode_triplane`` feeds)."""
        return stacked_to_vae_layout(self.vae.normalize_planes(planes))

    def null_condition(self) -> dict[str, Tensor]:
        """CLIP and DINO tokens of an all-zero input in the stored dtype: {"clip_tokens", "dino_tokens"}."""
        with inference_context(self.config.device, self.config.num_threads, self.config.precision):
            clip, dino = self.encoders.null_condition()
        return {"clip_tokens": clip.cpu().to(_torch_dtype(self.clip_spec)),
                "dino_tokens": dino.cpu().to(_torch_dtype(self.dino_spec))}

    # --- rows -----------------------------------------------------------------------------
    def __call__(self, pairs: pa.RecordBatch | pa.Table, chunk_id: str | None = None) -> pa.RecordBatch:
        """Encode every row of a pairs batch (columns :data:`PAIRS_COLUMNS` at least); the rows keep
        their order and ``sample_id``. ``chunk_id`` defaults to the encoded chunk of the batch's single
        pairs chunk (:func:`~avatar4d.data.encoded_schema.encoded_chunk_id`)."""
        import pyarrow as pa

        from avatar4d.data.reader import decode_batch

        table = pa.Table.from_batches([pairs]) if isinstance(pairs, pa.RecordBatch) else pairs
        missing = [name for name in PAIRS_COLUMNS if name not in table.schema.names]
        if missing:
            raise ValueError(f"the pairs batch lacks columns {missing}")
        if table.num_rows == 0:
            raise ValueError("the pairs batch is empty")
        batch = table.select(list(PAIRS_COLUMNS)).combine_chunks().to_batches()[0]
        rows = decode_batch(batch, self.pairs_schema)
        if chunk_id is None:
            sources = set(rows["chunk_id"])
            if len(sources) != 1:
                raise ValueError(f"the batch spans {len(sources)} pairs chunks; pass chunk_id")
            chunk_id = encoded_chunk_id(sources.pop())
        images, triplanes = rows["image"], rows["triplane"]
        if isinstance(images, list):  # PNGs of different sizes would come back as a list
            raise ValueError("the pairs batch holds images of different sizes")
        encoded = self.encode(images, triplanes)
        return self.record_batch(chunk_id, rows["sample_id"], rows["domain"], encoded)

    def record_batch(self, chunk_id: str, sample_ids: list[str], domains: list[str],
                     encoded: EncodedTensors) -> pa.RecordBatch:
        """Encoded tensors → rows of :attr:`schema`."""
        import pyarrow as pa

        n = len(sample_ids)
        columns: dict[str, Any] = {
            "sample_id": pa.array(sample_ids, pa.string()),
            "chunk_id": pa.array([chunk_id] * n, pa.string()),
            "domain": pa.array(domains, pa.string()),
            "clip_tokens": _tensor_array(encoded.clip_tokens, self.clip_spec, "clip_tokens"),
            "dino_tokens": _tensor_array(encoded.dino_tokens, self.dino_spec, "dino_tokens"),
            "latent": _tensor_array(encoded.latent, self.latent_spec, "latent"),
            "vae_sha256": pa.array([self.vae_sha256] * n, pa.string()),
            "encoder_sha256": pa.array([self.encoder_sha256] * n, pa.string()),
        }
        if self.config.store_latent_std:
            columns["latent_std"] = _tensor_array(encoded.latent_std, self.latent_spec, "latent_std")
        return pa.RecordBatch.from_arrays([columns[name] for name in self._schema.names], schema=self._schema)


def _torch_dtype(spec: TensorSpec) -> torch.dtype:
    from avatar4d.data.codec import torch_dtype

    return torch_dtype(spec)


def _tensor_array(values: Tensor, spec: TensorSpec, name: str) -> pa.Array:
    """[n, *spec.shape] → large_binary array of raw little-endian bytes in spec.dtype (finite values only)."""
    import pyarrow as pa

    stored = values.to(_torch_dtype(spec))
    if not bool(torch.isfinite(stored).all()):
        raise RuntimeError(f"{name} has non-finite values in {spec.dtype} (overflow or a broken model)")
    return pa.array([encode_tensor(item, spec) for item in stored], pa.large_binary())
