"""The ``openma`` command line (``python -m openma ...``)."""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable
from typing import Any, NoReturn, TypeVar

import anyio
import click

from openma.errors import OpenmaError
from openma.settings import STORE_NAMES, Settings

T = TypeVar("T")


def _fail(exc: OpenmaError) -> NoReturn:
    click.echo(f"error [{exc.code}]: {exc.message}", err=True)
    sys.exit(2)


def _settings() -> Settings:
    try:
        return Settings.from_env()
    except OpenmaError as exc:
        _fail(exc)


def _run(fn: Callable[[], Awaitable[T]]) -> T:
    try:
        return anyio.run(fn)
    except OpenmaError as exc:
        _fail(exc)


@click.group()
@click.version_option(package_name="openma")
def main() -> None:
    """openma: build managed-agent platforms. Settings come from OPENMA_* environment variables."""


@main.command()
def demo() -> None:
    """Run the main job on the embedded default (SQLite + local files under ./.openma)."""
    from openma.demo import run_demo

    settings = _settings()
    _run(lambda: run_demo(settings, click.echo))


@main.command()
@click.option("--stamp", is_flag=True, help="Record migrations as applied without running them.")
@click.option("--upto", default=None, help="With --stamp: stop after this migration (name or number).")
@click.option("--status", "show_status", is_flag=True, help="Only show which migrations are applied.")
def migrate(stamp: bool, upto: str | None, show_status: bool) -> None:
    """Apply pending migrations on every configured backend."""
    from openma import registry
    from openma.adapters.sql import migrate as migrations

    settings = _settings()

    async def go() -> None:
        for name in sorted({settings.backend_for(s) for s in STORE_NAMES}):
            backend: Any = await registry.store_backends.load(name)(settings)
            try:
                client = getattr(backend, "client", None)
                if show_status:
                    if client is None:
                        click.echo(f"{name}: not a SQL backend; no migration status")
                        continue
                    for st in await migrations.status(client):
                        mark = "applied" if st.applied else "pending"
                        click.echo(f"{name}: {st.name} {mark}")
                elif stamp:
                    if client is None:
                        raise click.ClickException(f"backend {name!r} is not a SQL backend; nothing to stamp")
                    done = await migrations.stamp(client, upto)
                    click.echo(f"{name}: stamped {', '.join(done) or 'nothing (already recorded)'}")
                else:
                    done = await backend.migrate()
                    click.echo(f"{name}: applied {', '.join(done) or 'nothing (up to date)'}")
            finally:
                await backend.aclose()

    _run(go)


@main.command()
def doctor() -> None:
    """Check the configuration and that every backend opens and is migrated."""
    from openma import registry
    from openma.adapters.sql import migrate as migrations

    settings = _settings()
    click.echo(f"settings: {settings!r}")
    for store in STORE_NAMES:
        click.echo(f"  {store:<13} -> {settings.backend_for(store)}")

    async def go() -> None:
        problems = 0
        for name in sorted({settings.backend_for(s) for s in STORE_NAMES}):
            try:
                backend: Any = await registry.store_backends.load(name)(settings)
            except OpenmaError as exc:
                click.echo(f"backend {name}: FAILED to open [{exc.code}] {exc.message}")
                problems += 1
                continue
            try:
                client = getattr(backend, "client", None)
                if client is not None:
                    pending = [s.name for s in await migrations.status(client) if not s.applied]
                    state = f"pending migrations: {', '.join(pending)}" if pending else "schema up to date"
                    click.echo(f"backend {name}: ok ({client!r}); {state}")
                else:
                    click.echo(f"backend {name}: ok")
            finally:
                await backend.aclose()
        if problems:
            raise click.ClickException(f"{problems} problem(s) found")

    _run(go)


@main.group()
def sandboxes() -> None:
    """Sandbox provider maintenance."""


@sandboxes.command("sweep")
@click.option("--older-than", required=True, help="Destroy sandboxes created longer ago than this (90m, 2h, 1d).")
@click.option("--provider", default=None, help="Sandbox provider (default: OPENMA_SANDBOX).")
@click.option("--dry-run", is_flag=True, help="Only list what would be destroyed.")
def sandboxes_sweep(older_than: str, provider: str | None, dry_run: bool) -> None:
    """Destroy leaked sandboxes: those labelled openma=1 and older than --older-than."""
    from openma import registry
    from openma.core.sweeper import parse_duration, sweep_sandboxes

    settings = _settings()
    name = provider or settings.sandbox

    async def go() -> None:
        limit = parse_duration(older_than)
        opened: Any = await registry.sandboxes.load(name)(settings, blobs=None)
        try:
            ids = await sweep_sandboxes(opened, older_than=limit, dry_run=dry_run)
        finally:
            await opened.aclose()
        verb = "would destroy" if dry_run else "destroyed"
        for sandbox_id in ids:
            click.echo(f"{name}: {verb} {sandbox_id}")
        click.echo(f"{name}: {verb} {len(ids)} sandbox(es) older than {older_than}")

    _run(go)


if __name__ == "__main__":  # pragma: no cover
    main()
