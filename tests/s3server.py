"""Run moto's S3-compatible server in a subprocess, on loopback only (test helper).

Usage::

    with MotoServer() as server:
        client = server.client()          # dummy credentials, path-style, retries
        client.create_bucket(Bucket="b")

Each ``MotoServer`` is its own process with its own in-memory state, bound to
127.0.0.1 on a free port.  Credentials are dummies passed to the client, never put in
``os.environ``, so no test can reach real AWS by accident.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from types import TracebackType
from typing import Any

from storage.s3 import client_config

DUMMY_CREDENTIALS = {
    "aws_access_key_id": "testing",
    "aws_secret_access_key": "testing",
    "region_name": "us-east-1",
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class MotoServer:
    """A moto server subprocess; ``endpoint`` is its ``http://127.0.0.1:PORT`` URL."""

    def __init__(self, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._extra_env = env or {}
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30) -> None:
        env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith("AWS_")  # the server must not see real credentials
        }
        env.update(self._extra_env)
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"moto server exited with {self._proc.returncode}")
            try:
                with urllib.request.urlopen(f"{self.endpoint}/moto-api/", timeout=1):
                    return
            except (urllib.error.URLError, OSError):
                time.sleep(0.1)
        self.stop()
        raise RuntimeError("moto server did not answer in time")

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None

    def __enter__(self) -> MotoServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- helpers -----------------------------------------------------------------------

    def client(self, **credentials: str) -> Any:
        """An S3 client for this server, built like production (``make_client``)."""
        import boto3

        # Explicit dummy credentials: the session never falls back to ~/.aws or env.
        session = boto3.Session(**{**DUMMY_CREDENTIALS, **credentials})
        return session.client(
            "s3", endpoint_url=self.endpoint, config=client_config(max_attempts=3)
        )

    def boto_client(self, service: str, **credentials: str) -> Any:
        import boto3

        session = boto3.Session(**{**DUMMY_CREDENTIALS, **credentials})
        return session.client(service, endpoint_url=self.endpoint)

    def new_bucket(self, client: Any, *, versioned: bool = False) -> str:
        name = f"kinko-test-{uuid.uuid4().hex[:20]}"
        client.create_bucket(Bucket=name)
        if versioned:
            client.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": "Enabled"})
        return name

    def create_kms_key(self, stack: str, **credentials: str) -> str:
        """Create a symmetric KMS key through a CloudFormation stack; returns its ARN.

        Moto keeps serving ``Decrypt`` for disabled and pending-deletion keys; deleting
        the stack (:meth:`delete_kms_key`) removes the key for real, so a test can prove
        that nothing needs it any more.
        """
        import json

        # The policy as a JSON string: moto's DescribeKey parses the stored policy.
        template = {"Resources": {"Key": {"Type": "AWS::KMS::Key", "Properties": {
            "KeyPolicy": json.dumps({"Version": "2012-10-17", "Statement": []})}}}}
        cfn = self.boto_client("cloudformation", **credentials)
        cfn.create_stack(StackName=stack, TemplateBody=json.dumps(template))
        resources = cfn.describe_stack_resources(StackName=stack)["StackResources"]
        key_id = resources[0]["PhysicalResourceId"]
        return str(self.boto_client("kms", **credentials)
                   .describe_key(KeyId=key_id)["KeyMetadata"]["Arn"])

    def delete_kms_key(self, stack: str, **credentials: str) -> None:
        """Delete the stack of :meth:`create_kms_key`, and with it the key."""
        self.boto_client("cloudformation", **credentials).delete_stack(StackName=stack)

    def set_auth(self, enforce: bool) -> None:
        """Turn moto's IAM enforcement on (every request needs a real IAM key) or off."""
        data = b"0" if enforce else b"inf"
        request = urllib.request.Request(
            f"{self.endpoint}/moto-api/reset-auth",
            data=data,
            method="POST",
            # Not form-encoded, or Flask consumes the body before moto reads it.
            headers={"Content-Type": "text/plain"},
        )
        with urllib.request.urlopen(request, timeout=5) as response:
            response.read()
