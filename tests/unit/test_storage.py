"""avatar4d.storage: URIs, Lance storage options from the AWS environment variables (never the
keys), credential redaction in text and logs, and the file helpers on local folders (the S3 side
runs against a real server in tests/integration/test_object_storage*.py)."""

from __future__ import annotations

import logging
import subprocess
import sys

import pytest

from avatar4d import storage
from avatar4d.errors import UserError

SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
KEY_ID = "AKIAIOSFODNN7EXAMPLE"


@pytest.fixture()
def aws_env(monkeypatch):
    for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_REGION", "AWS_DEFAULT_REGION"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", KEY_ID)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    return monkeypatch


def test_uris_are_joined_and_split_without_pathlib_folding_the_scheme(tmp_path):
    assert storage.is_remote("s3://bucket/data") and not storage.is_remote("data") and not storage.is_remote(
        "file:///tmp/x")
    assert storage.join("s3://bucket/data/", "pairs.lance", "_versions") == "s3://bucket/data/pairs.lance/_versions"
    assert storage.join(tmp_path, "a", "b") == str(tmp_path / "a" / "b")
    assert storage.parent("s3://bucket/data/pairs.lance") == "s3://bucket/data"
    assert storage.parent("s3://bucket/data") == "s3://bucket"
    assert storage.parent(str(tmp_path / "x")) == str(tmp_path)
    assert storage.check_uri("s3://bucket/prefix/") == "s3://bucket/prefix"


@pytest.mark.parametrize("uri, message", [
    ("gs://bucket/x", "gs:// is not supported"),
    ("s3:///x", "no bucket"),
    (f"s3://{KEY_ID}:{SECRET}@bucket/x", "do not put credentials in the URI"),
])
def test_bad_uris_are_one_line_errors_without_the_keys(uri, message, aws_env):
    with pytest.raises(UserError, match=message) as error:
        storage.check_uri(uri, "--out")
    text = str(error.value)
    assert "\n" not in text and SECRET not in text and KEY_ID not in text


def test_storage_options_carry_endpoint_and_region_never_the_keys(aws_env):
    assert storage.storage_options("/tmp/data") is None
    assert storage.storage_options("s3://bucket/x") == {}  # AWS itself: Lance finds everything in the environment
    aws_env.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9000")
    aws_env.setenv("AWS_REGION", "eu-west-1")
    options = storage.storage_options("s3://bucket/x")
    assert options == {"aws_endpoint": "http://127.0.0.1:9000", "allow_http": "true", "aws_region": "eu-west-1"}
    aws_env.setenv("AWS_ENDPOINT_URL_S3", "https://s3.example.com")  # the service-specific variable wins
    assert storage.storage_options("s3://bucket/x")["aws_endpoint"] == "https://s3.example.com"
    assert "allow_http" not in storage.storage_options("s3://bucket/x")
    assert SECRET not in repr(storage.storage_options("s3://bucket/x"))


def test_redact_removes_keys_and_credential_shaped_text(aws_env):
    text = (f"key {KEY_ID} secret {SECRET}; aws_secret_access_key='abc123xyz' "
            "https://b.s3.amazonaws.com/o?X-Amz-Signature=deadbeef&X-Amz-Credential=AKIA/2026 "
            "s3://user:pa55word@bucket/x Authorization: AWS4-HMAC-SHA256 Credential=AKIA/x, Signature=ff")
    cleaned = storage.redact(text)
    for secret in (SECRET, KEY_ID, "abc123xyz", "deadbeef", "pa55word", "Signature=ff"):
        assert secret not in cleaned, secret
    assert "s3://***@bucket/x" in cleaned and "X-Amz-Signature=***" in cleaned
    assert storage.redact("nothing to hide") == "nothing to hide"


def test_redacting_filter_cleans_formatted_log_records(aws_env, caplog):
    logger = logging.getLogger("avatar4d.test_storage")
    handler = logging.StreamHandler(stream := __import__("io").StringIO())
    handler.addFilter(storage.RedactingFilter())
    logger.addHandler(handler)
    try:
        logger.warning("connecting with %s and %s", KEY_ID, SECRET)
    finally:
        logger.removeHandler(handler)
    assert stream.getvalue().strip() == "connecting with *** and ***"


def test_cli_errors_are_redacted(aws_env, capsys):
    from avatar4d.cli import main

    for command in ("status", "verify"):  # verify takes a local folder: the path is echoed, redacted
        assert main(["factory", command, f"s3://{KEY_ID}:{SECRET}@bucket/x"]) == 1
    assert main(["factory", "run", "--out", f"s3://{KEY_ID}:{SECRET}@bucket/x", "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert err.count("avatar4d: error:") == 3 and "credentials in the URI" in err
    assert SECRET not in err and KEY_ID not in err and "Traceback" not in err


def test_file_helpers_on_a_local_folder(tmp_path):
    root = tmp_path / "root"
    storage.write_text(storage.join(root, "a", "b.json"), '{"x": 1}')
    assert storage.read_text(storage.join(root, "a", "b.json")) == '{"x": 1}'
    assert storage.read_text(storage.join(root, "missing.json")) is None
    assert storage.exists(root / "a") and not storage.exists(root / "nothing")
    files = storage.list_files(root)
    assert set(files) == {"a/b.json"} and files["a/b.json"][0] == 8 and storage.tree_bytes(root) == 8
    storage.upload_dir(root, str(tmp_path / "copy"), last="b.json")
    storage.download_dir(str(tmp_path / "copy"), tmp_path / "back")
    assert (tmp_path / "back" / "a" / "b.json").read_text() == '{"x": 1}'
    assert storage.local_copy(str(root)) == root  # a local path is its own copy
    assert storage.delete(root / "a") == 1 and storage.list_files(root) == {} and storage.delete(root / "a") == 0


def test_cache_root_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("AVATAR4D_CACHE_DIR", str(tmp_path / "cache"))
    assert storage.cache_root() == tmp_path / "cache"
    copy = storage.local_copy_path("s3://bucket/runs/final")
    assert copy.name == "final" and copy.is_relative_to(tmp_path / "cache" / "copies")
    assert storage.local_copy_path("s3://bucket/runs/final") == copy  # stable per URI
    assert storage.local_copy_path("s3://bucket/other/final") != copy


def test_the_module_imports_no_pyarrow():
    code = "import sys, avatar4d.storage; print('pyarrow' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == "False", result.stderr


def test_bytes_round_trip_and_null_condition_from_a_folder(tmp_path):
    """read_bytes/write_bytes on a local path (no pyarrow needed there); the DiT's readers load the
    null condition and its encoder hash through them, the same code path as for s3://."""
    import torch
    from safetensors.torch import save

    from avatar4d.data.encoded_reader import load_null_condition, null_condition_encoder_sha256
    from avatar4d.diffusion.sampling import null_clip_tokens
    from avatar4d.storage import read_bytes, write_bytes

    assert read_bytes(tmp_path / "absent") is None
    write_bytes(tmp_path / "sub" / "file.bin", b"\x00\x01abc")
    assert read_bytes(tmp_path / "sub" / "file.bin") == b"\x00\x01abc"
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["file.bin"]  # no temporary left behind

    clip, dino = torch.randn(4, 8), torch.randn(5, 6)
    write_bytes(tmp_path / "encoded_null_condition.safetensors",
                save({"clip_tokens": clip, "dino_tokens": dino}, metadata={"encoder_sha256": "abc123"}))
    loaded = load_null_condition(tmp_path)
    assert torch.equal(loaded["clip_tokens"], clip) and torch.equal(loaded["dino_tokens"], dino)
    assert null_condition_encoder_sha256(tmp_path) == "abc123"
    assert torch.equal(null_clip_tokens("zero_image", str(tmp_path)), clip[None])
    with pytest.raises(FileNotFoundError, match="run `avatar4d factory encode` first"):
        load_null_condition(tmp_path / "elsewhere")
