"""The restore drill of docs/deploy.md: back up the database, the vault and
the keys of a live instance, restore them into an empty one, and every
vaulted file decrypts to its original SHA-256 (`kinko vault verify`).  A
damaged vault object in the restored copy is named, and the drill fails."""

from __future__ import annotations

import hashlib
import os
import shutil
import sqlite3
import subprocess
from pathlib import Path

from .harness import Stack


def _vaulted(stack: Stack, token: str, n: int) -> dict[str, str]:
    out = {}
    for i in range(n):
        head = f"氏名,番号\n{i},{os.urandom(8).hex()}\n".encode()
        data = head + os.urandom(200_000).hex().encode()
        up = stack.api_upload(token, data, f"drill-{i}.csv").json()
        stack.wait_for(token, up["id"], {"clean"})
        stack.kinko("vault", "pull", up["id"], "--staff", "boss")
        out[up["id"]] = hashlib.sha256(data).hexdigest()
    return out


def _backup_and_restore(stack: Stack, target: Path) -> dict[str, str]:
    """Back up the live instance and restore it at ``target``: returns the
    environment of the restored instance."""
    home = target / "home"
    home.mkdir(parents=True)
    # Keys: kept by the office apart from the data (the vault private key
    # above all), restored from there.
    shutil.copytree(stack.home / "keys", home / "keys")
    env = {k: v for k, v in stack.env.items()}
    env["KINKO_HOME"] = str(home)
    if stack.profile == "scale":
        pg = stack.services["pg"]
        dump = target / "kinko.dump"
        pg.dump(dump)  # pg_dump -Fc while the stack runs
        pg.psql("CREATE DATABASE restored OWNER kinko_owner")
        r = subprocess.run([pg.tool("pg_restore"), "--no-owner", "--role=kinko_owner",
                            "-d", pg.url("kinko_owner", "owner-Passw0rd", "restored"), str(dump)],
                           capture_output=True, text=True, timeout=120, check=False)
        assert r.returncode == 0, r.stderr[-2000:]
        # The vault bucket copied object by object into an empty bucket.
        s3 = stack.services["s3"]
        client = s3.client()
        bucket = s3.new_bucket(client, versioned=True)
        for obj in stack.objects("vault"):
            client.copy_object(Bucket=bucket, Key=obj.key,
                               CopySource={"Bucket": obj.bucket, "Key": obj.key})
        env["KINKO_DATABASE_URL"] = pg.url("kinko_owner", "owner-Passw0rd", "restored")
        env["KINKO_VAULT_URL"] = f"s3://{bucket}/kinko"
        dz = s3.new_bucket(client)
        env["KINKO_DROPZONE_URL"] = f"s3://{dz}/kinko"
    else:
        with sqlite3.connect(stack.home / "kinko.db") as src, \
                sqlite3.connect(home / "kinko.db") as dst:
            src.backup(dst)  # the online backup API, not a file copy
        shutil.copytree(stack.home / "vault", home / "vault")
    return env


def test_a_restored_instance_decrypts_every_vaulted_file(stack: Stack, acme_token: str,
                                                         tmp_path: Path) -> None:
    expected = _vaulted(stack, acme_token, 3)
    env = _backup_and_restore(stack, tmp_path / "restore")
    try:
        stack.kinko("init", env=env)  # idempotent: adds what a restore lacks (TLS, folders)
        r = stack.kinko("vault", "verify", "--staff", "boss", env=env)
        (count,) = [int(line.split()[0]) for line in r.stdout.splitlines()
                    if "vaulted files decrypt" in line]
        assert count >= len(expected), r.stdout
        # The restored rows carry the digests taken at upload time.
        for upload_id, digest in expected.items():
            assert hashlib.sha256(stack.vault_bytes(upload_id, env=env)).hexdigest() == digest

        # A damaged object in the restored vault is found and named.
        victim = next(iter(expected))
        _damage(stack, env, victim)
        bad = stack.kinko("vault", "verify", "--staff", "boss", env=env, check=False)
        assert bad.returncode != 0
        assert f"{victim} FAILED" in bad.stdout
    finally:
        if stack.profile == "scale":
            stack.services["pg"].psql("DROP DATABASE IF EXISTS restored WITH (FORCE)")
    # The live instance was only read.
    assert stack.kinko("vault", "verify", "--staff", "boss").returncode == 0
    assert stack.kinko("audit", "verify").returncode == 0


def _damage(stack: Stack, env: dict[str, str], upload_id: str) -> None:
    if stack.profile == "scale":
        bucket = env["KINKO_VAULT_URL"].removeprefix("s3://").split("/", 1)[0]
        client = stack.services["s3"].client()
        listed = client.list_objects_v2(Bucket=bucket, Prefix=f"kinko/vault/{upload_id}.")
        [key] = [o["Key"] for o in listed["Contents"]]
        body = bytearray(client.get_object(Bucket=bucket, Key=key)["Body"].read())
        body[len(body) // 2] ^= 0x01
        client.put_object(Bucket=bucket, Key=key, Body=bytes(body))
        return
    root = Path(env["KINKO_HOME"]) / "vault" / "objects"
    [path] = [p for p in root.rglob("*") if p.is_file()
              and p.relative_to(root).as_posix().startswith(f"vault/{upload_id}.")]
    body = bytearray(path.read_bytes())
    body[len(body) // 2] ^= 0x01
    path.write_bytes(bytes(body))
