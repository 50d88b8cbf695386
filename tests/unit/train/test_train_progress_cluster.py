"""The progress bar follows Ray Train's reports; which Ray a run joins; DeepSpeed's shm op on CPU."""

from __future__ import annotations

import queue
import time

import pytest

from avatar4d.errors import UserError


class FakeRayQueue:
    """The part of ``ray.util.queue.Queue`` the bar uses."""

    def __init__(self) -> None:
        self.items: queue.Queue = queue.Queue()

    def put_nowait(self, item) -> None:
        self.items.put_nowait(item)

    def get(self, block: bool = True, timeout: float | None = None):
        return self.items.get(block=block, timeout=timeout)

    def qsize(self) -> int:
        return self.items.qsize()

    def get_nowait_batch(self, count: int) -> list:
        return [self.items.get_nowait() for _ in range(count)]


def test_the_bar_moves_with_the_reports_forwarded_from_the_controller():
    """It used to poll a progress.json the workers wrote elsewhere, and stayed at 0/N."""
    from train.progress import ProgressBar, ReportForwarder

    reports = FakeRayQueue()
    forwarder = ReportForwarder(reports)
    with ProgressBar(total=10, description="run", enabled=True) as bar:
        bar.status("starting workers")
        bar.attach(reports)
        for step in (5, 10):
            forwarder.after_report(None, [{"step": step, "loss": 1.0 / step}, {"step": step, "loss": 9.0}], None)
        deadline = time.monotonic() + 5
        while bar.last.get("step") != 10 and time.monotonic() < deadline:
            time.sleep(0.05)
    assert bar.last["step"] == 10 and bar.last["loss"] == 0.1 and bar._bar.n == 10


def test_ray_address_comes_from_the_flag_then_the_environment(monkeypatch):
    from train.cluster import target_address

    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")
    assert target_address(None) == "10.0.0.1:6379"
    assert target_address("auto") == "auto"
    monkeypatch.delenv("RAY_ADDRESS")
    assert target_address(None) is None


def test_a_token_authentication_failure_is_one_line_saying_what_to_set(monkeypatch):
    import ray

    from train import cluster

    class AuthenticationError(Exception):
        pass

    def refuse(**kwargs):
        raise AuthenticationError("Failed to connect: UNAUTHENTICATED: invalid or missing token")

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", refuse)
    with pytest.raises(UserError, match="RAY_AUTH_MODE=token .*RAY_AUTH_TOKEN") as error:
        with cluster.ray_session("10.0.0.1:6379", None):
            pass
    assert "\n" not in str(error.value)
    assert cluster.is_auth_failure(RuntimeError("rpc error: UNAUTHENTICATED"))
    assert not cluster.is_auth_failure(ConnectionError("connection refused"))


def test_deepspeed_s_shm_op_is_not_built_on_cpu(monkeypatch):
    import importlib

    from train.engine import SHM_ENV, skip_cpu_shm_op

    module = importlib.import_module("deepspeed.comm.torch")
    original = module.build_shm_op
    monkeypatch.delenv(SHM_ENV, raising=False)
    try:
        skip_cpu_shm_op()
        assert module.build_shm_op() is None  # no JIT compile, no compiler needed
    finally:
        module.build_shm_op = original
