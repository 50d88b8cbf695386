"""Ray start-up failures are one line with the fix; RAY_ADDRESS is honoured; the status line
records the seconds of each start-up phase."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from avatar4d.errors import UserError
from factory.ray_session import init_failure, ray_session, resolve_address


def test_ray_address_is_used_when_no_address_is_given(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert resolve_address(None) is None
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.5:6379")
    assert resolve_address(None) == "10.0.0.5:6379"
    assert resolve_address("auto") == "auto"
    monkeypatch.setenv("RAY_ADDRESS", " ")
    assert resolve_address(None) is None


def test_a_local_start_up_timeout_is_one_line_with_the_fix(monkeypatch, tmp_path: Path):
    import ray

    def timed_out(**_: object) -> None:
        raise Exception("The current node timed out during startup. This could happen because some of the Ray "
                        "processes failed to startup.\n  File \"/venv/lib/python3.11/site-packages/ray/_private/"
                        "node.py\", line 400")

    monkeypatch.setattr(ray, "init", timed_out)
    with pytest.raises(UserError) as error:
        with ray_session(None, 2, tmp_path):
            pass
    message = str(error.value)
    assert message.startswith("cannot start a local Ray") and "\n" not in message
    assert "--num-cpus" in message and "--address" in message and "site-packages" not in message


def test_token_auth_failures_say_what_to_set():
    native = "gcs_client.cc:210: Failed to get cluster ID from GCS server: Unauthenticated: RPC error: InvalidAuthToken"
    error = init_failure(ConnectionError("Failed to connect to Ray cluster at 10.0.0.5:6379"), "10.0.0.5:6379", native)
    assert "RAY_AUTH_MODE=token" in str(error) and "\n" not in str(error)
    plain = init_failure(ConnectionError("Failed to connect to Ray cluster at 10.0.0.5:6379"), "10.0.0.5:6379")
    assert "RAY_AUTH_MODE" not in str(plain) and "ray status" in str(plain)


def test_startup_status_records_each_phase(capsys):
    from factory.progress import StartupStatus

    with StartupStatus("factory run", enabled=True) as status:
        status.phase("ray", "starting Ray")
        time.sleep(0.05)
        status.phase("workers", "starting 3 workers")
    assert set(status.phases) == {"ray", "workers"} and status.phases["ray"] >= 0.05
    assert "factory run: starting Ray" in capsys.readouterr().err
