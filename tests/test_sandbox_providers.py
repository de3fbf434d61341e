"""The E2B and Daytona adapters on their real SDKs, against the local fakes: what the port promises beyond
the shared contract, and what each provider needs openma to add (process-tree deadlines, "gone" is not a
timeout, keepalive that never shortens, labels, error mapping, leak sweeping)."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import attrs
import pytest

from openma.core.sweeper import sweep_sandboxes
from openma.errors import (
    InvalidInput,
    NotFound,
    SandboxError,
    SandboxGone,
    SandboxRateLimited,
)
from openma.ports.sandbox import SandboxSpec
from openma.testing.sandbox import _none_alive, _pid_in, _until

pytestmark = pytest.mark.anyio

PROVIDERS = ["e2b", "daytona"]


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(params=PROVIDERS)
def which(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def fake(which: str, request: pytest.FixtureRequest) -> Any:
    return request.getfixturevalue(f"{which}_fake").fake


@pytest.fixture
def provider(which: str, request: pytest.FixtureRequest) -> Any:
    return request.getfixturevalue(f"{which}_provider")


@pytest.fixture
async def box(provider: Any, remote_spec: Callable[..., SandboxSpec]) -> AsyncIterator[Any]:
    sandbox = await provider.create(remote_spec(lifetime=600))
    try:
        yield sandbox
    finally:
        await sandbox.destroy()


# -- commands ------------------------------------------------------------------------------------------------


async def test_stderr_stays_apart_when_the_command_times_out(box: Any) -> None:
    # Daytona's exec merges the streams and drops them on its own timeout; the adapter keeps both apart.
    timed = await box.exec("echo out; echo err >&2; sleep 5", timeout=0.3)
    assert timed.timed_out and timed.exit_code == 137
    assert (timed.stdout, timed.stderr) == ("out\n", "err\n")


async def test_exec_does_not_leave_children_behind(box: Any) -> None:
    result = await box.exec(
        "sh -c 'echo $$ > child.pid; exec sleep 30' & while [ ! -s child.pid ]; do sleep 0.01; done; echo done"
    )
    assert result.ok and result.stdout == "done\n"
    child = await _pid_in(box, "child.pid")
    await _until(lambda: _none_alive(box, [child]), 5, f"child {child} to be stopped with exec")


async def test_missing_cwd_for_a_background_process_is_not_found(box: Any) -> None:
    with pytest.raises(NotFound):
        await box.start("sleep 1", cwd="no/such/dir")


async def test_bad_arguments_are_invalid_input(box: Any) -> None:
    for timeout in (0, -1, float("nan")):
        with pytest.raises(InvalidInput):
            await box.exec("true", timeout=timeout)
    with pytest.raises(InvalidInput):
        await box.exec("true", env={"BAD NAME": "x"})
    with pytest.raises(InvalidInput):
        await box.exec("true", secrets=["NEVER_REGISTERED"])


async def test_output_is_capped(provider: Any, remote_spec: Callable[..., SandboxSpec]) -> None:
    sandbox = await provider.create(remote_spec(options={"max_output_bytes": 1000}))
    try:
        result = await sandbox.exec("head -c 5000 /dev/zero | tr '\\0' a")
        assert result.truncated and len(result.stdout) == 1000
    finally:
        await sandbox.destroy()


# -- background processes ------------------------------------------------------------------------------------


async def test_process_ids_cannot_name_paths(box: Any) -> None:
    for process_id in ("0123456789abcdef", "../../etc", "..", ""):
        with pytest.raises(NotFound):
            await box.process(process_id)
        with pytest.raises(NotFound):
            await box.kill(process_id)
        with pytest.raises(NotFound):
            await box.logs(process_id)


# -- files ---------------------------------------------------------------------------------------------------


async def test_files_are_bytes_and_absolute_paths_work(box: Any) -> None:
    data = os.urandom(4096)
    await box.write_file("deep/blob.bin", bytearray(data))
    back = await box.read_file(f"{box.workdir}/deep/blob.bin")
    assert type(back) is bytes and back == data
    with pytest.raises(InvalidInput):
        await box.write_file("x.txt", "not bytes")  # type: ignore[arg-type]


async def test_remove_semantics(box: Any) -> None:
    await box.write_file("dir/b.txt", b"b")
    with pytest.raises(InvalidInput):
        await box.remove("dir")  # a directory needs recursive=True
    with pytest.raises(NotFound):
        await box.remove("missing.txt")
    with pytest.raises(InvalidInput):
        await box.remove(".", recursive=True)  # never the workspace itself
    await box.remove("dir", recursive=True)
    assert not await box.exists("dir")


# -- snapshots, keepalive, lifecycle ---------------------------------------------------------------------


async def test_snapshots_stay_with_their_tenant(box: Any, sandbox_blobs: Any) -> None:
    await box.write_file("keep.txt", b"v1")
    ref = await box.snapshot(ttl=300)
    assert ref.key.startswith(f"t/{box.spec.tenant_id}/.openma/snapshots/{box.spec.session_id}/")
    assert (await sandbox_blobs.head(ref.key)).size == ref.size
    foreign = attrs.evolve(ref, key=ref.key.replace(box.spec.tenant_id, "ten_other", 1))
    with pytest.raises(InvalidInput):
        await box.restore(foreign)


async def test_e2b_keepalive_never_shortens_the_lifetime(
    e2b_provider: Any, e2b_fake: Any, remote_spec: Callable[..., SandboxSpec]
) -> None:
    sandbox = await e2b_provider.create(remote_spec(lifetime=600))
    try:
        record = e2b_fake.fake.sandboxes[sandbox.id]
        end = record.end_at
        await sandbox.keepalive(30)  # E2B's set_timeout(30) alone would cut 600 s down to 30 s
        assert record.end_at >= end - timedelta(seconds=2)
        await sandbox.keepalive(1200)
        assert record.end_at >= datetime.now(UTC) + timedelta(seconds=1190)
    finally:
        await sandbox.destroy()


async def test_e2b_sandbox_expires_without_keepalive(
    e2b_provider: Any, remote_spec: Callable[..., SandboxSpec]
) -> None:
    kept = await e2b_provider.create(remote_spec(lifetime=2))
    await kept.keepalive(60)
    short = await e2b_provider.create(remote_spec(lifetime=1))
    try:
        await anyio.sleep(1.3)
        assert (await kept.exec("echo alive")).stdout == "alive\n"
        with pytest.raises(SandboxGone):  # SandboxNotRunningException is not a command timeout
            await short.exec("echo alive")
    finally:
        await short.destroy()
        await kept.destroy()


async def test_daytona_keepalive_raises_the_idle_interval_and_refreshes(
    daytona_provider: Any, daytona_fake: Any, remote_spec: Callable[..., SandboxSpec]
) -> None:
    sandbox = await daytona_provider.create(remote_spec(lifetime=600))
    try:
        record = daytona_fake.fake.sandboxes[sandbox.id]
        assert (record.auto_stop_interval, record.auto_delete_interval) == (10, 0)
        before = record.last_activity
        await sandbox.keepalive(120)  # within 10 idle minutes already: only the activity clock moves
        assert record.auto_stop_interval == 10 and record.last_activity > before
        await sandbox.keepalive(3600)
        assert record.auto_stop_interval == 60
    finally:
        await sandbox.destroy()


async def test_labels_on_every_sandbox(
    provider: Any, fake: Any, which: str, remote_spec: Callable[..., SandboxSpec]
) -> None:
    spec = remote_spec(labels={"team": "infra"})
    sandbox = await provider.create(spec)
    try:
        record = fake.sandboxes[sandbox.id]
        labels = record.metadata if which == "e2b" else record.labels
        expected = {"openma": "1", "openma-tenant": spec.tenant_id, "openma-session": spec.session_id, "team": "infra"}
        assert expected.items() <= labels.items()
        found = dict(await provider.list_labeled({"openma-session": spec.session_id}))
        assert list(found) == [sandbox.id]
        assert isinstance(found[sandbox.id], datetime)
    finally:
        await sandbox.destroy()


async def test_destroy_by_id_is_idempotent(provider: Any, remote_spec: Callable[..., SandboxSpec]) -> None:
    sandbox = await provider.create(remote_spec())
    await sandbox.destroy()
    await provider.destroy_id(sandbox.id)
    await provider.destroy_id(sandbox.id)
    with pytest.raises(SandboxError):
        await sandbox.keepalive(10)
    assert await provider.list_labeled({"openma-session": sandbox.spec.session_id}) == []


async def test_a_sandbox_killed_elsewhere_is_gone_not_a_timeout(
    provider: Any, remote_spec: Callable[..., SandboxSpec]
) -> None:
    sandbox = await provider.create(remote_spec())
    await provider.destroy_id(sandbox.id)
    with pytest.raises(SandboxGone):
        await sandbox.exec("true", timeout=5)
    with pytest.raises(SandboxGone):
        await sandbox.write_file("x", b"x")
    await sandbox.destroy()


async def test_attach_by_id(provider: Any, remote_spec: Callable[..., SandboxSpec]) -> None:
    spec = remote_spec()
    sandbox = await provider.create(spec)
    try:
        await sandbox.write_file("note.txt", b"hi")
        again = await provider.attach(sandbox.id, spec)
        assert again.id == sandbox.id
        assert await again.read_file("note.txt") == b"hi"
        with pytest.raises(NotFound):
            await provider.attach("sbx-does-not-exist", spec)
    finally:
        await sandbox.destroy()


# -- errors, configuration -----------------------------------------------------------------------------


@pytest.fixture
def quick_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    from openma.adapters.sandboxes import daytona

    monkeypatch.setattr(daytona, "BACKOFF", 0.01)


@pytest.mark.usefixtures("quick_backoff")
async def test_rate_limit_on_create_is_mapped(
    provider: Any, fake: Any, which: str, remote_spec: Callable[..., SandboxSpec]
) -> None:
    route = ("POST", "/v2/sandboxes") if which == "e2b" else ("POST", "/api/sandbox")
    # Both the E2B SDK and openma's Daytona backoff retry a 429 a few times; a persistent one surfaces.
    fake.fail(*route, 429, "maximum number of concurrent sandboxes", times=4)
    try:
        with pytest.raises(SandboxRateLimited) as info:
            await provider.create(remote_spec())
        assert info.value.code == "sandbox_rate_limited" and info.value.http_status == 429
    finally:
        fake.faults.clear()


@pytest.mark.usefixtures("quick_backoff")
async def test_daytona_backs_off_on_a_transient_rate_limit(
    daytona_provider: Any, daytona_fake: Any, remote_spec: Callable[..., SandboxSpec]
) -> None:
    daytona_fake.fake.fail("POST", "/api/sandbox", 429, "Too Many Requests", times=1)
    sandbox = await daytona_provider.create(remote_spec())
    await sandbox.destroy()
    assert not daytona_fake.fake.faults[("POST", "/api/sandbox")]


# -- the leak sweeper ----------------------------------------------------------------------------------------


async def test_sweeper_destroys_only_old_openma_sandboxes(
    provider: Any, remote_spec: Callable[..., SandboxSpec]
) -> None:
    tenant = "ten_sweep"
    old = await provider.create(remote_spec(tenant_id=tenant))
    young = await provider.create(remote_spec(tenant_id=tenant))
    try:
        created = dict(await provider.list_labeled({"openma-tenant": tenant}))
        # "now" is just after the first one was made: only it is older than the limit.
        now = created[old.id] + (created[young.id] - created[old.id]) / 2
        limit = timedelta(0)
        dry = await sweep_sandboxes(provider, older_than=limit, labels={"openma-tenant": tenant}, now=now, dry_run=True)
        assert dry == [old.id]
        assert len(await provider.list_labeled({"openma-tenant": tenant})) == 2
        swept = await sweep_sandboxes(provider, older_than=limit, labels={"openma-tenant": tenant}, now=now)
        assert swept == [old.id]
        assert [sid for sid, _ in await provider.list_labeled({"openma-tenant": tenant})] == [young.id]
        with pytest.raises(SandboxGone):
            await old.exec("true")
        assert (await young.exec("echo ok")).stdout == "ok\n"
    finally:
        await old.destroy()
        await young.destroy()
