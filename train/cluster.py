"""Which Ray a training run uses, and how loud it is.

:func:`ray_session`: the Ray this process is already connected to; else the ``address`` given
(``--address``); else ``RAY_ADDRESS`` (Ray's own convention, so ``ray.init()`` reads it); else a
local Ray started for the run and stopped after it (no dashboard: it costs seconds on a laptop).
By default the workers' and the controller's output (per-report "Reporting training result"
dumps, DeepSpeed build lines, warnings) stays in Ray's session logs; ``verbose`` forwards it.

A cluster with token authentication (Ray's default from 2.5x on) refuses a client without the
token; Ray then retries for a minute. :func:`ray_session` turns that into one line saying what to
set (``RAY_AUTH_MODE=token`` and ``RAY_AUTH_TOKEN`` / ``RAY_AUTH_TOKEN_PATH``).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator

from avatar4d.errors import UserError

logger = logging.getLogger(__name__)

AUTH_HINT = ("set RAY_AUTH_MODE=token and the cluster's token in RAY_AUTH_TOKEN (or a file named by "
             "RAY_AUTH_TOKEN_PATH; `ray get-auth-token` prints it on the head node)")
AUTH_MARKERS = ("authentication", "unauthenticated", "auth_token", "auth token", "token")


def is_auth_failure(error: BaseException) -> bool:
    """Whether ``ray.init`` failed because the cluster wants a token this client lacks."""
    if type(error).__name__ == "AuthenticationError":
        return True
    text = str(error).lower()
    return any(marker in text for marker in AUTH_MARKERS)


def target_address(address: str | None) -> str | None:
    """``--address``, else ``RAY_ADDRESS``, else None (start a local Ray)."""
    return address or os.environ.get("RAY_ADDRESS") or None


@contextlib.contextmanager
def ray_session(address: str | None, num_cpus: int | None, *, verbose: bool = False) -> Iterator[str]:
    """Connect to (or start) Ray for one run; yields a short description of the cluster."""
    import ray

    if ray.is_initialized():
        yield "the connected Ray"
        return
    target = target_address(address)
    level = logging.INFO if verbose else logging.ERROR
    logging.getLogger("ray").setLevel(level)  # before init: its token-auth notice is logged early
    quiet = {"log_to_driver": verbose, "logging_level": level}
    try:
        if target:
            ray.init(address=target, **quiet)
        else:
            ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, **quiet)
    except Exception as exc:
        if target and is_auth_failure(exc):
            raise UserError(f"Ray at {target} refused this client (token authentication): {AUTH_HINT}") from None
        if target:
            raise UserError(f"cannot connect to Ray at {target}: {str(exc).splitlines()[0] if str(exc) else exc!r}"
                            ) from None
        raise
    try:
        yield f"Ray at {target}" if target else f"a local Ray ({num_cpus} CPUs)"
    finally:
        ray.shutdown()
