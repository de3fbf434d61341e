"""Secrets benchmark: credential create + reveal through openma next to a hand-written app doing the same.

    python bench/vault_secrets.py             # medians of 3 runs
    python bench/vault_secrets.py --quick     # fewer operations, one run (a smoke test)

On the embedded engine (SQLite, WAL, ``synchronous=FULL``), one operation is a credential ``create`` (its
``auth`` sealed with AES-256-GCM, bound to its row, written in one unit that also checks the vault and its
limit of 20 active credentials; one vault per 20 credentials) followed by ``reveal`` (read, open, decode).
The raw baseline is what a careful app would write by hand with the same crypto: ``AESGCM`` encrypt of the
same JSON bytes with the same associated data, ``BEGIN IMMEDIATE`` / ``INSERT`` / ``COMMIT``, then a
``SELECT`` and a decrypt, (a) on the event-loop thread and (b) through one ``anyio.to_thread`` hop per step.
``aesgcm only`` is the crypto alone (seal + open of the same bytes, no storage), to show what it costs.

Rotation: credentials sealed under an old root secret, re-sealed by ``admin_rotate`` in batches of 500;
the figure is ciphertexts per second.
"""

# ruff: noqa: E402 (the imports follow the sys.path fix below)
from __future__ import annotations

import sys
from pathlib import Path

# Run as a script, this file's folder comes first on sys.path and its name would shadow the standard
# library's ``secrets`` module for everything imported below; take the folder off the path.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import argparse
import json
import os
import sqlite3
import statistics
import tempfile
import time
from typing import Any

import anyio
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from openma import Platform, Settings
from openma.adapters.sql.rotate import admin_rotate
from openma.core.ids import new_id

OLD = "bench-old-root-secret-0123456789"
NEW = "bench-new-root-secret-0123456789"
AUTH = {"type": "static_bearer", "token": "ghp_" + "x" * 36, "hosts": ["api.github.com"]}


async def openma_ops(root: Path, n: int) -> float:
    settings = Settings(sqlite_path=str(root / "o.db"), blob_url=f"file://{root}/b", root_secret=NEW)
    async with Platform.open(settings) as oma:
        t = oma.tenant((await oma.tenants.create(name="bench")).id)
        vaults = [(await t.vaults.create(name=f"v{i}")).id for i in range(n // 20 + 1)]
        start = time.perf_counter()
        for i in range(n):
            cred = await t.credentials.create(vault_id=vaults[i // 20], display_name=f"c{i}", auth=AUTH)
            await t.credentials.reveal(cred.id)
        return n / (time.perf_counter() - start)


def _raw_db(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("CREATE TABLE creds (tenant_id TEXT, id TEXT, auth TEXT, PRIMARY KEY (tenant_id, id)) WITHOUT ROWID")
    return db


async def raw_ops(root: Path, n: int, *, hop: bool) -> float:
    db = _raw_db(root / f"raw-{hop}.db")
    aead = AESGCM(os.urandom(32))
    plain = json.dumps(AUTH).encode()

    def create(cred_id: str) -> None:
        nonce = os.urandom(12)
        sealed = nonce + aead.encrypt(nonce, plain, f"t|creds|{cred_id}|auth".encode())
        db.execute("BEGIN IMMEDIATE")
        db.execute("INSERT INTO creds VALUES (?, ?, ?)", ("t", cred_id, sealed.hex()))
        db.execute("COMMIT")

    def reveal(cred_id: str) -> Any:
        raw = bytes.fromhex(
            db.execute("SELECT auth FROM creds WHERE tenant_id = ? AND id = ?", ("t", cred_id)).fetchone()[0]
        )
        return json.loads(aead.decrypt(raw[:12], raw[12:], f"t|creds|{cred_id}|auth".encode()))

    start = time.perf_counter()
    for _ in range(n):
        cred_id = new_id("crd")
        if hop:
            await anyio.to_thread.run_sync(create, cred_id)
            await anyio.to_thread.run_sync(reveal, cred_id)
        else:
            create(cred_id)
            reveal(cred_id)
    db.close()
    return n / (time.perf_counter() - start)


def aesgcm_only(n: int) -> float:
    aead = AESGCM(os.urandom(32))
    plain = json.dumps(AUTH).encode()
    start = time.perf_counter()
    for i in range(n):
        nonce = os.urandom(12)
        aad = f"t|creds|{i}|auth".encode()
        aead.decrypt(nonce, aead.encrypt(nonce, plain, aad), aad)
    return n / (time.perf_counter() - start)


async def rotation_rate(root: Path, n: int) -> float:
    path, blobs = str(root / "r.db"), f"file://{root}/rb"
    async with Platform.open(Settings(sqlite_path=path, blob_url=blobs, root_secret=OLD)) as oma:
        t = oma.tenant((await oma.tenants.create(name="bench")).id)
        for v in range(n // 20):
            vault = await t.vaults.create(name=f"v{v}")
            for i in range(20):
                await t.credentials.create(vault_id=vault.id, display_name=f"c{i}", auth=AUTH)
    async with Platform.open(
        Settings(sqlite_path=path, blob_url=blobs, root_secret=NEW, root_secret_previous=[OLD])
    ) as oma:
        client = oma.backend("vaults").client  # type: ignore[attr-defined]
        start = time.perf_counter()
        report = await admin_rotate(client, oma.keys, batch_size=500)
        elapsed = time.perf_counter() - start
        assert report.rotated == n // 20 * 20, report
        return report.rotated / elapsed


async def one_run(n: int, rotate_n: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        return {
            "openma create+reveal": await openma_ops(root, n),
            "raw on loop": await raw_ops(root, n, hop=False),
            "raw + thread hop": await raw_ops(root, n, hop=True),
            "aesgcm only": aesgcm_only(n * 10),
            "rotation ciphertexts/s": await rotation_rate(root, rotate_n),
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer operations, one run")
    args = parser.parse_args()
    n, rotate_n, runs = (100, 200, 1) if args.quick else (1000, 4000, 3)
    results = [anyio.run(one_run, n, rotate_n) for _ in range(runs)]
    med = {k: statistics.median(r[k] for r in results) for k in results[0]}
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cpu(s), {runs} run(s), n={n}")
    for name, value in med.items():
        print(f"  {name:<24} {value:>12,.0f} /s")
    ours = med["openma create+reveal"]
    print(f"  ratio openma / raw on loop:    {ours / med['raw on loop']:.2f}")
    print(f"  ratio openma / raw + hop:      {ours / med['raw + thread hop']:.2f}")


if __name__ == "__main__":
    main()
