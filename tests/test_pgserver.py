"""The throwaway test server and the suite's rules about it: one skip line without binaries, a hard error in CI,
and no server left behind, even when its owner crashes."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from openma.testing.pgserver import INSTALL_HINT, PgServer, PgServerUnavailable, find_bindir

ROOT = Path(__file__).resolve().parents[1]


def run_pytest(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if k != "OPENMA_REQUIRE_POSTGRES"}
    environ.update(env)
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args],
        cwd=ROOT,
        env=environ,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_no_binaries_is_one_skip_line_with_the_install_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENMA_PG_BINDIR", "/nonexistent")
    assert find_bindir() is None
    with pytest.raises(PgServerUnavailable, match=INSTALL_HINT):
        PgServer.start()
    result = run_pytest("tests/test_schema_drift.py", OPENMA_PG_BINDIR="/nonexistent")
    assert result.returncode == 0, result.stdout + result.stderr
    skip_lines = [line for line in result.stdout.splitlines() if line.startswith("SKIPPED")]
    assert len(skip_lines) == 1, result.stdout
    assert INSTALL_HINT in skip_lines[0]
    assert "SKIPPED [3]" in skip_lines[0]


def test_no_binaries_is_an_error_when_postgres_is_required() -> None:
    result = run_pytest("tests/test_schema_drift.py", OPENMA_PG_BINDIR="/nonexistent", OPENMA_REQUIRE_POSTGRES="1")
    assert result.returncode != 0
    assert "OPENMA_REQUIRE_POSTGRES=1" in result.stdout
    assert "SKIPPED" not in result.stdout


OWNER = textwrap.dedent(
    """
    import json, sys
    from openma.testing.pgserver import PgServer

    with PgServer.start() as server:
        print(json.dumps({"pid": server._process.pid, "root": str(server.root)}), flush=True)
        if sys.argv[1] == "crash":
            raise RuntimeError("the owner fails")
        sys.stdin.readline()  # wait to be killed
    """
)


def wait_gone(pid: int, timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        # A zombie (exited, not yet reaped by init) counts as gone.
        try:
            if Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z":
                return True
        except OSError:
            return True
        time.sleep(0.05)
    return False


@pytest.mark.postgres
@pytest.mark.parametrize("how", ["crash", "sigkill"])
def test_the_server_does_not_outlive_its_owner(how: str) -> None:
    if find_bindir() is None:
        pytest.skip(f"PostgreSQL server binaries not found; install them with: {INSTALL_HINT}")
    owner = subprocess.Popen(
        [sys.executable, "-c", OWNER, how],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert owner.stdout is not None
    started = json.loads(owner.stdout.readline())
    root = Path(started["root"])
    try:
        if how == "sigkill":
            owner.send_signal(signal.SIGKILL)
        owner.wait(30)
        assert wait_gone(started["pid"]), "postgres outlived its owner"
        if how == "crash":
            assert owner.returncode != 0
            assert not root.exists(), "the data directory was left behind"
    finally:
        if owner.poll() is None:
            owner.kill()
            owner.wait()
        shutil.rmtree(root, ignore_errors=True)
