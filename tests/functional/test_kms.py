"""KMS key custody on the real stack (`kinko serve`, clamd) against a moto server that
this module starts: drop zone and vault keys in KMS, IAM enforced per role, rotation,
`kinko keys rewrap`, and the old key deleted afterwards.  One run with local storage
(it inspects files and SQLite), one with S3 buckets on the same moto server."""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from botocore.exceptions import ClientError

from storage.envelope import peek_header
from storage.kms import wrapped_key_arn

from .harness import ROOT, Stack, build_stack, embedded_only, require_clamd, teardown_stack

sys.path.insert(0, str(ROOT / "tests"))
from s3server import DUMMY_CREDENTIALS, MotoServer  # noqa: E402

ROLES = {  # Resource "*": moto checks KMS actions, not key ARNs (docs/deploy.md has ARNs)
    "client": ["kms:Encrypt", "kms:DescribeKey"],
    "worker": ["kms:Encrypt", "kms:Decrypt", "kms:DescribeKey"],
    "office": ["kms:Encrypt", "kms:Decrypt", "kms:DescribeKey"],
    "admin": ["*"],
}
COUNTS = re.compile(r"vault objects: (\d+); already on key (\w+): (\d+); "
                    r"(?:would re-wrap|re-wrapped): (\d+); headers: (\d+); failed: (\d+)")


def _need_clamd() -> None:
    require_clamd()


def kid(arn: str) -> str:
    return arn.rsplit("/", 1)[1].replace("-", "")


def iam_users(moto: MotoServer, home: Path) -> dict[str, dict[str, str]]:
    """IAM users per role and an AWS credentials file with one profile each."""
    iam = moto.boto_client("iam")
    creds: dict[str, dict[str, str]] = {}
    lines = []
    for role, actions in ROLES.items():
        iam.create_user(UserName=role)
        iam.put_user_policy(UserName=role, PolicyName="kms", PolicyDocument=json.dumps({
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": actions, "Resource": "*"}]}))
        key = iam.create_access_key(UserName=role)["AccessKey"]
        creds[role] = {"aws_access_key_id": key["AccessKeyId"],
                       "aws_secret_access_key": key["SecretAccessKey"]}
        lines += [f"[{role}]", f"aws_access_key_id = {key['AccessKeyId']}",
                  f"aws_secret_access_key = {key['SecretAccessKey']}", ""]
    home.mkdir(parents=True, exist_ok=True)
    (home / "credentials").write_text("\n".join(lines))
    (home / "config").write_text("")
    return creds


def aws_env(moto: MotoServer, aws_home: Path | None) -> dict[str, str]:
    env = {"AWS_ENDPOINT_URL": moto.endpoint, "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_EC2_METADATA_DISABLED": "true"}
    if aws_home is not None:
        env.update({"AWS_SHARED_CREDENTIALS_FILE": str(aws_home / "credentials"),
                    "AWS_CONFIG_FILE": str(aws_home / "config"),
                    **{f"KINKO_KMS_PROFILE_{r.upper()}": r for r in ("client", "worker",
                                                                     "office")}})
    else:
        env.update({"AWS_ACCESS_KEY_ID": DUMMY_CREDENTIALS["aws_access_key_id"],
                    "AWS_SECRET_ACCESS_KEY": DUMMY_CREDENTIALS["aws_secret_access_key"]})
    return env


def set_env(stack: Stack, extra: dict[str, str]) -> None:
    for name in [k for k in stack.env if k.startswith("AWS_")]:
        del stack.env[name]
    stack.env.update(extra)


def upload_clean(stack: Stack, token: str, name: str) -> tuple[str, str]:
    data = f"id,note\n1,{name}\n".encode() + os.urandom(200_000).hex().encode()
    up = stack.api_upload(token, data, name)
    assert up.status_code == 201, up.text
    stack.wait_for(token, up.json()["id"], {"clean"})
    return up.json()["id"], hashlib.sha256(data).hexdigest()


def pull(stack: Stack, upload_id: str) -> None:
    out = stack.kinko("vault", "pull", upload_id, "--staff", "boss").stdout
    assert f"{upload_id} vaulted" in out


def get_sha(stack: Stack, upload_id: str) -> str:
    return hashlib.sha256(stack.vault_bytes(upload_id)).hexdigest()


def vault_row(stack: Stack, upload_id: str) -> tuple[str, str, bytes, str]:
    with stack.db() as db:
        row = db.execute("SELECT vault_key, vault_key_id, vault_wrapped_key, "
                         "vault_ciphertext_sha256 FROM uploads WHERE id = ?",
                         (upload_id,)).fetchone()
    return row[0], row[1], bytes(row[2]), row[3]


def rewrap(stack: Stack, *args: str) -> tuple[int, ...]:
    out = stack.kinko("keys", "rewrap", *args).stdout
    m = COUNTS.search(out)
    assert m, out
    return tuple(int(g) for i, g in enumerate(m.groups()) if i != 1)


# -- local storage, IAM enforced ------------------------------------------------------

@pytest.fixture(scope="module")
def moto() -> Iterator[MotoServer]:
    with MotoServer() as server:
        yield server


@pytest.fixture(scope="module")
def local_stack(tmp_path_factory: pytest.TempPathFactory,
                moto: MotoServer) -> Iterator[Stack]:
    _need_clamd()
    s = build_stack(tmp_path_factory.mktemp)
    try:
        yield s
    finally:
        teardown_stack(s)


@embedded_only("inspects local vault files and SQLite")
def test_kms_custody_rotation_and_rewrap(local_stack: Stack, moto: MotoServer) -> None:
    stack = local_stack
    token = stack.token("acme", "hr")
    # Before KMS: one file sealed to the X25519 vault key file.
    f0, sha0 = upload_clean(stack, token, "before-kms.csv")
    pull(stack, f0)

    # Switch on KMS: drop zone key D, vault key A (by alias), IAM enforced per role.
    stack.stop_server()
    creds = iam_users(moto, stack.base / "aws")
    kms = moto.boto_client("kms")
    key_d = str(kms.create_key()["KeyMetadata"]["Arn"])
    key_e = str(kms.create_key()["KeyMetadata"]["Arn"])
    key_a = moto.create_kms_key("vault-a")
    key_b = str(kms.create_key()["KeyMetadata"]["Arn"])
    kms.create_alias(AliasName="alias/kinko-vault", TargetKeyId=key_a)
    moto.set_auth(enforce=True)
    admin = moto.boto_client("kms", **creds["admin"])
    client_kms = moto.boto_client("kms", **creds["client"])
    office_kms = moto.boto_client("kms", **creds["office"])
    set_env(stack, {**aws_env(moto, stack.base / "aws"),
                    "KINKO_DROPZONE_KMS_KEY": key_d.rsplit("/", 1)[1],  # a bare key id
                    "KINKO_VAULT_KMS_KEY": "alias/kinko-vault"})
    stack.start_server()

    f1, sha1 = upload_clean(stack, token, "under-a.csv")
    [dz] = stack.objects("dropzone", f"dz/{f1}")
    dz_header = peek_header(io.BytesIO(dz.read_bytes()))
    assert (dz_header.wrap, dz_header.key_id) == ("aws-kms-v1", kid(key_d))
    assert dz_header.wrapped_key is not None
    arn, _, blob = _split(dz_header.wrapped_key)
    assert arn == key_d
    # The client-facing role cannot decrypt what it stored (IAM), the worker can.
    context = {"kinko:object": f"dz/{f1}", "kinko:scheme": "aws-kms-v1"}
    with pytest.raises(ClientError) as denied:
        client_kms.decrypt(CiphertextBlob=blob, KeyId=arn, EncryptionContext=context)
    assert "AccessDenied" in str(denied.value)
    worker_kms = moto.boto_client("kms", **creds["worker"])
    assert len(worker_kms.decrypt(CiphertextBlob=blob, KeyId=arn,
                                  EncryptionContext=context)["Plaintext"]) == 32
    # ...and its process has nothing that could open the vault: no unwrapper, and a
    # vault wrapper without `unwrap` that was never even resolved (no KMS call).
    probe = subprocess.run(
        [sys.executable, "-c",
         "from portal.settings import Settings; from portal.services import build_services;"
         "s = build_services(Settings.from_env(), 'client');"
         "print(type(s.vault_public).__name__, hasattr(s.vault_public, 'unwrap'),"
         " s.vault_private, s.vault_public._ref)"], env=stack.env, cwd=ROOT,
        capture_output=True, text=True, timeout=60)
    assert probe.stdout.split() == ["KmsWrapper", "False", "None", "None"], \
        probe.stderr[-1000:]

    pull(stack, f1)
    _, kid1, wrapped1, _ = vault_row(stack, f1)
    assert kid1 == kid(key_a) and wrapped_key_arn(wrapped1) == key_a
    assert get_sha(stack, f1) == sha1 and get_sha(stack, f0) == sha0
    vault_context = {"kinko:object": vault_row(stack, f1)[0], "kinko:scheme": "aws-kms-v1"}
    with pytest.raises(ClientError):  # nor what was sealed to the vault
        client_kms.decrypt(CiphertextBlob=_split(wrapped1)[2], KeyId=key_a,
                           EncryptionContext=vault_context)

    # One upload waits (clean, not pulled) while both keys rotate (D->E, A->B): its
    # drop-zone copy is under D, its vault copy staged at scan time under A.
    f2, sha2 = upload_clean(stack, token, "pending.csv")
    with stack.db() as db:
        staged = db.execute("SELECT staged_key FROM uploads WHERE id = ?", (f2,)).fetchone()[0]
    stack.stop_server()
    stack.env.update({"KINKO_DROPZONE_KMS_KEY": key_e, "KINKO_VAULT_KMS_KEY": key_b})
    stack.start_server()
    f3, sha3 = upload_clean(stack, token, "under-b.csv")
    [dz3] = stack.objects("dropzone", f"dz/{f3}")
    assert peek_header(io.BytesIO(dz3.read_bytes())).key_id == kid(key_e)
    pull(stack, f3)
    assert vault_row(stack, f3)[1] == kid(key_b)  # new objects use the new key
    assert get_sha(stack, f1) == sha1  # old objects stay readable

    before = {u: stack.objects("vault", f"vault/{u}.")[0].read_bytes() for u in (f0, f1)}
    # (objects, already current, to re-wrap, headers, failed): f0 (X25519), f1 (A) and
    # f2's staged copy (A) move; f3 is on B already.
    moving = 3 if staged else 2
    expected = (moving + 1, 1, moving, moving, 0)
    assert rewrap(stack, "--dry-run") == expected
    assert vault_row(stack, f1)[2] == wrapped1  # a dry run changes nothing
    assert rewrap(stack) == expected
    assert rewrap(stack) == (moving + 1, moving + 1, 0, 0, 0)  # idempotent
    for upload_id in (f0, f1, f3):
        key, key_id, wrapped, ct_sha = vault_row(stack, upload_id)
        [obj] = stack.objects("vault", f"vault/{upload_id}.")
        assert stack.object_id("vault", obj) == key  # rewritten in place
        raw = obj.read_bytes()
        header = peek_header(io.BytesIO(raw))
        assert (key_id, header.key_id, header.wrap) == (kid(key_b), kid(key_b), "aws-kms-v1")
        assert wrapped_key_arn(wrapped) == key_b and header.detached
        assert hashlib.sha256(raw).hexdigest() == ct_sha
        if upload_id in before:  # only the header changed, the payload is the same bytes
            old = before[upload_id]
            assert raw[header.size:] == old[peek_header(io.BytesIO(old)).size:]
    with stack.db() as db:
        events = db.execute("SELECT details FROM audit_events WHERE action LIKE "
                            "'office:vault:rewrap%' ORDER BY id").fetchall()
    assert len(events) == 3
    for (details,) in events:
        assert set(json.loads(details)) == {"objects", "current", "rewrapped", "headers",
                                            "failed", "key_id"}
        assert f1 not in details and f0 not in details

    # Key A disabled and then really deleted, the vault key file gone: all still open.
    admin.disable_key(KeyId=key_a.rsplit("/", 1)[1])
    moto.delete_kms_key("vault-a", **creds["admin"])
    (stack.home / "keys" / "vault.key").rename(stack.base / "vault.key.offline")
    with pytest.raises(ClientError):  # positive control: A's old wrapped key is dead
        office_kms.decrypt(CiphertextBlob=_split(wrapped1)[2], KeyId=key_a,
                           EncryptionContext=vault_context)
    pull(stack, f2)  # after both old keys' successors took over
    assert vault_row(stack, f2)[1] == kid(key_b)
    for upload_id, sha in ((f0, sha0), (f1, sha1), (f2, sha2), (f3, sha3)):
        assert get_sha(stack, upload_id) == sha
    stack.kinko("audit", "verify")
    moto.set_auth(enforce=False)


def _split(wrapped: bytes) -> tuple[str, int, bytes]:
    size = int.from_bytes(wrapped[5:7], "big")
    return wrapped[7:7 + size].decode(), size, wrapped[7 + size:]


# -- S3 buckets + KMS -------------------------------------------------------------------

@pytest.fixture(scope="module")
def s3_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, MotoServer]]:
    _need_clamd()
    with MotoServer() as moto_s3:
        kms = moto_s3.boto_client("kms")
        s3 = moto_s3.client()
        dz_bucket, vault_bucket = moto_s3.new_bucket(s3), moto_s3.new_bucket(s3, versioned=True)
        key_d = str(kms.create_key()["KeyMetadata"]["Arn"])
        key_a = moto_s3.create_kms_key("s3-vault-a")
        env = {**aws_env(moto_s3, None),
               "KINKO_DROPZONE_URL": f"s3://{dz_bucket}/kinko",
               "KINKO_VAULT_URL": f"s3://{vault_bucket}/kinko",
               "KINKO_DROPZONE_KMS_KEY": key_d, "KINKO_VAULT_KMS_KEY": key_a}
        stack = build_stack(tmp_path_factory.mktemp, extra_env=env)
        stack.buckets.update({"dropzone": dz_bucket, "vault": vault_bucket})
        try:
            yield stack, moto_s3
        finally:
            teardown_stack(stack)


@embedded_only("starts its own S3 server (the scale profile has one already)")
def test_s3_and_kms_upload_download_and_rewrap(s3_stack: tuple[Stack, MotoServer]) -> None:
    stack, moto_s3 = s3_stack
    s3 = moto_s3.client()
    token = stack.token("acme", "hr")
    f1, sha1 = upload_clean(stack, token, "s3-kms.csv")
    dz_key = f"kinko/dz/{f1}"
    dz = s3.get_object(Bucket=stack.buckets["dropzone"], Key=dz_key)["Body"].read()
    assert peek_header(io.BytesIO(dz)).wrap == "aws-kms-v1"
    pull(stack, f1)
    assert get_sha(stack, f1) == sha1
    key, key_id, _, _ = vault_row(stack, f1)
    key_a = stack.env["KINKO_VAULT_KMS_KEY"]
    assert key_id == kid(key_a)

    key_b = str(moto_s3.boto_client("kms").create_key()["KeyMetadata"]["Arn"])
    stack.env["KINKO_VAULT_KMS_KEY"] = key_b  # the CLI alone is enough for a re-wrap
    assert rewrap(stack) == (1, 0, 1, 1, 0)
    moto_s3.delete_kms_key("s3-vault-a")
    obj = s3.get_object(Bucket=stack.buckets["vault"], Key=f"kinko/{key}")["Body"].read()
    assert peek_header(io.BytesIO(obj)).key_id == kid(key_b)
    assert vault_row(stack, f1)[1] == kid(key_b)
    assert get_sha(stack, f1) == sha1
