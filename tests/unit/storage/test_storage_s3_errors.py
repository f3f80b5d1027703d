"""S3 backend: error translation (botocore Stubber), retries, client and URL building."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.stub import Stubber
from s3server import DUMMY_CREDENTIALS, free_port

from storage import ObjectNotFoundError, StorageError, StoragePermissionError, put_bytes
from storage.s3 import MIN_PART_SIZE, S3Storage, client_config, make_client

SERVER_SECRET_TEXT = "arn:aws:iam::123456789012:user/someone details"


def _stubbed() -> tuple[S3Storage, Stubber]:
    client = boto3.Session(**DUMMY_CREDENTIALS).client(
        "s3", endpoint_url="http://127.0.0.1:9", config=client_config(max_attempts=1)
    )
    return S3Storage(client, "b", "p"), Stubber(client)


@pytest.mark.parametrize(
    ("code", "status", "expected"),
    [
        ("NoSuchKey", 404, ObjectNotFoundError),
        ("404", 404, ObjectNotFoundError),
        ("AccessDenied", 403, StoragePermissionError),
        ("403", 403, StoragePermissionError),
        ("InvalidAccessKeyId", 403, StoragePermissionError),
        ("NoSuchBucket", 404, StorageError),
        ("InternalError", 500, StorageError),
    ],
)
def test_client_errors_are_translated(code: str, status: int, expected: type) -> None:
    storage, stubber = _stubbed()
    for _ in range(2):
        stubber.add_client_error(
            "head_object",
            service_error_code=code,
            service_message=SERVER_SECRET_TEXT,
            http_status_code=status,
            expected_params={"Bucket": "b", "Key": "p/some/key"},
        )
    with stubber:
        with pytest.raises(StorageError) as info:
            storage.head("some/key")
        assert type(info.value) is expected
        assert SERVER_SECRET_TEXT not in str(info.value)
        if expected is StoragePermissionError:
            assert isinstance(info.value, PermissionError)
        if expected is ObjectNotFoundError:
            assert storage.exists("some/key") is False
        else:
            # A missing bucket or a refusal must never read as "no such object".
            assert not isinstance(info.value, FileNotFoundError)
            with pytest.raises(expected):
                storage.exists("some/key")


def test_access_denied_on_write_aborts_nothing_and_is_permission_error() -> None:
    storage, stubber = _stubbed()
    stubber.add_client_error("put_object", "AccessDenied", http_status_code=403)
    with stubber, pytest.raises(StoragePermissionError):
        put_bytes(storage, "k", b"x")


def test_connection_errors_become_storage_errors() -> None:
    client = boto3.Session(**DUMMY_CREDENTIALS).client(
        "s3", endpoint_url=f"http://127.0.0.1:{free_port()}", config=client_config(max_attempts=1)
    )
    storage = S3Storage(client, "b")
    with pytest.raises(StorageError, match="EndpointConnectionError"):
        storage.head("k")


def test_constructor_validates_configuration() -> None:
    client = object()
    for prefix in ["../x", "a//b", "a/../b", "ü"]:
        with pytest.raises(StorageError):
            S3Storage(client, "b", prefix)
    with pytest.raises(StorageError):
        S3Storage(client, "b", part_size=MIN_PART_SIZE - 1)
    with pytest.raises(StorageError):
        S3Storage(client, "")
    assert S3Storage(client, "b", "/a/b/").prefix == "a/b"


# -- retries ---------------------------------------------------------------------------


class _Flaky(http.server.BaseHTTPRequestHandler):
    """Answers the first requests with 503 SlowDown / 500, then 200."""

    failures: list[int] = []
    seen: list[str] = []

    def do_PUT(self) -> None:  # noqa: N802 - http.server's naming
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.seen.append(self.command)
        if self.failures:
            status = self.failures.pop(0)
            code = b"SlowDown" if status == 503 else b"InternalError"
            body = b"<Error><Code>" + code + b"</Code><Message>m</Message></Error>"
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        self.send_response(200)
        self.send_header("ETag", '"abc"')
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def flaky_endpoint() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Flaky)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_throttling_and_5xx_are_retried(flaky_endpoint: str) -> None:
    _Flaky.failures[:] = [503, 500]
    _Flaky.seen[:] = []
    client = boto3.Session(**DUMMY_CREDENTIALS).client(
        "s3", endpoint_url=flaky_endpoint, config=client_config(max_attempts=3)
    )
    put_bytes(S3Storage(client, "b"), "k", b"payload")
    assert _Flaky.seen == ["PUT", "PUT", "PUT"]


def test_retries_give_up_with_storage_error(flaky_endpoint: str) -> None:
    _Flaky.failures[:] = [503, 503, 503]
    _Flaky.seen[:] = []
    client = boto3.Session(**DUMMY_CREDENTIALS).client(
        "s3", endpoint_url=flaky_endpoint, config=client_config(max_attempts=2)
    )
    with pytest.raises(StorageError, match="SlowDown"):
        put_bytes(S3Storage(client, "b"), "k", b"payload")
    assert _Flaky.seen == ["PUT", "PUT"]  # max_attempts counts the first attempt too


# -- make_client and open_storage ------------------------------------------------------


@pytest.fixture
def aws_profile(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    config = tmp_path / "config"
    config.write_text(
        "[profile kinko-vault]\n"
        "aws_access_key_id = testing-vault\n"
        "aws_secret_access_key = testing\n"
        "region = ap-northeast-1\n"
    )
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:1")
    return "kinko-vault"


def test_make_client_uses_profile_env_and_retry_config(aws_profile: str) -> None:
    client = make_client(profile=aws_profile, max_attempts=5)
    assert client.meta.region_name == "ap-northeast-1"
    assert client.meta.endpoint_url == "http://127.0.0.1:1"  # AWS_ENDPOINT_URL_S3
    assert client._request_signer._credentials.access_key == "testing-vault"
    config = client.meta.config
    assert config.retries == {"mode": "standard", "total_max_attempts": 5}
    assert config.s3["addressing_style"] == "path"
    with pytest.raises(StorageError):
        make_client(profile="no-such-profile")


def test_open_storage_builds_s3_backend(aws_profile: str) -> None:
    from portal.backends import open_storage
    from portal.settings import SettingsError

    storage = open_storage("s3://kinko-vault/tenant/vault", profile=aws_profile)
    assert isinstance(storage, S3Storage)
    assert (storage.bucket, storage.prefix) == ("kinko-vault", "tenant/vault")
    assert isinstance(open_storage("s3://bucket-only"), S3Storage)
    for bad in ["s3:///nobucket", "s3://b/../x", "s3://b/p?x=1", "ftp://b/p"]:
        with pytest.raises(SettingsError):
            open_storage(bad)
    with pytest.raises(SettingsError):
        open_storage("s3://b/p", profile="no-such-profile")
