"""Training data from the factory's Lance datasets: checks made by the driver before any worker
starts (one-line errors), and each rank's endless stream of micro-batches.

Every rank reads its own disjoint share of the rows (:class:`avatar4d.data.reader.LanceShardReader`
with ``drop_remainder``, so all ranks make the same number of steps per epoch) in a per-epoch
shuffled order drawn from the run seed. The driver pins the dataset version it checked, so every
rank (and every restart) reads the same rows even while the factory appends.

The data position is part of a checkpoint: the epoch and the number of micro-batches of it already
consumed. On resume a rank continues in the same epoch's order right after them, so a replayed
step sees the same samples as the first time (with the restored optimiser, EMA and per-step
random seeds, a replay is the same computation). Skipping reads the skipped batches once (the
reader has no random access into its shuffled share); that costs at most one epoch's share.

Tensor columns besides the factory's own (``clip_tokens``, ``dino_tokens``, ``latent`` of the
encoded dataset) are raw little-endian bytes, or fixed-size float lists, with a
:class:`~avatar4d.data.schema.TensorSpec` JSON under the schema metadata key ``avatar4d.<column>``.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from avatar4d.data.schema import SchemaMismatchError, TensorSpec
from avatar4d.errors import UserError

logger = logging.getLogger(__name__)


class DatasetError(UserError):
    """A training dataset is missing, empty, too small or lacks columns."""


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """What the driver learned about a dataset; sent to the workers (small, picklable)."""

    uri: str
    version: int
    num_rows: int
    columns: tuple[str, ...]
    metadata: dict[str, str]

    def tensor_spec(self, column: str) -> TensorSpec:
        """The TensorSpec recorded for ``column`` (``avatar4d.<column>``)."""
        raw = self.metadata.get(f"avatar4d.{column}")
        if raw is None:
            raise SchemaMismatchError(f"{self.uri}: no avatar4d.{column} tensor spec in the schema metadata")
        return TensorSpec.from_json(raw)


def inspect_dataset(uri: str, required: list[str], *, what: str, hint: str) -> DatasetInfo:
    """Open ``uri`` (latest version) and check that it has the ``required`` columns and rows.

    ``what`` names the dataset in errors ("pairs dataset"), ``hint`` says how to make one.
    """
    import lance

    from avatar4d.storage import storage_options

    local = "://" not in uri or uri.startswith("file://")
    if local and not (Path(uri.removeprefix("file://")) / "_versions").is_dir():
        raise DatasetError(f"{what} not found: {uri} ({hint})")
    try:
        dataset = lance.dataset(uri, storage_options=storage_options(uri))  # s3://: see avatar4d.storage
    except (ValueError, OSError) as exc:
        raise DatasetError(f"cannot open the {what} {uri}: {str(exc).splitlines()[0]}") from None
    names = dataset.schema.names
    missing = [column for column in required if column not in names]
    if missing:
        raise SchemaMismatchError(f"{uri} is not a {what}: it lacks the columns {missing} ({hint})")
    rows = dataset.count_rows()
    if rows == 0:
        raise DatasetError(f"the {what} {uri} has no rows ({hint})")
    metadata = {k.decode(): v.decode() for k, v in (dataset.schema.metadata or {}).items()}
    return DatasetInfo(uri=uri, version=dataset.version, num_rows=rows, columns=tuple(names), metadata=metadata)


def check_size(info: DatasetInfo, num_workers: int, micro_batch_size: int, *, what: str) -> None:
    """Every rank needs at least one full micro-batch per epoch."""
    needed = num_workers * micro_batch_size
    if info.num_rows < needed:
        raise DatasetError(f"the {what} {info.uri} has {info.num_rows} rows; {num_workers} workers × micro-batch "
                           f"{micro_batch_size} need at least {needed}")


def decode_tensor_column(values: Any, spec: TensorSpec, column: str) -> Tensor:
    """A batch of raw tensors (list of bytes, or [B, numel] from a fixed-size list) → [B, *spec.shape]."""
    from avatar4d.data.codec import decode_tensors

    if isinstance(values, Tensor):
        if values.ndim != 2 or values.shape[1] != spec.numel:
            raise SchemaMismatchError(f"column {column!r}: values of shape {list(values.shape)} do not fit "
                                      f"the spec {list(spec.shape)}")
        return values.reshape(values.shape[0], *spec.shape)
    if isinstance(values, list):
        return decode_tensors([bytes(v) for v in values], spec)
    raise SchemaMismatchError(f"column {column!r} holds {type(values).__name__}, not raw tensors")


class RankStream:
    """Endless micro-batches of one rank: epoch after epoch of its shuffled share.

    ``epoch`` is the epoch of the batch last yielded and ``position`` how many batches of that epoch
    have been yielded (what a checkpoint records); ``start_position`` skips that many batches of
    ``start_epoch`` first.
    """

    def __init__(self, info: DatasetInfo, columns: list[str], *, rank: int, world_size: int, batch_size: int,
                 seed: int, start_epoch: int = 0, start_position: int = 0, data_workers: int = 0) -> None:
        from avatar4d.data.reader import LanceShardReader

        self.reader = LanceShardReader(info.uri, columns=columns, rank=rank, world_size=world_size,
                                       batch_size=batch_size, shuffle=True, seed=seed, drop_last=True,
                                       drop_remainder=True, version=info.version)
        self.info = info
        self.epoch = start_epoch
        self.position = 0
        self.start_position = start_position
        self.data_workers = data_workers

    def _loader(self) -> Any:
        from torch.utils.data import DataLoader

        if self.data_workers == 0:
            return DataLoader(self.reader, batch_size=None)
        # Lance is not fork-safe: spawn the loader processes
        return DataLoader(self.reader, batch_size=None, num_workers=self.data_workers,
                          multiprocessing_context="spawn", persistent_workers=False)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        epoch, skip = self.epoch, self.start_position
        while True:
            self.reader.set_epoch(epoch)
            self.epoch = epoch
            produced = 0
            for batch in self._loader():
                produced += 1
                if produced <= skip:
                    continue
                self.position = produced
                yield batch
            skip = 0
            if produced == 0:
                raise DatasetError(f"rank {self.reader.rank}: epoch {epoch} of {self.info.uri} gave no full "
                                   f"micro-batch of {self.reader.batch_size}")
            epoch += 1


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """Tensors of ``batch`` moved to ``device`` (other values unchanged)."""
    return {k: v.to(device, non_blocking=True) if isinstance(v, Tensor) else v for k, v in batch.items()}
