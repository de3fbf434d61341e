"""Strict mocks of the installed E2B and Daytona SDK classes, so that an SDK signature change fails a test.

Plain ``create_autospec`` misses three things in these SDKs, which the helpers fix:

* e2b's lifecycle methods (``kill``, ``set_timeout``, ``connect``, ``get_info``, ...) are
  ``class_method_variant`` descriptors: autospec turns them into *sync* mocks that demand ``self``. The
  helper specs a subclass in which each is replaced by the ``async def`` it wraps.
* The sub-objects (``sbx.commands`` / ``sbx.files``; Daytona's ``sb.process`` / ``sb.fs``) are properties,
  which autospec leaves unspecced (any attribute, any keyword passes): the helper puts autospecs of their
  real classes there.
* Daytona's ``AsyncSandbox`` is a pydantic model whose fields (``id``, ``state``, ...) are not class
  attributes: the helper sets the ones the adapter reads.

Two blind spots remain that autospec cannot see, checked by :func:`strict_kwargs`: e2b's
``**opts: Unpack[ApiParams]`` accepts any keyword at call time, and Daytona's params models drop unknown
fields silently (the adapter guards those with ``openma.adapters.sandboxes.daytona.model``).
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Mapping
from typing import Any
from unittest import mock


def _variant_free(cls: type) -> type:
    """A subclass of ``cls`` whose ``class_method_variant`` descriptors are the plain methods they wrap."""
    from e2b.sandbox.utils import class_method_variant

    body: dict[str, Any] = {}
    for klass in reversed(cls.__mro__):
        for name, value in vars(klass).items():
            if isinstance(value, class_method_variant):
                body[name] = value.method
    return type(f"Spec{cls.__name__}", (cls,), body)


def e2b_sandbox(sandbox_id: str = "sbx-spec") -> Any:
    """An autospec of ``e2b.AsyncSandbox`` with specced ``commands``/``files`` and a specced command handle."""
    from e2b import AsyncSandbox
    from e2b.sandbox_async.commands.command import Commands
    from e2b.sandbox_async.commands.command_handle import AsyncCommandHandle
    from e2b.sandbox_async.filesystem.filesystem import Filesystem

    sbx = mock.create_autospec(_variant_free(AsyncSandbox), instance=True)
    sbx.sandbox_id = sandbox_id
    sbx.commands = mock.create_autospec(Commands, instance=True)
    sbx.files = mock.create_autospec(Filesystem, instance=True)
    handle = mock.create_autospec(AsyncCommandHandle, instance=True)
    handle.stdout, handle.stderr = "", ""
    sbx.commands.run.return_value = handle
    return sbx


def daytona_sandbox(sandbox_id: str = "spec-sandbox", auto_stop_interval: int = 10) -> Any:
    """An autospec of ``daytona.AsyncSandbox`` with specced ``process``/``fs`` and the fields the adapter reads."""
    from daytona import AsyncSandbox, SandboxState
    from daytona._async.filesystem import AsyncFileSystem
    from daytona._async.process import AsyncProcess

    sb = mock.create_autospec(AsyncSandbox, instance=True)
    sb.id = sandbox_id
    sb.state = SandboxState.STARTED
    sb.auto_stop_interval = auto_stop_interval
    sb.process = mock.create_autospec(AsyncProcess, instance=True)
    sb.fs = mock.create_autospec(AsyncFileSystem, instance=True)
    return sb


def daytona_client() -> Any:
    from daytona import AsyncDaytona

    return mock.create_autospec(AsyncDaytona, instance=True)


def _opts_keys(fn: Any) -> set[str]:
    """Keys of the ``TypedDict`` behind a ``**kwargs: Unpack[...]`` parameter, if any."""
    sig = inspect.signature(fn)
    for param in sig.parameters.values():
        if param.kind is inspect.Parameter.VAR_KEYWORD:
            hints = typing.get_type_hints(fn, include_extras=True)
            hint = hints.get(param.name)
            args = typing.get_args(hint)
            if args and typing.is_typeddict(args[0]):
                return set(typing.get_type_hints(args[0]))
    return set()


def strict_kwargs(fn: Any, kwargs: Mapping[str, Any]) -> None:
    """Fail (``TypeError``) if ``kwargs`` has a name that ``fn`` neither declares nor takes in its typed ``**opts``."""
    sig = inspect.signature(fn)
    named = {
        name
        for name, p in sig.parameters.items()
        if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    }
    allowed = named | _opts_keys(fn)
    unknown = sorted(set(kwargs) - allowed)
    if unknown:
        raise TypeError(f"{getattr(fn, '__qualname__', fn)} has no keyword(s) {unknown}")
