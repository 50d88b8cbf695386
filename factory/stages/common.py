"""Pieces shared by the stages: generator loading, reproducible batching, Arrow column builders.

Reproducibility. A row must match re-generation from its seed whatever chunk (and batch) the
sample landed in. Per-sample randomness is easy (each sample draws z, camera and face parameters
from its own ``torch.Generator``; synthesis uses ``noise_mode="const"`` and deterministic ray
sampling), but batched float kernels are not batch-composition invariant: on CPU a row of a GEMM
in a partial block of rows (the mapping and affine layers run GEMMs with M = batch size) takes a
different micro-kernel, and the intra-op thread count changes the partitioning. Measured with the
tiny generator: batch 1 vs batch 8 differ by ~3e-6; in a fixed-size batch the result of an item
does not depend on the other items. So every item has a global *position* (the sample index) and
runs in batch ``position // batch_size`` at slot ``position % batch_size`` of a batch of exactly
``batch_size`` (unused slots padded with copies of a member), with a fixed thread count
(``num_threads``). Same machine + same ``batch_size``/``num_threads``/device ⇒ bit-identical rows.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from avatar4d import __version__ as avatar4d_version
from avatar4d.checkpoint import CheckpointInfo
from avatar4d.generators import Generator4D, load_generator_checkpoint
from avatar4d.geometry.morphable import FaceParams, MorphableModel, default_head_model

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import pyarrow as pa

logger = logging.getLogger(__name__)

FACTORY_FORMAT = 1
FACTORY_VERSION = f"avatar4d-{avatar4d_version}+factory{FACTORY_FORMAT}"
PRECISIONS = {"float32": None, "bfloat16": torch.bfloat16}


def check_common_config(*, batch_size: int, num_threads: int | None, precision: str, device: str,
                        png_compress_level: int = 1, encode_threads: int = 1) -> None:
    if not 0 <= png_compress_level <= 9:
        raise ValueError(f"png_compress_level must be 0..9, got {png_compress_level}")
    if encode_threads < 1:
        raise ValueError(f"encode_threads must be >= 1, got {encode_threads}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if num_threads is not None and num_threads < 1:
        raise ValueError(f"num_threads must be >= 1 or None, got {num_threads}")
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {list(PRECISIONS)}, got {precision!r}")
    torch.device(device)  # raises on a malformed device string


def load_stage_generator(checkpoint: str | Path, device: str,
                         head: MorphableModel | None = None) -> tuple[Generator4D, CheckpointInfo, MorphableModel]:
    """Load a domain generator (a GAN or the procedural world) for inference: eval mode, no grads,
    deterministic ray sampling."""
    head = head or default_head_model()
    generator, info = load_generator_checkpoint(checkpoint, head=head, device=device)
    generator.eval().requires_grad_(False)
    generator.renderer.config = generator.renderer.config.replace(deterministic=True)
    logger.info("loaded generator %s (sha256 %s…) on %s", checkpoint, info.weights_sha256[:12], device)
    return generator, info, head


def with_latent_identity(generator: Generator4D, face: FaceParams, z: Tensor, truncation_psi: float) -> FaceParams:
    """``face`` with the identity that latent ``z`` [n, z_dim] fixes, when the generator fixes one (the
    procedural world paints the head of those coefficients, so the row's mesh must be that head)."""
    identity = generator.identity_for_latent(z, truncation_psi)
    if identity is None:
        return face
    return FaceParams(identity.to(face.identity), face.expression, face.jaw)


def resolve_truncation_cutoff(cutoff: int | None, generator: Generator4D) -> int | None:
    """``cutoff``, or the generator config's own when None (paper 14 = all ws; tiny None = all).

    Rows store w = ws[:, 0]; that is the whole of ws only when every ws is truncated alike (no
    style mixing, cutoff >= num_ws), so a smaller cutoff is logged.
    """
    resolved = generator.config.truncation_cutoff if cutoff is None else cutoff
    if resolved is not None and resolved < generator.num_ws:
        logger.warning("truncation_cutoff %d < num_ws %d: the stored w is ws[:, 0], later ws differ from it",
                       resolved, generator.num_ws)
    return resolved


@contextlib.contextmanager
def fixed_threads(device: str, num_threads: int | None) -> Iterator[None]:
    """A fixed intra-op thread count while generating on the CPU (restored afterwards)."""
    previous = torch.get_num_threads()
    if torch.device(device).type == "cpu" and num_threads is not None and num_threads != previous:
        torch.set_num_threads(num_threads)
    try:
        yield
    finally:
        if torch.get_num_threads() != previous:
            torch.set_num_threads(previous)


@contextlib.contextmanager
def inference_context(device: str, num_threads: int | None, precision: str) -> Iterator[None]:
    """no_grad + :func:`fixed_threads` + optional autocast."""
    dtype = PRECISIONS[precision]
    with fixed_threads(device, num_threads), torch.no_grad():
        with torch.autocast(torch.device(device).type, dtype=dtype, enabled=dtype is not None):
            yield


class EncoderPool:
    """Maps an encoder (PNG, tensor bytes) over items, on ``threads`` threads when > 1 (zlib and
    memory copies release the GIL, so PNG encoding of 512² images scales with threads)."""

    def __init__(self, threads: int = 1) -> None:
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="encode") if threads > 1 else None

    def map(self, function: Callable[[Any], bytes], items: Iterable[Any]) -> list[bytes]:
        if self._pool is None:
            return [function(item) for item in items]
        return list(self._pool.map(function, items))

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False)


@dataclasses.dataclass(frozen=True)
class BatchPlan:
    """One fixed-size batch: ``members[i]`` (an item index) runs at slot ``slots[i]``."""

    members: tuple[int, ...]
    slots: tuple[int, ...]

    def gather_index(self, batch_size: int) -> Tensor:
        """[batch_size] item indices to gather a padded batch (free slots repeat the first member)."""
        index = torch.full((batch_size,), self.members[0], dtype=torch.long)
        index[list(self.slots)] = torch.tensor(self.members, dtype=torch.long)
        return index


def plan_batches(positions: Sequence[int], batch_size: int) -> list[BatchPlan]:
    """Group items by ``position // batch_size`` (slot ``position % batch_size``); positions must be unique."""
    if len(set(positions)) != len(positions):
        raise ValueError("batch positions must be unique")
    groups: dict[int, list[tuple[int, int]]] = {}
    for item, position in enumerate(positions):
        groups.setdefault(position // batch_size, []).append((item, position % batch_size))
    return [BatchPlan(tuple(i for i, _ in groups[key]), tuple(s for _, s in groups[key])) for key in sorted(groups)]


def scatter_rows(outputs: list[tuple[BatchPlan, Tensor]], count: int) -> Tensor:
    """Reassemble per-batch outputs [batch_size, ...] into item order [count, ...] (on the CPU)."""
    first = outputs[0][1]
    result = torch.empty((count, *first.shape[1:]), dtype=first.dtype)
    for plan, tensor in outputs:
        result[list(plan.members)] = tensor[list(plan.slots)].cpu()
    return result


def vector_array(values: Tensor | np.ndarray, data_type: pa.DataType) -> pa.Array:
    """[n, d] float values → a fixed_size_list<float32>[d] Arrow array of ``data_type``."""
    import numpy as np
    import pyarrow as pa

    array = values.detach().cpu().float().numpy() if isinstance(values, Tensor) else np.asarray(values, np.float32)
    if array.ndim != 2 or array.shape[1] != data_type.list_size:
        raise ValueError(f"expected [n, {data_type.list_size}] values, got {list(array.shape)}")
    return pa.FixedSizeListArray.from_arrays(pa.array(array.reshape(-1), pa.float32()), type=data_type)
