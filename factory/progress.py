"""What a factory run shows while it works: a start-up status line, then one bar per domain.

Both write to stderr through tqdm (a terminal gets one line rewritten in place, a log file one line
per update) and are off with ``--no-progress``; log records are routed around the bars.
"""

from __future__ import annotations

import contextlib
import time
from collections import Counter
from typing import Any

from avatar4d.data.schema import MULTIVIEW, MULTIVIEW_SETS, PAIRS
from factory.chunks import Chunk, ChunkPlan


class StartupStatus:
    """``factory run: starting Ray… (3.1s)``: one status line, rewritten per start-up phase; the
    seconds of every phase are kept in :attr:`phases` (written to ``last-run.json``)."""

    def __init__(self, prefix: str, *, enabled: bool = True) -> None:
        self.prefix, self.enabled = prefix, enabled
        self.phases: dict[str, float] = {}
        self._bar: Any = None
        self._phase: str | None = None
        self._started = self._phase_started = time.perf_counter()

    def __enter__(self) -> StartupStatus:
        if self.enabled:
            from tqdm import tqdm

            self._bar = tqdm(total=0, bar_format="{desc}", leave=False, dynamic_ncols=True)
        return self

    def phase(self, name: str, text: str) -> None:
        """Close the running phase (record its seconds) and show ``text``."""
        self._close_phase()
        self._phase, self._phase_started = name, time.perf_counter()
        if self._bar is not None:
            self._bar.set_description_str(f"{self.prefix}: {text} ({time.perf_counter() - self._started:.1f}s)")

    def _close_phase(self) -> None:
        if self._phase is not None:
            self.phases[self._phase] = round(time.perf_counter() - self._phase_started, 3)
            self._phase = None

    def __exit__(self, *exc: object) -> None:
        self._close_phase()
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self._started


class ProgressBars:
    """One bar per domain (pairs) plus one per multiview set (identities of all domains); bars start
    at what earlier runs already committed. Totals come from the plan's sizes (nothing listed)."""

    def __init__(self, plan: ChunkPlan, done: dict[str, set[str]], *, enabled: bool = True) -> None:
        self.enabled = enabled
        self.totals: Counter[str] = Counter()
        if plan.samples_per_domain:
            for domain in plan.domains:
                self.totals[domain] = plan.samples_per_domain
        if plan.multiview_identities:
            for set_name in MULTIVIEW_SETS:
                self.totals[f"{MULTIVIEW}/{set_name}"] = plan.multiview_identities * len(plan.domains)
        self.initial: Counter[str] = Counter()
        for table, chunk_ids in done.items():
            for chunk_id in chunk_ids:
                try:
                    chunk = plan.chunk(chunk_id)
                except KeyError:  # a domain of an earlier run that this run does not generate
                    continue
                if chunk.table == table:
                    self.initial[self.key(chunk)] += chunk.size
        self.bars: dict[str, Any] = {}
        self._stack = contextlib.ExitStack()

    @staticmethod
    def key(chunk: Chunk) -> str:
        return chunk.domain if chunk.table == PAIRS else f"{MULTIVIEW}/{chunk.set_name}"

    def __enter__(self) -> ProgressBars:
        from tqdm import tqdm
        from tqdm.contrib.logging import logging_redirect_tqdm

        width = max((len(key) for key in self.totals), default=0)
        for position, key in enumerate(self.totals):
            unit = "pair" if "/" not in key else "identity"
            self.bars[key] = tqdm(total=self.totals[key], initial=self.initial[key], desc=key.ljust(width),
                                  unit=unit, position=position, leave=True, dynamic_ncols=True,
                                  disable=not self.enabled)
        if self.enabled:
            self._stack.enter_context(logging_redirect_tqdm())
        return self

    def advance(self, chunks: list[Chunk]) -> None:
        for chunk in chunks:
            self.bars[self.key(chunk)].update(chunk.size)

    def __exit__(self, *exc: object) -> None:
        for bar in self.bars.values():
            bar.close()
        self._stack.close()
