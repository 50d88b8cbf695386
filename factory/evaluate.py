"""``avatar4d eval`` on a Ray cluster: the cases spread over evaluation workers by the one chunk
scheduler (:class:`factory.scheduler.ChunkScheduler`), one worker per GPU (or per CPU on a CPU-only
cluster).

Each worker loads every pipeline under test and the metric networks once, then evaluates one
(model, case) chunk at a time and returns that case's result and FID moments; the driver merges
them per model exactly as an in-process run does (:func:`avatar4d.evaluation.runner.model_result`),
so the report is the same whichever way it was computed. A worker that dies is restarted by Ray and
its chunk re-queued (the scheduler's policy). The core reaches this module through the
``avatar4d.evaluation`` entry point, never by import.
"""

from __future__ import annotations

import dataclasses
import logging
import tempfile
from pathlib import Path
from typing import Any

from avatar4d.evaluation.clips import ReenactmentCase
from avatar4d.evaluation.protocol import PartialResult
from avatar4d.evaluation.runner import EvalConfig, model_result

logger = logging.getLogger(__name__)

EVAL_KEY = "eval"
MAX_CPU_WORKERS = 8


@dataclasses.dataclass(frozen=True)
class EvalChunk:
    """Model ``model`` on case ``case``; ``data``: the case's object ref (fetched by the worker, so
    no actor holds constructor arguments in the object store across restarts)."""

    model: int
    case: int
    sample: bool
    data: Any = None

    @property
    def chunk_id(self) -> str:
        return f"eval/{self.model}/{self.case}"


class EvalWorker:
    """Holds the pipelines and the metric suite; evaluates one (model, case) chunk per call."""

    def __init__(self, named: list[tuple[str, str]], config: dict[str, Any], threads: int) -> None:
        import torch

        from avatar4d.evaluation.makers import PipelineMaker
        from avatar4d.metrics.suite import MetricSuite

        torch.set_num_threads(threads)
        self.config = EvalConfig.from_dict(config)
        device = self.config.device if torch.cuda.is_available() else "cpu"
        self.makers = [PipelineMaker.load(path, name=name, device=device, seed=self.config.seed)
                       for name, path in named]
        self.suite = MetricSuite(self.config.metrics, device=device)
        self.device = device

    def describe(self) -> dict[str, Any]:
        import ray

        return {"device": self.device, "node": ray.get_runtime_context().get_node_id(),
                "models": [m.name for m in self.makers]}

    def ping(self) -> bool:
        return True

    def run(self, chunk: EvalChunk) -> PartialResult:
        import ray

        from avatar4d.evaluation.protocol import evaluate_cases

        case = ray.get(chunk.data)
        self.suite.reset()  # this chunk's FID moments only; the driver adds them up
        return evaluate_cases(self.makers[chunk.model], [case], self.suite, samples_per_task=1 if chunk.sample else 0)


def plan_chunks(models: int, cases: list[ReenactmentCase], samples_per_task: int,
                refs: list[Any] | None = None) -> list[EvalChunk]:
    """Every (model, case) pair; the first ``samples_per_task`` cases of each task get sample sheets."""
    sampled: set[int] = set()
    for task in ("self", "cross"):
        sampled.update([i for i, case in enumerate(cases) if case.task == task][:samples_per_task])
    return [EvalChunk(m, c, c in sampled, refs[c] if refs else None) for m in range(models) for c in range(len(cases))]


def run_distributed(address: str, named: list[tuple[str, str]], cases: list[ReenactmentCase], config: EvalConfig,
                    *, progress: bool = True) -> list:
    """The models' results computed by Ray workers (``address`` "local" starts a Ray here)."""
    import ray
    from tqdm import tqdm

    from factory.ray_session import ray_session
    from factory.scheduler import ChunkScheduler, WorkerSlot
    from factory.workers import wait_for_workers

    parts: dict[tuple[int, int], PartialResult] = {}
    with tempfile.TemporaryDirectory(prefix="avatar4d-eval-") as state, \
            ray_session(None if address == "local" else address, 2, Path(state)), \
            tqdm(total=len(named) * len(cases), desc="evaluating", unit="case", disable=not progress) as bar:
        gpus = int(ray.cluster_resources().get("GPU", 0))
        use_gpus = gpus > 0 and config.device.startswith("cuda")
        count = gpus if use_gpus else max(1, min(int(ray.cluster_resources().get("CPU", 1)), MAX_CPU_WORKERS))
        count = min(count, len(named) * len(cases))
        worker = ray.remote(EvalWorker)
        chunks = plan_chunks(len(named), cases, config.samples_per_task, [ray.put(case) for case in cases])
        slots = [WorkerSlot(f"eval/{i}", EVAL_KEY, worker.options(
            name=f"avatar4d-eval-{i}", max_restarts=-1, max_task_retries=0, num_cpus=1,
            num_gpus=1 if use_gpus else 0).remote(named, config.to_dict(), 1)) for i in range(count)]
        described = wait_for_workers(slots)  # a worker whose constructor raised: one line
        logger.info("evaluation workers: %s", described)

        def finished(done: list[tuple[EvalChunk, PartialResult]]) -> None:
            for chunk, part in done:
                parts[(chunk.model, chunk.case)] = part
            bar.update(len(done))

        ChunkScheduler(slots, {EVAL_KEY: iter(chunks)}, on_finished=finished, max_in_flight=2, max_attempts=3,
                       chunk_id=lambda chunk: chunk.chunk_id).run()
    return [model_result(name, [parts[(m, c)] for c in range(len(cases))], config)
            for m, (name, _) in enumerate(named)]
