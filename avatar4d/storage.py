"""Where datasets, checkpoints and run state live: a local folder or an object-store URI.

Object storage is S3 and S3-compatible servers (MinIO, Ceph RGW, …): ``s3://bucket/prefix``.
Credentials, region and endpoint come from the standard AWS environment variables, read the same
way by every library that touches the data (Lance's Rust ``object_store``, pyarrow's S3
filesystem under Ray Train, boto3):

==============================  ===========================================================
``AWS_ACCESS_KEY_ID``            access key (or an instance/pod role: IRSA, instance profile)
``AWS_SECRET_ACCESS_KEY``        secret key — never written to logs, errors or run records
``AWS_SESSION_TOKEN``            temporary credentials
``AWS_REGION`` / ``AWS_DEFAULT_REGION``  the bucket's region
``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL``  an S3-compatible server (``http://`` allowed)
==============================  ===========================================================

:func:`storage_options` gives Lance the endpoint and region (and ``allow_http`` for an
``http://`` endpoint, which ``object_store`` otherwise refuses); it never copies the keys: each
process reads them from its own environment, so they are not pickled into Ray tasks or written
to run records. :func:`redact` removes them from any text (the CLI installs
:class:`RedactingFilter` on its log handlers).

File helpers (:func:`exists`, :func:`read_text`, :func:`write_text`, :func:`read_bytes`,
:func:`write_bytes`, :func:`list_files`, :func:`delete`, :func:`upload_dir`, :func:`download_dir`) go
through ``pyarrow.fs`` — the filesystem layer Ray Train itself uses for ``storage_path`` — so local
folders and buckets share one code path. pyarrow is imported inside the functions: the core stays
importable with torch and numpy only.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any

from avatar4d.errors import UserError

SUPPORTED_SCHEMES = ("s3",)
SECRET_ENV_VARS = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ACCESS_KEY_ID")
REDACTED = "***"

__all__ = ["RedactingFilter", "cache_root", "check_uri", "delete", "download_dir", "endpoint_url", "exists",
           "filesystem", "is_remote", "join", "list_files", "local_copy", "local_copy_path", "parent", "read_bytes",
           "read_text", "redact", "storage_options", "tree_bytes", "upload_dir", "write_bytes", "write_text"]


def is_remote(uri: str | Path) -> bool:
    """True for an object-store URI (``scheme://…`` other than ``file://``)."""
    text = str(uri)
    return "://" in text and not text.startswith("file://")


def check_uri(uri: str | Path, what: str = "path") -> str:
    """``uri`` unchanged when it is a local path or a supported object-store URI; otherwise a
    one-line :class:`UserError` (an unknown scheme, no bucket, or keys written into the URI)."""
    text = str(uri)
    if not is_remote(text):
        return text
    scheme, _, rest = text.partition("://")
    if scheme not in SUPPORTED_SCHEMES:
        raise UserError(f"{what} {redact(text)}: {scheme}:// is not supported; use a local folder or "
                        f"{' / '.join(s + '://bucket/prefix' for s in SUPPORTED_SCHEMES)}")
    bucket = rest.split("/", 1)[0]
    if "@" in rest and ":" in rest.split("@", 1)[0]:  # s3://KEY:SECRET@bucket (the secret may hold '/')
        raise UserError(f"{what} {redact(text)}: do not put credentials in the URI; set AWS_ACCESS_KEY_ID and "
                        "AWS_SECRET_ACCESS_KEY in the environment")
    if not bucket:
        raise UserError(f"{what} {text}: no bucket (expected s3://bucket/prefix)")
    return text.rstrip("/")


def join(base: str | Path, *parts: str) -> str:
    """``base/part/…`` for a local path or a URI (``pathlib`` would fold ``s3://`` into ``s3:/``)."""
    text = str(base)
    if not is_remote(text):
        return str(Path(text, *parts))
    return "/".join([text.rstrip("/"), *(part.strip("/") for part in parts)])


def parent(uri: str | Path) -> str:
    """The folder holding ``uri``."""
    text = str(uri).rstrip("/")
    if not is_remote(text):
        return str(Path(text.removeprefix("file://")).parent)
    head, _, _ = text.rpartition("/")
    return head if "://" in head and not head.endswith(":/") else text


def endpoint_url() -> str | None:
    """The S3 endpoint from the environment (service-specific variable first, as the AWS SDKs do)."""
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


def _region() -> str | None:
    return os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or None


def storage_options(uri: str | Path) -> dict[str, str] | None:
    """Lance ``storage_options`` for ``uri``: None for a local path; endpoint, region and
    ``allow_http`` for S3 (never the keys: Lance reads them from the environment)."""
    if not is_remote(uri):
        return None
    options: dict[str, str] = {}
    endpoint = endpoint_url()
    if endpoint:
        options["aws_endpoint"] = endpoint
        if endpoint.startswith("http://"):
            options["allow_http"] = "true"
    region = _region()
    if region:
        options["aws_region"] = region
    return options


def filesystem(uri: str | Path) -> tuple[Any, str]:
    """``(pyarrow.fs.FileSystem, path inside it)`` for ``uri``: the local filesystem, or S3 with the
    environment's endpoint and region (pyarrow reads the keys from the environment itself)."""
    import pyarrow.fs as pafs

    text = str(uri)
    if not is_remote(text):
        return pafs.LocalFileSystem(), str(Path(text.removeprefix("file://")).expanduser().absolute())
    check_uri(text)
    kwargs: dict[str, Any] = {}
    endpoint = endpoint_url()
    if endpoint:
        kwargs["endpoint_override"] = endpoint
        kwargs["scheme"] = "http" if endpoint.startswith("http://") else "https"
    region = _region()
    if region:
        kwargs["region"] = region
    return pafs.S3FileSystem(**kwargs), text.split("://", 1)[1].rstrip("/")


def exists(uri: str | Path) -> bool:
    """Whether a file, a folder or (on S3) any object under the prefix exists."""
    import pyarrow.fs as pafs

    fs, path = filesystem(uri)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def read_text(uri: str | Path) -> str | None:
    """The UTF-8 text of a file, or None when it does not exist."""
    data = read_bytes(uri)
    return None if data is None else data.decode("utf-8")


def write_text(uri: str | Path, text: str) -> None:
    """Write a small text file whole (:func:`write_bytes`)."""
    write_bytes(uri, text.encode("utf-8"))


def read_bytes(uri: str | Path) -> bytes | None:
    """The bytes of a (small) file, or None when it does not exist (a local file is read without
    pyarrow, so the core's local paths need torch and numpy only)."""
    if not is_remote(uri):
        path = Path(str(uri).removeprefix("file://")).expanduser()
        return path.read_bytes() if path.is_file() else None
    import pyarrow.fs as pafs

    fs, path = filesystem(uri)
    if fs.get_file_info(path).type != pafs.FileType.File:
        return None
    with fs.open_input_stream(path) as stream:
        return stream.read()


def write_bytes(uri: str | Path, data: bytes) -> None:
    """Write a small file whole: locally through a temporary file and a rename, on S3 as one PUT
    (readers see the old or the new object, never a part)."""
    if not is_remote(uri):
        path = Path(str(uri).removeprefix("file://"))
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        temporary.write_bytes(data)
        os.replace(temporary, path)
        return
    fs, path = filesystem(uri)
    with fs.open_output_stream(path) as stream:
        stream.write(data)


def list_files(uri: str | Path) -> dict[str, tuple[int, float]]:
    """Every file under ``uri``, recursively: path relative to ``uri`` → (bytes, mtime seconds);
    empty when nothing is there."""
    import pyarrow.fs as pafs

    fs, path = filesystem(uri)
    if fs.get_file_info(path).type == pafs.FileType.NotFound:
        return {}
    found = {}
    for info in fs.get_file_info(pafs.FileSelector(path, recursive=True, allow_not_found=True)):
        if info.type == pafs.FileType.File:
            mtime = info.mtime.timestamp() if info.mtime is not None else 0.0
            found[info.path[len(path):].lstrip("/")] = (int(info.size or 0), mtime)
    return found


def tree_bytes(uri: str | Path) -> int:
    """Bytes of every file under ``uri``."""
    return sum(size for size, _ in list_files(uri).values())


def delete(uri: str | Path) -> int:
    """Delete a file or everything under a folder/prefix; 1 if something was deleted."""
    import pyarrow.fs as pafs

    fs, path = filesystem(uri)
    kind = fs.get_file_info(path).type
    if kind == pafs.FileType.File:
        fs.delete_file(path)
        return 1
    if kind == pafs.FileType.Directory:
        fs.delete_dir(path)
        return 1
    return 0


def upload_dir(local: str | Path, uri: str, *, last: str | None = None) -> None:
    """Copy the files of a local folder to ``uri``; ``last`` (a file name) goes up after all others
    so a reader that waits for it never sees a partial folder."""
    files = sorted(p for p in Path(local).rglob("*") if p.is_file())
    files.sort(key=lambda p: p.name == last)
    fs, root = filesystem(uri)
    for file in files:
        target = f"{root}/{file.relative_to(local).as_posix()}"
        if not is_remote(uri):
            Path(target).parent.mkdir(parents=True, exist_ok=True)
        with fs.open_output_stream(target) as stream:
            stream.write(file.read_bytes())


def download_dir(uri: str, local: str | Path) -> None:
    """Copy every file under ``uri`` into the local folder ``local``."""
    fs, root = filesystem(uri)
    for relative in list_files(uri):
        target = Path(local, relative)
        target.parent.mkdir(parents=True, exist_ok=True)
        with fs.open_input_stream(f"{root}/{relative}") as stream:
            target.write_bytes(stream.read())


def cache_root() -> Path:
    """This machine's avatar4d cache: ``$AVATAR4D_CACHE_DIR``, else ``~/.cache/avatar4d``."""
    return Path(os.environ.get("AVATAR4D_CACHE_DIR") or Path.home() / ".cache" / "avatar4d").expanduser()


def local_copy_path(uri: str) -> Path:
    """Where :func:`local_copy` keeps this machine's copy of the object-store folder ``uri``."""
    import hashlib

    uri = str(uri).rstrip("/")
    parent_digest = hashlib.sha256(parent(uri).encode()).hexdigest()[:16]
    return cache_root() / "copies" / parent_digest / uri.rsplit("/", 1)[1]


def local_copy(uri: str, *, marker: str | None = None) -> Path:
    """A local folder with the files under ``uri`` (a local path is returned as it is): downloaded
    once per machine into :func:`cache_root`/``copies`` through a staging folder renamed into
    place, so concurrent callers never see half a copy. ``marker``: a file that must exist under
    ``uri`` (written last by its writer, e.g. ``checkpoint.json``), else ``FileNotFoundError``."""
    if not is_remote(uri):
        return Path(str(uri).removeprefix("file://")).expanduser()
    import shutil
    import uuid

    uri = check_uri(uri).rstrip("/")
    target = local_copy_path(uri)
    if target.is_dir() and (marker is None or (target / marker).is_file()):
        return target
    if not exists(join(uri, marker) if marker else uri):
        raise FileNotFoundError(f"{uri}: not found" + (f" (no {marker})" if marker else ""))
    staging = target.parent / f".{target.name}.{uuid.uuid4().hex}.staging"
    download_dir(uri, staging)
    try:
        os.rename(staging, target)
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)  # another process of this machine copied it first
        if not target.is_dir():
            raise
    return target


# ---- keeping secrets out of text ---------------------------------------------------------------

_SECRET_PATTERNS = [
    # key=value / key: value pairs (storage options, boto/object_store debug output, query strings)
    re.compile(r"(?i)((?:aws_)?(?:secret_access_key|secret_key|session_token|security_token|access_key_id)"
               r"['\"]?\s*[:=]\s*['\"]?)([^\s'\",&}]+)"),
    re.compile(r"(?i)(X-Amz-(?:Signature|Credential|Security-Token)=)([^&\s]+)"),
    re.compile(r"(?i)(Authorization:?\s*['\"]?AWS4-HMAC-SHA256\s+)([^'\"\n]+)"),
    re.compile(r"(://)([^/\s:@]+:[^/\s@]+)(@)"),  # user:password@ in a URI
]


def redact(text: str) -> str:
    """``text`` with the environment's AWS keys and anything shaped like a credential replaced by
    ``***``."""
    for name in SECRET_ENV_VARS:
        value = os.environ.get(name)
        if value and len(value) >= 4:
            text = text.replace(value, REDACTED)
    for pattern in _SECRET_PATTERNS:
        text = pattern.sub(lambda m: m.group(1) + REDACTED + (m.group(3) if m.lastindex == 3 else ""), text)
    return text


class RedactingFilter(logging.Filter):
    """A logging filter that passes every record with its message run through :func:`redact`."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True
