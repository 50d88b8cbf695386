"""The Ray a factory command runs on: a local one it starts, or a cluster it connects to.

``--address`` (or, without it, ``RAY_ADDRESS``, as every Ray tool reads it) names a cluster;
neither means a fresh local Ray for this run (``ray.init(address="local")``), stopped at the end.
Every failure of ``ray.init`` is a user-facing one-line :class:`UserError` that says what to do
(the address, resources, token authentication), never a traceback or a library source path.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import sys
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path

from avatar4d.errors import UserError

logger = logging.getLogger(__name__)

AUTH_FAILURE_MARKERS = ("unauthenticated", "invalidauthtoken", "authentication token")
TOKEN_HINT = ("the cluster uses token authentication: set RAY_AUTH_MODE=token and give its token "
              "(RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token, as on the head node)")


def resolve_address(address: str | None) -> str | None:
    """``address`` as given, else ``RAY_ADDRESS`` (empty means unset), else None (a local Ray)."""
    if address:
        return address
    from_env = os.environ.get("RAY_ADDRESS", "").strip()
    return from_env or None


def check_reachable(address: str, timeout_s: float = 10.0) -> None:
    """Fail fast on a HOST:PORT (or ray://HOST:PORT) nothing listens on (Ray itself retries for minutes)."""
    target = address.split("://", 1)[-1]
    host, _, port = target.rpartition(":")
    if address == "auto" or not port.isdigit():
        return
    try:
        with socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout_s):
            pass
    except OSError as error:
        raise UserError(f"cannot reach a Ray cluster at {address}: {error.strerror or error}") from None


def _token_available() -> bool:
    if os.environ.get("RAY_AUTH_TOKEN"):
        return True
    path = os.environ.get("RAY_AUTH_TOKEN_PATH")
    return Path(path).expanduser().is_file() if path else (Path.home() / ".ray" / "auth_token").is_file()


def _reason(error: BaseException) -> str:
    """The message line of a start-up error: not a traceback line, no source paths."""
    from factory.sink import clean_error

    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    kept = [line for line in lines if not line.startswith(("File ", "Traceback", "^")) and "site-packages" not in line]
    return clean_error(kept[0] if kept else type(error).__name__).rstrip(" ,;:")


def init_failure(error: BaseException, address: str | None, native_output: str = "") -> UserError:
    """The one-line error (with the fix) for an exception of ``ray.init``; ``native_output`` is
    what Ray's C++ core printed meanwhile (its auth failures show only there)."""
    text = _reason(error)
    lowered = f"{error} {native_output}".lower()
    if address is None:
        hint = ("the machine may be overloaded or short of memory: retry, give fewer CPUs (--num-cpus), or run on a "
                "cluster (--address)")
        return UserError(f"cannot start a local Ray: {text}; {hint}")
    if any(marker in lowered for marker in AUTH_FAILURE_MARKERS) or isinstance(error, _auth_error_types()):
        return UserError(f"cannot connect to Ray at {address}: {text}; {TOKEN_HINT}")
    return UserError(f"cannot connect to Ray at {address}: {text}; check the address (`ray status` on the head "
                     "node prints it) and that this machine runs the cluster's Ray and Python versions")


def _check_auth_settings(address: str) -> None:
    """A token-auth cluster (Ray's default) with no token here: say so at once instead of letting
    Ray retry for a minute and fail with an unrelated message."""
    mode = os.environ.get("RAY_AUTH_MODE", "").lower()
    if address == "auto" or mode == "disabled":
        return
    if mode == "token" and not _token_available():
        raise UserError(f"cannot connect to Ray at {address}: RAY_AUTH_MODE=token is set but no token is "
                        "available; set RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH (the head node's ~/.ray/auth_token)")


def _auth_error_types() -> tuple[type[BaseException], ...]:
    try:
        from ray.exceptions import AuthenticationError
    except ImportError:  # pragma: no cover - older Ray
        return ()
    return (AuthenticationError,)


def _quiet_local_auth_notice() -> None:
    """Ray warns on every local start that it enabled token authentication for it: a note for
    ``-v`` (INFO) users, not a warning for a cluster that lives and dies with this command."""
    if logging.getLogger().getEffectiveLevel() > logging.INFO:
        logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)


class _NativeOutput:
    """Holds what was written to file descriptor 2 inside :func:`_capture_native_stderr`."""

    text: str = ""


@contextlib.contextmanager
def _capture_native_stderr() -> Iterator[_NativeOutput]:
    """Redirect fd 2 (where Ray's C++ core logs, e.g. one auth warning per second while it retries)
    to a temporary file; the captured lines go to this module's debug log afterwards."""
    captured = _NativeOutput()
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield captured
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            captured.text = sink.read().decode(errors="replace")
    for line in captured.text.splitlines()[:20]:
        logger.debug("ray: %s", line)


@contextlib.contextmanager
def ray_session(address: str | None, num_cpus: int, state: Path) -> Iterator[str]:
    """Start a local Ray (address None) or connect to one; shut down only what was started here.
    Yields the GCS address."""
    import ray

    if ray.is_initialized():
        raise UserError("Ray is already initialised in this process; run the factory in a fresh process")
    if address is not None:
        check_reachable(address)
        _check_auth_settings(address)
    native = _NativeOutput()
    try:
        with warnings.catch_warnings():
            # Ray forks only to exec its processes: safe after this process used Lance
            warnings.filterwarnings("ignore", message="lance is not fork-safe")
            if address is None:  # (no capture: the Ray processes started here inherit fd 2)
                _quiet_local_auth_notice()
                context = ray.init(address="local", num_cpus=num_cpus, include_dashboard=False,
                                   log_to_driver=False, logging_level=logging.WARNING)
            else:
                with _capture_native_stderr() as native:
                    context = ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)
    except Exception as error:  # noqa: BLE001 - every start-up failure is the user's to fix: one line
        with contextlib.suppress(Exception):
            ray.shutdown()
        raise init_failure(error, address, native.text) from None
    try:
        yield str(getattr(context, "address_info", {}).get("gcs_address") or address or "local")
    finally:
        ray.shutdown()  # for a cluster we connected to this only disconnects the driver
        if address is None:
            (state / "ray-local.json").unlink(missing_ok=True)
