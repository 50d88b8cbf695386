"""The driver's progress bar, fed by Ray Train's reports.

:class:`ReportForwarder` is a Ray Train ``UserCallback``; it runs in the Ray Train controller (an
actor) and forwards rank 0's metrics of every ``ray.train.report`` to a ``ray.util.queue.Queue``.
:class:`ProgressBar` (a thread on the driver) reads that queue and draws a tqdm bar with the step,
steps/s, the loss and the ETA. Works with any storage and any cluster: no files are polled.
"""

from __future__ import annotations

import logging
import queue as queue_lib
import threading
from typing import Any

from ray.train.v2.api.callback import UserCallback

logger = logging.getLogger(__name__)


class ReportForwarder(UserCallback):
    """Forwards rank 0's reported metrics to a Ray queue (controller side)."""

    def __init__(self, queue: Any) -> None:
        self.queue = queue

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
        if not metrics:
            return
        try:
            self.queue.put_nowait({**metrics[0], "checkpoint": checkpoint is not None})
        except Exception:  # a full or gone queue must never fail the training run
            logger.debug("progress queue unavailable", exc_info=True)


def make_queue() -> Any:
    """The report queue: a Ray actor that needs no CPU (it must not delay the training workers)."""
    from ray.util.queue import Queue

    return Queue(maxsize=10_000, actor_options={"num_cpus": 0})


class ProgressBar:
    """A tqdm bar of ``total`` steps following the reports in a Ray queue (:meth:`attach`); before the
    first report its description is a start-up status (:meth:`status`). ``enabled=False``: nothing
    is drawn, the last report is still kept (for the summary line)."""

    def __init__(self, *, total: int, description: str, enabled: bool = True) -> None:
        self.total, self.description, self.enabled = total, description, enabled
        self.queue: Any = None
        self.last: dict[str, Any] = {}
        self._status = "starting"
        self._bar: Any = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._follow, name="train-progress", daemon=True)

    def __enter__(self) -> ProgressBar:
        from tqdm import tqdm

        self._bar = tqdm(total=self.total, unit="step", desc=f"{self.description}: {self._status}", dynamic_ncols=True,
                         disable=not self.enabled, bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} "
                                                              "[{elapsed}<{remaining}, {rate_fmt}{postfix}]")
        return self

    def status(self, text: str) -> None:
        """Show ``text`` as the start-up status (until the first report)."""
        logger.info("%s: %s", self.description, text)
        self._status = text
        if self._bar is not None and not self.last:
            self._bar.set_description_str(f"{self.description}: {text}")

    def attach(self, queue: Any) -> None:
        """Follow the reports arriving in ``queue`` (a thread) until :meth:`detach`."""
        self.queue = queue
        self._thread.start()

    def detach(self) -> None:
        """Stop following (call while Ray is still up: the thread reads a Ray queue)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    def _reports(self) -> list[dict[str, Any]]:
        try:
            first = self.queue.get(block=True, timeout=0.5)
        except (queue_lib.Empty, Exception):  # ray.util.queue.Empty subclasses queue.Empty
            return []
        reports = [first]
        try:
            reports += self.queue.get_nowait_batch(self.queue.qsize())
        except Exception:
            pass
        return reports

    def _follow(self) -> None:
        bar = self._bar
        started = False
        try:
            while True:
                for report in self._reports():
                    first = not self.last
                    self.last = report
                    step = int(report.get("step", 0))
                    if first:
                        bar.set_description_str(self.description)
                    if not started:  # rates and ETA count from the first report (start-up excluded)
                        started = True
                        bar.reset(total=self.total)
                        bar.initial = bar.n = bar.last_print_n = step
                    else:
                        bar.update(max(0, step - bar.n))
                    loss = report.get("loss")
                    if isinstance(loss, (int, float)):
                        bar.set_postfix(loss=f"{loss:.4g}", refresh=False)
                    bar.refresh()
                if self._stop.is_set():
                    break
        except Exception:  # Ray going away under the thread must not take the run down
            logger.debug("progress thread stopped", exc_info=True)

    def __exit__(self, *exc: object) -> None:
        self.detach()
        self._bar.close()
