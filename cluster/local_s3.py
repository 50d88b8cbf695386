"""A real S3-compatible server on this machine (moto in server mode), for tests, benchmarks and
trying the factory and trainers on object storage without a cloud account.

    with LocalS3Server(buckets=["avatar4d"]) as s3:
        os.environ.update(s3.env())          # AWS_ENDPOINT_URL, keys, region: what every library reads
        run_factory(config.replace(out="s3://avatar4d/data"))

or from a shell (blocks until Ctrl-C, then stops the server it started):

    python -m cluster.local_s3 --bucket avatar4d     # prints the environment to export

The server listens on 127.0.0.1 on a free port, runs in its own process group, and is stopped by
its own process id (SIGTERM, then SIGKILL). moto is a development dependency (``pip install
".[dev]"``); it keeps objects in memory, so a stopped server loses them.
"""

from __future__ import annotations

import argparse
import logging
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from cluster.local import free_port, serve_until_interrupted

logger = logging.getLogger(__name__)

REGION = "us-east-1"


@dataclass
class LocalS3Server:
    """``moto_server`` on 127.0.0.1 with the given buckets and a random key pair."""

    buckets: list[str] = field(default_factory=lambda: ["avatar4d"])
    start_timeout_s: float = 60.0
    log_path: Path | None = None
    port: int = 0
    access_key: str = field(default_factory=lambda: "AKIA" + secrets.token_hex(8).upper())
    secret_key: str = field(default_factory=lambda: secrets.token_urlsafe(30))
    process: subprocess.Popen | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        """The standard AWS variables that point boto3, pyarrow and Lance at this server."""
        return {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": self.access_key,
                "AWS_SECRET_ACCESS_KEY": self.secret_key, "AWS_REGION": REGION, "AWS_DEFAULT_REGION": REGION,
                "AWS_EC2_METADATA_DISABLED": "true"}

    def start(self) -> LocalS3Server:
        self.port = self.port or free_port()
        executable = Path(sys.executable).with_name("moto_server")
        command = [str(executable)] if executable.exists() else [sys.executable, "-m", "moto.server"]
        log = open(self.log_path, "wb") if self.log_path else subprocess.DEVNULL  # noqa: SIM115 - closed below
        try:
            self.process = subprocess.Popen([*command, "-H", "127.0.0.1", "-p", str(self.port)], stdout=log,
                                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                            start_new_session=True)
        finally:
            if log is not subprocess.DEVNULL:
                log.close()
        try:
            self._wait_ready()
            for bucket in self.buckets:
                self.create_bucket(bucket)
        except BaseException:
            self.stop()
            raise
        logger.info("S3 server (moto) at %s, buckets %s", self.endpoint, self.buckets)
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            if self.process is None or self.process.poll() is not None:
                raise RuntimeError(f"moto_server exited (rc={self.process.returncode if self.process else None})"
                                   + (f"; see {self.log_path}" if self.log_path else ""))
            try:
                with urllib.request.urlopen(f"{self.endpoint}/moto-api/", timeout=2):
                    return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(0.1)
        raise TimeoutError(f"moto_server did not answer on {self.endpoint} within {self.start_timeout_s:.0f}s")

    def client(self):  # -> boto3 S3 client (moto depends on boto3)
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=self.access_key,
                            aws_secret_access_key=self.secret_key, region_name=REGION)

    def create_bucket(self, name: str) -> None:
        self.client().create_bucket(Bucket=name)

    def keys(self, bucket: str, prefix: str = "") -> dict[str, int]:
        """Every object key under ``prefix`` → its size in bytes."""
        found, paginator = {}, self.client().get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
            found.update({item["Key"]: item["Size"] for item in page.get("Contents", [])})
        return found

    def stop(self, grace_s: float = 5.0) -> None:
        """Stop the server this object started (its process id; SIGKILL after ``grace_s``)."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=grace_s)

    def __enter__(self) -> LocalS3Server:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Start a local S3-compatible server (moto) on 127.0.0.1; "
                                                 "Ctrl-C stops it and its objects are gone.")
    parser.add_argument("--bucket", action="append", default=None, help="bucket to create (repeatable; "
                                                                        "default: avatar4d)")
    parser.add_argument("--port", type=int, default=0, help="port (default: a free one)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    with LocalS3Server(buckets=args.bucket or ["avatar4d"], port=args.port) as server:
        exports = "\n".join(f"export {key}={value}" for key, value in server.env().items())
        serve_until_interrupted(f"S3 server at {server.endpoint}; in another shell:\n{exports}\n"
                                f"  avatar4d factory run --out s3://{server.buckets[0]}/data\n")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")
    sys.exit(main())
