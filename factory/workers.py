"""Starting the factory's Ray actors and waiting until they are up (shared by ``factory run`` and
``factory encode``)."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

import ray
from ray.exceptions import RayActorError

from avatar4d.errors import UserError
from factory.scheduler import WorkerSlot, is_permanent_failure, last_line

if TYPE_CHECKING:  # pragma: no cover
    from factory.recipes import FactoryConfig

logger = logging.getLogger(__name__)


def actor_resources(num_cpus: float, num_gpus: float) -> tuple[dict[str, float], bool]:
    """Ray ``.options`` resources of one stage actor, and whether it gets GPUs: ``num_gpus`` only
    where the cluster has GPUs (a CPU-only cluster runs the same config on CPUs)."""
    use_gpus = num_gpus > 0 and ray.cluster_resources().get("GPU", 0) > 0
    return {"num_cpus": num_cpus, "num_gpus": num_gpus if use_gpus else 0}, use_gpus


def start_workers(worker: type, config: FactoryConfig, domains: list[Any], actor_nodes: dict[str, str]
                  ) -> tuple[list[WorkerSlot], dict[str, Any], dict[str, str | None]]:
    """Create ``actors_per_domain`` actors of class ``worker`` per domain (spread over the nodes),
    wait until every one loaded its stages, check that they agree on the schemas and, per domain,
    on the generator. Returns the slots, the schema of each table and each domain's generator
    sha256; fills ``actor_nodes`` (actor name → node id)."""
    resources, use_gpus = actor_resources(config.num_cpus_per_actor, config.num_gpus_per_actor)
    cache = config.generator_cache or config.default_generator_cache
    worker_class = ray.remote(worker)
    slots = []
    for domain in domains:
        for index in range(config.actors_per_domain):
            name = f"factory/{domain.name}/{index}"  # ray.get_actor(name) in this driver's namespace
            handle = worker_class.options(name=name, max_restarts=-1, max_task_retries=0, scheduling_strategy="SPREAD",
                                          **resources).remote(domain, config, cache)
            slots.append(WorkerSlot(name, domain.name, handle))
    described = wait_for_workers(slots)
    from avatar4d.data.schema import check_compatible

    schemas: dict[str, Any] = {}
    generators: dict[str, str | None] = {}
    for slot, info in zip(slots, described):
        actor_nodes[slot.name] = info["node_id"]
        sha = info.get("generator_sha256")
        if slot.domain in generators and generators[slot.domain] != sha:
            raise UserError(f"the workers of domain {slot.domain} loaded different generators "
                            f"({generators[slot.domain]} and {sha}): the checkpoints differ between nodes")
        generators[slot.domain] = sha
        for table, schema in info["schemas"].items():
            if table in schemas:  # e.g. a fine-tuned checkpoint of another size than the others
                try:
                    check_compatible(schemas[table], schema)
                except UserError as error:
                    raise UserError(f"worker {slot.name} writes another {table} layout: {error}") from None
            schemas.setdefault(table, schema)
    logger.info("%d workers up (%s)", len(slots), "GPU" if use_gpus else "CPU")
    return slots, schemas, generators


def wait_for_workers(slots: list[WorkerSlot], report_every_s: float = 30.0,
                     retry_s: float = 0.5) -> list[dict[str, Any]]:
    """``describe()`` of every worker; says so while some cannot be placed (a full cluster waits).
    A worker that dies while starting is asked again once Ray restarted it; one whose constructor
    raised is a one-line ``UserError``."""
    refs = {index: slot.handle.describe.remote() for index, slot in enumerate(slots)}
    results: dict[int, dict[str, Any]] = {}
    last_report = time.monotonic()
    while refs:
        ready, _ = ray.wait(list(refs.values()), num_returns=1, timeout=report_every_s)
        for index, ref in [(i, r) for i, r in refs.items() if r in ready]:
            try:
                results[index] = ray.get(ref)
                del refs[index]
            except RayActorError as error:
                if is_permanent_failure(error):
                    raise UserError(f"factory worker {slots[index].name} could not start: {last_line(error)}") from None
                logger.warning("factory worker %s died while starting; waiting for its restart", slots[index].name)
                time.sleep(retry_s)
                refs[index] = slots[index].handle.describe.remote()
        if refs and time.monotonic() - last_report >= report_every_s:
            last_report = time.monotonic()
            logger.warning("%d of %d factory workers are not up yet (cluster resources free: %s)", len(refs),
                           len(slots), ray.available_resources())
    return [results[index] for index in range(len(slots))]
