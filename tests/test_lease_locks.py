"""Lease locks: exclusive while the holder lives, freed the moment it dies (real processes, real connections)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import anyio
import pytest

from openma import SessionBusy
from openma.adapters.locks.flock import FlockLeaseLock

pytestmark = pytest.mark.anyio


async def test_flock_is_exclusive_within_a_process(tmp_path: Path) -> None:
    locks = FlockLeaseLock(tmp_path / "locks")
    first = await locks.acquire("tnt_a/ses_1", wait=0)
    with pytest.raises(SessionBusy):
        await locks.acquire("tnt_a/ses_1", wait=0)
    other = await locks.acquire("tnt_a/ses_2", wait=0)  # another key is independent
    got: list[object] = []
    calling = anyio.Event()

    async def waiter() -> None:
        calling.set()
        got.append(await locks.acquire("tnt_a/ses_1", wait=5))

    async with anyio.create_task_group() as tg:
        tg.start_soon(waiter)
        await calling.wait()
        await anyio.wait_all_tasks_blocked()  # the waiter's only await left is acquire: it is blocked in there
        assert got == []
        await first.release()
    assert len(got) == 1
    await first.release()  # idempotent
    assert not first.alive()
    await other.release()


def _hold_in_child(lock_dir: Path, key: str) -> subprocess.Popen[str]:
    code = textwrap.dedent(
        f"""
        import anyio, sys
        from openma.adapters.locks.flock import FlockLeaseLock
        async def main():
            handle = await FlockLeaseLock({str(lock_dir)!r}).acquire({key!r}, wait=0)
            print("held", flush=True)
            await anyio.sleep(60)
        anyio.run(main)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "held"
    return proc


async def test_flock_is_freed_when_the_holder_is_killed(tmp_path: Path) -> None:
    proc = _hold_in_child(tmp_path / "locks", "k")
    locks = FlockLeaseLock(tmp_path / "locks")
    try:
        with pytest.raises(SessionBusy):
            await locks.acquire("k", wait=0.1)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        handle = await locks.acquire("k", wait=2)  # no lease timeout to wait out
        assert handle.alive()
        await handle.release()
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.postgres
async def test_pg_advisory_lock_is_exclusive_and_dies_with_its_connection(pg_url: str) -> None:
    import psycopg

    from openma.adapters.locks.pg_advisory import PgAdvisoryLeaseLock

    locks = PgAdvisoryLeaseLock(pg_url, psycopg)
    first = await locks.acquire("tnt_a/ses_1", wait=0)
    assert first.alive()
    with pytest.raises(SessionBusy):
        await locks.acquire("tnt_a/ses_1", wait=0.1)
    # Terminate the holder's backend: the server frees its lock at once.
    async with await psycopg.AsyncConnection.connect(pg_url, autocommit=True) as admin:
        await admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory' AND pid <> pg_backend_pid()"
        )
    second = await locks.acquire("tnt_a/ses_1", wait=5)
    assert second.alive()
    with pytest.raises(psycopg.OperationalError):
        await first._conn.execute("SELECT 1")  # the old holder's connection is gone
    assert not first.alive()
    await first.release()
    await second.release()
    third = await locks.acquire("tnt_a/ses_1", wait=0)
    await third.release()
