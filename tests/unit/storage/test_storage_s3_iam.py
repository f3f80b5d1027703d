"""Separate credentials: the client-facing role can write the vault but never read it.

Runs on a private moto server with IAM enforcement switched on (``/moto-api/reset-auth``),
so that real IAM user policies decide every request.  Moto evaluates *identity* policies
(user/group/role); it does not evaluate bucket policies, so the role separation is
expressed as user policies here (in production it is both).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any

import pytest
from s3server import MotoServer

from storage import ObjectNotFoundError, StoragePermissionError, put_bytes, read_bytes
from storage.s3 import MIN_PART_SIZE, S3Storage

VAULT = "kinko-vault-iam"

CLIENT_ROLE = {  # what the internet-facing process gets on the vault bucket
    "Version": "2012-10-17",
    "Statement": [
        {
            "Effect": "Allow",
            "Action": ["s3:PutObject", "s3:AbortMultipartUpload"],
            "Resource": f"arn:aws:s3:::{VAULT}/*",
        }
    ],
}
OFFICE_ROLE = {
    "Version": "2012-10-17",
    "Statement": [
        {"Effect": "Allow", "Action": "s3:*", "Resource": f"arn:aws:s3:::{VAULT}/*"},
        {"Effect": "Allow", "Action": "s3:*", "Resource": f"arn:aws:s3:::{VAULT}"},
    ],
}


@pytest.fixture(scope="module")
def iam_server() -> Iterator[tuple[MotoServer, dict[str, dict[str, str]]]]:
    with MotoServer() as server:
        admin = server.client()
        admin.create_bucket(Bucket=VAULT)
        iam = server.boto_client("iam")
        keys: dict[str, dict[str, str]] = {}
        for name, policy in (("client-role", CLIENT_ROLE), ("office-role", OFFICE_ROLE)):
            iam.create_user(UserName=name)
            iam.put_user_policy(UserName=name, PolicyName="s3", PolicyDocument=json.dumps(policy))
            key = iam.create_access_key(UserName=name)["AccessKey"]
            keys[name] = {
                "aws_access_key_id": key["AccessKeyId"],
                "aws_secret_access_key": key["SecretAccessKey"],
            }
        server.set_auth(enforce=True)
        try:
            yield server, keys
        finally:
            server.set_auth(enforce=False)


def _vault(server: MotoServer, credentials: dict[str, str]) -> S3Storage:
    client: Any = server.client(**credentials)
    return S3Storage(client, VAULT, "vault", part_size=MIN_PART_SIZE)


def test_client_role_writes_but_cannot_read_the_vault(
    iam_server: tuple[MotoServer, dict[str, dict[str, str]]],
) -> None:
    server, keys = iam_server
    client_side = _vault(server, keys["client-role"])
    office_side = _vault(server, keys["office-role"])
    data = os.urandom(MIN_PART_SIZE + 1000)

    put_bytes(client_side, "sealed/1", data, {"object-id": "1"})  # multipart
    put_bytes(client_side, "sealed/2", b"small")  # single put
    for call in (client_side.open, client_side.head, client_side.exists):
        with pytest.raises(StoragePermissionError) as info:
            call("sealed/1")
        assert isinstance(info.value, PermissionError)
        assert not isinstance(info.value, ObjectNotFoundError)
    with pytest.raises(StoragePermissionError):
        list(client_side.keys())

    assert read_bytes(office_side, "sealed/1") == data
    assert set(office_side.keys()) == {"sealed/1", "sealed/2"}
    office_side.delete("sealed/1")
    assert not office_side.exists("sealed/1")


def test_unknown_credentials_are_refused(
    iam_server: tuple[MotoServer, dict[str, dict[str, str]]],
) -> None:
    server, _ = iam_server
    stranger = _vault(server, {"aws_access_key_id": "AKIAUNKNOWN000000000"})
    with pytest.raises(StoragePermissionError):
        put_bytes(stranger, "x", b"x")
