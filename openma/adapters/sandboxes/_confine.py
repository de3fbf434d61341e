"""What a local sandbox's caller may name: paths confined to the workspace, and checked commands,
environments and timeouts (``InvalidInput`` before anything runs or is touched).

Paths are checked with ``realpath``: ``..``, absolute paths and symlinks resolving outside the workspace are
refused. This is not race-free against a command swapping symlinks at the same moment, which a hostile
command has no need for anyway (the local sandbox isolates nothing from one).
"""

from __future__ import annotations

import math
import os
import posixpath
import re
from collections.abc import Mapping
from typing import Final

from openma.errors import InvalidInput, NotFound

_ENV_NAME: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def resolve(workspace: str, path: str, *, follow: bool = True) -> str:
    """The host path of ``path`` (relative to ``workspace``, a real path); with ``follow=False`` the last
    component is not followed, so a symlink itself can be tested or removed."""
    if not isinstance(path, str) or not path or "\0" in path:
        raise InvalidInput("path must be a non-empty string without NUL bytes", field="path")
    if path.startswith("/"):
        raise InvalidInput(f"absolute path {path!r} refused: paths are relative to the workspace", path=path)
    norm = posixpath.normpath(path)
    if norm == ".." or norm.startswith("../"):
        raise InvalidInput(f"path {path!r} escapes the workspace", path=path)
    full = os.path.normpath(os.path.join(workspace, norm))
    if follow:
        real = os.path.realpath(full)
    else:
        real = os.path.join(os.path.realpath(os.path.dirname(full)), os.path.basename(full))
    if real != workspace and not real.startswith(workspace + os.sep):
        raise InvalidInput(f"path {path!r} escapes the workspace through a symlink", path=path)
    return real


def workdir(workspace: str, cwd: str | None) -> str:
    """The host directory a command runs in: the workspace, or ``cwd`` inside it (which must exist)."""
    if cwd is None or cwd in ("", "."):
        return workspace
    real = resolve(workspace, cwd)
    if not os.path.isdir(real):
        if os.path.exists(real):
            raise InvalidInput(f"cwd {cwd!r} is not a directory", cwd=cwd)
        raise NotFound(f"cwd {cwd!r} does not exist in the workspace", cwd=cwd)
    return real


def check_env(env: Mapping[str, str], what: str) -> None:
    for k, v in env.items():
        if not isinstance(k, str) or not _ENV_NAME.fullmatch(k):
            raise InvalidInput(f"{what} has an invalid variable name {k!r}", field=what)
        if not isinstance(v, str) or "\0" in v:
            raise InvalidInput(f"{what}[{k!r}] must be a string without NUL bytes", field=what)


def check_cmd(cmd: object) -> str:
    if not isinstance(cmd, str) or not cmd.strip() or "\0" in cmd:
        raise InvalidInput("cmd must be a non-empty string without NUL bytes", field="cmd")
    return cmd


def check_timeout(timeout: object) -> float:
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not 0 < timeout < math.inf:
        raise InvalidInput(f"timeout must be a positive number of seconds, got {timeout!r}", field="timeout")
    return float(timeout)
