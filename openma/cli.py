"""The ``openma`` command line (``python -m openma ...``)."""

from __future__ import annotations

import os
from typing import Any

import attrs
import click

from openma.cli_runtime import egress, worker
from openma.cli_support import _duration, _run, _settings
from openma.settings import STORE_NAMES


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
    missing = not os.path.exists(os.path.expanduser(settings.sqlite_path))

    async def go() -> None:
        for name in sorted({settings.backend_for(s) for s in STORE_NAMES}):
            if show_status and name == "cf" and missing:  # a status check must not create the database
                for migration in migrations.load_migrations("sqlite"):
                    click.echo(f"{name}: {migration.name} pending (the database does not exist yet)")
                continue
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
    """Check the configuration and every part it names: store backends (opened only if their database
    exists), the blob store's driver and the sandbox provider's SDK. Creates nothing."""
    from openma.doctor import diagnose

    settings = _settings()
    click.echo(f"settings: {settings!r}")
    for store in STORE_NAMES:
        click.echo(f"  {store:<13} -> {settings.backend_for(store)}")
    checks = _run(lambda: diagnose(settings))
    for check in checks:
        click.echo(f"{check.part}: {'ok' if check.ok else 'FAILED'}: {check.detail}")
    problems = sum(not check.ok for check in checks)
    if problems:
        raise click.ClickException(f"{problems} problem(s) found")
    click.echo(f"all {len(checks)} parts ok")


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
    from openma.core.sweeper import sweep_sandboxes

    settings = _settings()
    name = provider or settings.sandbox
    limit = _duration(older_than)

    async def go() -> None:
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


@main.group()
def sessions() -> None:
    """Session operations: tail a log, prune it, collect garbage."""


@sessions.command("tail")
@click.argument("tenant_id")
@click.argument("session_id")
@click.option("--after", default=0, show_default=True, help="Start after this seq.")
@click.option("--follow/--no-follow", default=True, show_default=True, help="Keep following new events.")
def sessions_tail(tenant_id: str, session_id: str, after: int, follow: bool) -> None:
    """Print a session's events as JSON lines (seq, type, data), then follow new ones."""
    import json

    from openma.platform import Platform

    settings = _settings()

    async def go() -> None:
        async with Platform.open(settings) as oma:
            t = oma.tenant(tenant_id)
            if not follow:
                cursor_after = after
                while True:
                    page = await t.sessions.events(session_id, after=cursor_after, limit=500)
                    for event in page:
                        click.echo(json.dumps({"seq": event.seq, "type": event.type, "data": event.data}))
                    if len(page) < 500:
                        return
                    cursor_after = page.items[-1].seq
            async with t.sessions.subscribe(session_id, after=after) as tail:
                async for event in tail:
                    click.echo(json.dumps({"seq": event.seq, "type": event.type, "data": event.data}))

    try:
        _run(go)
    except KeyboardInterrupt:  # pragma: no cover - interactive
        pass


@sessions.command("prune")
@click.argument("tenant_id")
@click.argument("session_id")
@click.option("--before-seq", type=int, default=None, help="Remove events with a seq below this.")
@click.option("--older-than", default=None, help="Remove events older than this (90m, 2h, 7d).")
@click.option("--keep-last", type=int, default=None, help="Keep only this many newest events.")
@click.option("--batch-size", type=int, default=1000, show_default=True)
def sessions_prune(
    tenant_id: str,
    session_id: str,
    before_seq: int | None,
    older_than: str | None,
    keep_last: int | None,
    batch_size: int,
) -> None:
    """Remove a session's oldest events (and their spilled blobs), in bounded batches."""
    from datetime import UTC, datetime

    from openma.platform import Platform

    settings = _settings()
    age = _duration(older_than) if older_than is not None else None

    async def go() -> None:
        cutoff = datetime.now(UTC) - age if age is not None else None
        async with Platform.open(settings) as oma:
            removed = await oma.tenant(tenant_id).sessions.prune(
                session_id, before_seq=before_seq, older_than=cutoff, keep_last=keep_last, batch_size=batch_size
            )
            click.echo(f"{session_id}: removed {removed} event(s)")

    _run(go)


@main.command("gc")
@click.option("--older-than", required=True, help="Remove what is older than this (30d, 12h, 90m; a unit is required).")
@click.option("--tenant", "tenant_ids", multiple=True, help="Only these tenants (default: every tenant).")
@click.option("--batch-size", type=int, default=1000, show_default=True)
@click.option("--dry-run", is_flag=True, help="Remove nothing; report what would be removed.")
def gc(older_than: str, tenant_ids: tuple[str, ...], batch_size: int, dry_run: bool) -> None:
    """Collect garbage: old events, finalized streams, settled inbox rows, unfinished deletes, expired KV."""
    from datetime import UTC, datetime

    from openma.models import GcReport
    from openma.platform import Platform

    settings = _settings()
    age = _duration(older_than)

    async def go() -> None:
        cutoff = datetime.now(UTC) - age
        verb = "would remove" if dry_run else "removed"
        click.echo(
            f"{'dry run (nothing is removed): ' if dry_run else ''}gc of what is older than {older_than.strip()}"
            f" (before {cutoff:%Y-%m-%d %H:%M:%S} UTC)"
        )
        async with Platform.open(settings) as oma:
            targets = list(tenant_ids)
            if not targets:
                cursor = None
                while True:
                    page = await oma.tenants.list(limit=500, cursor=cursor, include_archived=True)
                    targets += [tenant.id for tenant in page]
                    cursor = page.next_cursor
                    if cursor is None:
                        break
            total = GcReport()
            expired_total = 0
            for tenant_id in targets:
                t = oma.tenant(tenant_id)
                report = await t.sessions.gc(cutoff, batch_size=batch_size, dry_run=dry_run)
                expired = None if dry_run else await t.kv.sweep_expired()
                total = GcReport(**{k: getattr(total, k) + getattr(report, k) for k in attrs.fields_dict(GcReport)})
                expired_total += expired or 0
                click.echo(f"{tenant_id}: {verb} {_gc_counts(report, expired)}")
            click.echo(
                f"total ({len(targets)} tenant(s)): {verb} {_gc_counts(total, None if dry_run else expired_total)}"
            )

    _run(go)


@main.group()
def keys() -> None:
    """Root secret operations: which key ids protect the stored secrets, and rotation to the current one."""


def _sealed_by_backend(oma: Any) -> dict[str, tuple[Any, list[Any]]]:
    """Each backend holding sealed columns, with those columns (credentials with vaults, secrets with sessions)."""
    from openma.adapters.sql.rotate import SEALED

    out: dict[str, tuple[Any, list[Any]]] = {}
    for col in SEALED:
        backend = oma.backend(col.store)
        if getattr(backend, "client", None) is None:
            raise click.ClickException(f"backend {backend.name!r} is not a SQL backend; it rotates its own secrets")
        out.setdefault(backend.name, (backend.client, []))[1].append(col)
    return out


@keys.command("status")
def keys_status() -> None:
    """Show how many ciphertexts each key id still protects (a retired key can go once it protects none)."""
    from openma.adapters.sql.rotate import admin_key_status
    from openma.platform import Platform

    settings = _settings()

    async def go() -> None:
        async with Platform.open(settings) as oma:
            ring = oma.keys
            counts: dict[str, int] = {}
            for client, columns in _sealed_by_backend(oma).values():
                for key_id, n in (await admin_key_status(client, columns)).items():
                    counts[key_id] = counts.get(key_id, 0) + n
        role = {key_id: "previous" for key_id in ring.key_ids[1:]} | {ring.key_id: "current"}
        click.echo(f"current key id: {ring.key_id}")
        for key_id in sorted(set(counts) | set(role), key=lambda k: (k != ring.key_id, k)):
            click.echo(f"  {key_id}  {role.get(key_id, 'UNKNOWN'):<8}  {counts.get(key_id, 0)} ciphertext(s)")

    _run(go)


@keys.command("rotate")
@click.option("--batch-size", type=click.IntRange(1, 10_000), default=500, show_default=True)
def keys_rotate(batch_size: int) -> None:
    """Re-encrypt every stored secret under OPENMA_ROOT_SECRET, in batches; safe to stop and run again.

    Keep the old secret in OPENMA_ROOT_SECRET_PREVIOUS until this reports nothing unreadable and
    `keys status` shows it protects no ciphertext.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from openma.adapters.sql.rotate import RotationReport, admin_pending, admin_rotate
    from openma.platform import Platform

    settings = _settings()

    async def go() -> RotationReport:
        total = RotationReport()
        async with Platform.open(settings) as oma:
            ring = oma.keys
            parts = _sealed_by_backend(oma)
            pending = sum([await admin_pending(client, ring, columns) for client, columns in parts.values()])
            columns_shown = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn())
            with Progress(*columns_shown, transient=False) as bar:
                task = bar.add_task(f"re-encrypting under key id {ring.key_id}", total=pending)
                for client, columns in parts.values():
                    total = total + await admin_rotate(
                        client, ring, columns=columns, batch_size=batch_size, progress=lambda n: bar.advance(task, n)
                    )
            click.echo(
                f"rotated {total.rotated} ciphertext(s) to key id {ring.key_id}; "
                f"{total.skipped} already current or changed meanwhile; {total.unreadable} unreadable"
            )
        return total

    report = _run(go)
    if report.unreadable:
        raise click.ClickException(
            f"{report.unreadable} ciphertext(s) could not be opened with the configured root secrets; "
            "add their secret to OPENMA_ROOT_SECRET_PREVIOUS and run again (see: keys status)"
        )


def _gc_counts(report: Any, expired: int | None) -> str:
    kv = "kv not counted (expired keys are already invisible)" if expired is None else f"kv {expired}"
    return (
        f"events {report.events}, inbox {report.inbox}, streams {report.streams},"
        f" sessions {report.sessions}, blobs {report.blobs}, expired blobs {report.expired_blobs}, {kv}"
    )


main.add_command(worker)
main.add_command(egress)


if __name__ == "__main__":  # pragma: no cover
    main()
