"""The adapters' calls checked against the *installed* SDK signatures (strict autospecs, see ``tests/sdk_specs``):
a renamed or removed SDK parameter fails here, not in production."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any
from unittest import mock

import pytest

from openma.errors import ConfigError, NotFound, SandboxGone
from openma.ports.sandbox import SandboxSpec
from openma.settings import Settings
from tests import sdk_specs

pytestmark = pytest.mark.anyio

SPEC = SandboxSpec(
    tenant_id="ten_1", session_id="ses_1", labels={"team": "a"}, options={"workdir": "/w", "state_dir": "/s"}
)


# -- the helpers catch what plain mocks miss -------------------------------------------------------------


async def test_autospec_rejects_wrong_sdk_keywords() -> None:
    from e2b import AsyncSandbox

    sbx = sdk_specs.e2b_sandbox()
    with pytest.raises(TypeError):
        await sbx.commands.run("true", env={"A": "1"})  # the SDK says envs=
    await sbx.kill()  # a class_method_variant, awaited as the instance method it is
    with pytest.raises(TypeError):
        sdk_specs.strict_kwargs(AsyncSandbox.create, {"templat": "base"})  # **opts hides this from autospec
    sdk_specs.strict_kwargs(AsyncSandbox.create, {"template": "base", "api_key": "k", "sandbox_url": "u"})

    sb = sdk_specs.daytona_sandbox()
    with pytest.raises(TypeError):
        await sb.fs.download_file(remote_path="/x")  # positional only: (*args)
    with pytest.raises(TypeError):
        await sb.process.exec("true", envs={"A": "1"})  # the SDK says env=


def test_daytona_params_models_refuse_unknown_fields() -> None:
    from daytona import CreateSandboxFromSnapshotParams

    from openma.adapters.sandboxes.daytona import model

    assert CreateSandboxFromSnapshotParams(autostop=5).auto_stop_interval is None  # pydantic drops it silently
    with pytest.raises(ConfigError, match="autostop"):
        model(CreateSandboxFromSnapshotParams, autostop=5)


# -- E2B -----------------------------------------------------------------------------------------------------


def _e2b_box(sbx: Any) -> Any:
    from openma.adapters.sandboxes.e2b import E2BSandbox

    return E2BSandbox(sbx, spec=SPEC, blobs=None, workdir="/w", state_dir="/s")


async def test_e2b_sandbox_calls_match_the_sdk() -> None:
    from e2b import EntryInfo, FileType
    from e2b.sandbox.commands.command_handle import CommandResult

    sbx = sdk_specs.e2b_sandbox()
    handle = sbx.commands.run.return_value
    handle.wait.return_value = CommandResult(stdout="hi\n", stderr="", exit_code=0, error=None)
    box = _e2b_box(sbx)

    result = await box.exec("echo hi", timeout=3, env={"A": "1"})
    assert result.ok and result.stdout == "hi\n"
    kwargs = sbx.commands.run.await_args.kwargs
    assert kwargs["background"] is True and kwargs["envs"] == {"A": "1"} and kwargs["timeout"] > 3

    sbx.files.read.return_value = bytearray(b"\x00data")
    data = await box.read_file("f.bin")
    assert type(data) is bytes and data == b"\x00data"
    sbx.files.read.assert_awaited_with("/w/f.bin", format="bytes")

    await box.write_file("g.bin", b"\x01")
    sbx.files.write.assert_awaited_with("/w/g.bin", b"\x01")

    now = datetime.now(UTC)
    sbx.files.list.return_value = [
        EntryInfo(
            name="d",
            type=FileType.DIR,
            path="/w/d",
            size=0,
            mode=0o755,
            permissions="",
            owner="u",
            group="u",
            modified_time=now,
        ),
        EntryInfo(
            name="f",
            type=FileType.FILE,
            path="/w/f",
            size=3,
            mode=0o644,
            permissions="",
            owner="u",
            group="u",
            modified_time=now,
        ),
    ]
    listing = await box.list_files(".")
    assert [(f.path, f.is_dir, f.size) for f in listing] == [("d", True, 0), ("f", False, 3)]
    sbx.files.list.assert_awaited_with("/w", depth=1)

    sbx.files.exists.return_value = True
    assert await box.exists("f")

    await box.keepalive(90)
    sbx.set_timeout.assert_awaited_with(90)
    await box.destroy()
    sbx.kill.assert_awaited_once_with()


async def test_e2b_exit_codes_timeouts_and_gone() -> None:
    from e2b import CommandExitException, SandboxNotRunningException, TimeoutException

    sbx = sdk_specs.e2b_sandbox()
    handle = sbx.commands.run.return_value
    box = _e2b_box(sbx)

    handle.wait.side_effect = CommandExitException(stdout="o", stderr="e", exit_code=3, error="exit status 3")
    result = await box.exec("exit 3")
    assert (result.exit_code, result.stdout, result.stderr, result.timed_out) == (3, "o", "e", False)

    # envd's deadline: a TimeoutException, or an end event with -1 when it wins the race.
    handle.wait.side_effect = TimeoutException("deadline")
    assert (await box.exec("sleep 9", timeout=1)).timed_out
    handle.wait.side_effect = CommandExitException(stdout="", stderr="", exit_code=-1, error="signal: killed")
    assert (await box.exec("sleep 9", timeout=1)).timed_out

    # SandboxNotRunningException subclasses TimeoutException, yet it means the sandbox is gone.
    handle.wait.side_effect = SandboxNotRunningException("The sandbox was not found")
    with pytest.raises(SandboxGone):
        await box.exec("true")


async def test_e2b_provider_calls_match_the_sdk() -> None:
    from e2b import AsyncSandbox
    from e2b.sandbox.commands.command_handle import CommandResult
    from e2b.sandbox.sandbox_api import SandboxInfo
    from e2b.sandbox_async.paginator import AsyncSandboxPaginator

    from openma.adapters.sandboxes.e2b import E2BProvider

    settings = Settings(e2b_api_key="k", e2b_domain="example.test", e2b_template="tpl")
    provider = E2BProvider(settings, blobs=None)
    sbx = sdk_specs.e2b_sandbox()
    sbx.commands.run.return_value.wait.return_value = CommandResult(stdout="", stderr="", exit_code=0, error=None)
    now = datetime.now(UTC)
    info = SandboxInfo(
        sandbox_id="sbx-spec", sandbox_domain=None, template_id="tpl", name=None, metadata={"openma": "1"},
        started_at=now, end_at=now + timedelta(minutes=5), state="running", cpu_count=1, memory_mb=512,
        envd_version="0.6.4",
    )  # fmt: skip
    sbx.get_info.return_value = info
    paginator = mock.create_autospec(AsyncSandboxPaginator, instance=True)
    type(paginator).has_next = mock.PropertyMock(side_effect=[True, False])
    paginator.next_items.return_value = [info]
    real = {name: _real(AsyncSandbox, name) for name in ("create", "_cls_connect_sandbox", "list", "_cls_kill")}

    with (
        mock.patch.object(AsyncSandbox, "create", autospec=True, return_value=sbx) as create,
        mock.patch.object(AsyncSandbox, "_cls_connect_sandbox", autospec=True, return_value=sbx) as connect,
        mock.patch.object(AsyncSandbox, "list", autospec=True, return_value=paginator) as listing,
        mock.patch.object(AsyncSandbox, "_cls_kill", autospec=True, return_value=True) as kill,
    ):
        box = await provider.create(SPEC)
        kwargs = create.await_args.kwargs
        sdk_specs.strict_kwargs(real["create"], kwargs)
        assert kwargs["template"] == "tpl" and kwargs["timeout"] == 3600 and kwargs["domain"] == "example.test"
        assert kwargs["metadata"] == {"team": "a", "openma": "1", "openma-tenant": "ten_1", "openma-session": "ses_1"}
        assert box.id == "sbx-spec"

        await provider.attach("sbx-spec", SPEC)
        sdk_specs.strict_kwargs(real["_cls_connect_sandbox"], connect.await_args.kwargs)
        assert connect.await_args.args == ("sbx-spec",)

        assert await provider.list_labeled({"openma": "1"}) == [("sbx-spec", now)]
        sdk_specs.strict_kwargs(real["list"], listing.call_args.kwargs)

        await provider.destroy_id("sbx-spec")
        sdk_specs.strict_kwargs(real["_cls_kill"], kill.await_args.kwargs)
        assert kill.await_args.args == ("sbx-spec",)


def _real(cls: type, name: str) -> Any:
    """The function behind a class attribute (classmethods unwrapped), for the strict keyword check."""
    for klass in cls.__mro__:
        if name in vars(klass):
            value = vars(klass)[name]
            return value.__func__ if isinstance(value, classmethod) else value
    raise AttributeError(name)


# -- Daytona -------------------------------------------------------------------------------------------------


def _daytona_box(sb: Any) -> Any:
    from openma.adapters.sandboxes.daytona import DaytonaSandbox

    return DaytonaSandbox(sb, spec=SPEC, blobs=None, workdir="/w", state_dir="/s")


async def test_daytona_sandbox_calls_match_the_sdk() -> None:
    from daytona import FileDownloadRequest
    from daytona.common.filesystem import FileDownloadResponse
    from daytona.common.process import ExecuteResponse
    from daytona_toolbox_api_client_async.models.file_info import FileInfo

    sb = sdk_specs.daytona_sandbox(auto_stop_interval=10)
    box = _daytona_box(sb)

    sb.process.exec.return_value = ExecuteResponse(exit_code=2, result="merged\n")
    result = await box.exec("false", timeout=4, env={"A": "1"})
    assert result.exit_code == 2 and result.stdout == "merged\n"
    args, kwargs = sb.process.exec.await_args
    assert args[0].startswith("bash -lc ") and kwargs["env"] == {"A": "1"}
    assert isinstance(kwargs["timeout"], int) and kwargs["timeout"] > 4

    sb.fs.download_file.return_value = b"\x00x"
    assert await box.read_file("a.bin") == b"\x00x"
    sb.fs.download_file.assert_awaited_with("/w/a.bin")  # positional: the SDK's signature is (*args)

    sb.fs.download_files.return_value = [
        FileDownloadResponse(source="/s/p/0123456789abcdef/out", result=b"o"),
        FileDownloadResponse(source="/s/p/0123456789abcdef/err", result=b"e"),
    ]
    assert await box.logs("0123456789abcdef") == ("o", "e")
    requests = sb.fs.download_files.await_args.args[0]
    assert all(isinstance(r, FileDownloadRequest) for r in requests)

    await box.write_file("b.bin", bytearray(b"\x01"))
    sb.fs.upload_file.assert_awaited_with(b"\x01", "/w/b.bin")  # bytes: a str would be a local path
    assert type(sb.fs.upload_file.await_args.args[0]) is bytes

    sb.fs.list_files.return_value = [
        FileInfo(group="g", is_dir=False, mod_time="", mode="-rw-r--r--", modified_at="2026-01-01T00:00:00Z",
                 name="f", owner="o", path="/w/f", permissions="0644", size=4),
    ]  # fmt: skip
    (entry,) = await box.list_files(".")
    assert (entry.path, entry.size, entry.modified_at) == ("f", 4, datetime(2026, 1, 1, tzinfo=UTC))

    assert await box.exists("f")
    sb.fs.get_file_info.assert_awaited_with("/w/f")

    await box.keepalive(300)  # 5 idle minutes are within the 10 set: only the activity clock
    sb.set_autostop_interval.assert_not_awaited()
    sb.refresh_activity.assert_awaited()
    await box.keepalive(3600)
    sb.set_autostop_interval.assert_awaited_once_with(60)

    await box.destroy()
    sb.delete.assert_awaited_once_with()


async def test_daytona_errors_are_mapped() -> None:
    from daytona.common.errors import (
        DaytonaError,
        DaytonaFileNotFoundError,
        DaytonaNotFoundError,
        DaytonaProcessExecutionTimeoutError,
    )

    sb = sdk_specs.daytona_sandbox()
    box = _daytona_box(sb)
    sb.process.exec.side_effect = DaytonaProcessExecutionTimeoutError("timeout", status_code=408)
    result = await box.exec("sleep 99", timeout=1)
    assert result.timed_out and result.exit_code == 137
    sb.fs.download_file.side_effect = DaytonaFileNotFoundError("no file", 404, code="FILE_NOT_FOUND",
                                                               source="DAYTONA_DAEMON")  # fmt: skip
    with pytest.raises(NotFound):
        await box.read_file("x")
    sb.fs.download_file.side_effect = DaytonaNotFoundError("Sandbox not found", 404, source="DAYTONA_API")
    with pytest.raises(SandboxGone):
        await box.read_file("x")
    sb.fs.upload_file.side_effect = DaytonaError('404: {"message":"sandbox not found"}', status_code=404)
    with pytest.raises(SandboxGone):
        await box.write_file("x", b"x")


async def test_daytona_provider_calls_match_the_sdk() -> None:
    from daytona import CreateSandboxFromImageParams, CreateSandboxFromSnapshotParams, ListSandboxesQuery
    from daytona.common.process import ExecuteResponse

    from openma.adapters.sandboxes.daytona import DaytonaProvider

    client = sdk_specs.daytona_client()
    sb = sdk_specs.daytona_sandbox()
    sb.process.exec.return_value = ExecuteResponse(exit_code=0, result="")
    client.create.return_value = sb
    client.get.return_value = sb

    async def listing(*args: Any, **kwargs: Any) -> AsyncIterator[Any]:
        sb.created_at = "2026-01-01T00:00:00.000Z"
        yield sb

    client.list.side_effect = listing
    provider = DaytonaProvider(Settings(daytona_api_key="k"), client, blobs=None)

    box = await provider.create(SandboxSpec(tenant_id="t", session_id="s", lifetime=600, options=SPEC.options))
    params = client.create.await_args.args[0]
    assert isinstance(params, CreateSandboxFromSnapshotParams)
    assert (params.auto_stop_interval, params.auto_delete_interval) == (10, 0)
    assert params.labels == {"openma": "1", "openma-tenant": "t", "openma-session": "s"}
    assert "timeout" in client.create.await_args.kwargs
    assert box.id == sb.id

    image = provider.params(SandboxSpec(tenant_id="t", session_id="s", image="python:3.12-slim"))
    assert isinstance(image, CreateSandboxFromImageParams) and image.image == "python:3.12-slim"

    await provider.attach(sb.id, SPEC)
    client.get.assert_awaited_with(sb.id)

    assert await provider.list_labeled({"openma": "1"}) == [(sb.id, datetime(2026, 1, 1, tzinfo=UTC))]
    (query,) = client.list.call_args.args
    assert isinstance(query, ListSandboxesQuery) and query.labels == {"openma": "1"}

    await provider.destroy_id(sb.id)
    sb.delete.assert_awaited()
    await provider.aclose()
    client.close.assert_awaited_once_with()
