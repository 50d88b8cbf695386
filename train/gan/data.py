"""One domain's rows of ``<data>/stylized.lance`` as endless shuffled micro-batches per rank.

:class:`train.data.RankStream` reads a whole dataset; the fine-tune reads one domain of it. The
domain's row positions come from one scan of the small ``domain`` column; each epoch shuffles
them (seeded by run seed and epoch, the same permutation on every rank), every rank takes an equal
strided share and reads its micro-batches by position (``take``), decoded by
:func:`avatar4d.data.reader.decode_batch` (PNG → uint8 [B, 3, H, W], vectors → float tensors).
``epoch`` / ``position`` say where the stream is (what a checkpoint records), as RankStream's do.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from train.data import DatasetError, DatasetInfo


def domain_positions(info: DatasetInfo, domain: str) -> np.ndarray:
    """Row positions (in the pinned version) of ``domain``'s rows, ascending."""
    import lance
    import pyarrow.compute as pc

    dataset = lance.dataset(info.uri, version=info.version)
    column = dataset.to_table(columns=["domain"]).column("domain")
    return np.flatnonzero(pc.equal(column, domain).to_numpy(zero_copy_only=False)).astype(np.int64)


class DomainStream:
    """Endless micro-batches of one domain's rows for one rank (see the module docstring)."""

    def __init__(self, info: DatasetInfo, domain: str, columns: list[str], *, rank: int, world_size: int,
                 batch_size: int, seed: int, start_epoch: int = 0, start_position: int = 0) -> None:
        self.info, self.domain, self.columns = info, domain, list(columns)
        self.rank, self.world_size, self.batch_size, self.seed = rank, world_size, batch_size, seed
        self.positions = domain_positions(info, domain)
        self.batches_per_epoch = len(self.positions) // world_size // batch_size
        if self.batches_per_epoch == 0:
            raise DatasetError(f"domain {domain!r} has {len(self.positions)} rows in {info.uri}; {world_size} "
                               f"workers × micro-batch {batch_size} need at least {world_size * batch_size}")
        self.epoch, self.position, self.start_position = start_epoch, 0, start_position

    def epoch_rows(self, epoch: int) -> np.ndarray:
        """This rank's row positions of ``epoch``, in reading order."""
        order = np.random.default_rng([self.seed, epoch]).permutation(self.positions)
        share = order[self.rank::self.world_size]
        return share[: self.batches_per_epoch * self.batch_size]

    def __iter__(self) -> Iterator[dict[str, Any]]:
        import lance

        from avatar4d.data.reader import decode_batch

        dataset = lance.dataset(self.info.uri, version=self.info.version)
        epoch, skip = self.epoch, self.start_position
        while True:
            self.epoch = epoch
            rows = self.epoch_rows(epoch)
            for index in range(skip, self.batches_per_epoch):
                wanted = rows[index * self.batch_size:(index + 1) * self.batch_size]
                table = dataset.take(wanted.tolist(), columns=self.columns)
                self.position = index + 1
                yield decode_batch(table.combine_chunks().to_batches()[0], dataset.schema)
            skip = 0
            epoch += 1
