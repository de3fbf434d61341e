"""The ``openma`` commands that run the platform's runtime: ``worker`` and ``egress test``."""

from __future__ import annotations

import sys

import anyio
import click

from openma.cli_support import _fail, _run, _settings
from openma.errors import InvalidInput


@click.command("worker")
@click.option("--concurrency", type=click.IntRange(1, 10_000), default=8, show_default=True, help="Turns at once.")
@click.option("--model", "model_spec", default=None, help="Run every turn on this model (default: each agent's).")
@click.option(
    "--drain-timeout",
    type=click.FloatRange(0.001, 86_400),
    default=30.0,
    show_default=True,
    help="On SIGTERM/SIGINT, seconds to let running turns finish before handing them back.",
)
@click.option("--poll-interval", type=click.FloatRange(0.001, 3600), default=None, help="Longest idle sleep (s).")
def worker(concurrency: int, model_spec: str | None, drain_timeout: float, poll_interval: float | None) -> None:
    """Run turns for every session with input, and fire due wake-ups, until SIGTERM or SIGINT.

    The first signal stops claiming and drains (turns still running after --drain-timeout are handed back
    and recovered by the next worker); a second one hands them back at once.
    """
    import signal

    from openma.core.worker import Worker
    from openma.platform import Platform

    settings = _settings()

    async def go() -> None:
        async with Platform.open(settings) as oma:
            model = None
            if model_spec is not None:
                from openma.adapters.models import open_model

                model = await open_model(settings, model_spec)
            try:
                runner = Worker(
                    oma, model=model, concurrency=concurrency, drain_timeout=drain_timeout, poll_interval=poll_interval
                )
                async with anyio.create_task_group() as tg:

                    async def on_signals() -> None:
                        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as received:
                            async for signum in received:
                                if runner.state.status == "running":
                                    name = signal.Signals(signum).name
                                    click.echo(f"worker: {name}; draining (up to {drain_timeout:g}s)", err=True)
                                    runner.stop()
                                else:
                                    click.echo("worker: second signal; handing back running turns", err=True)
                                    tg.cancel_scope.cancel()

                    tg.start_soon(on_signals)
                    click.echo(f"worker: running (concurrency {concurrency})", err=True)
                    await runner.run()
                    tg.cancel_scope.cancel()
                click.echo(f"worker: stopped; {runner!r}", err=True)
            finally:
                if model is not None:
                    await model.aclose()

    _run(go)


@click.group()
def egress() -> None:
    """The egress proxy: what it would do for a session."""


@egress.command("test")
@click.option("--session", "session_id", required=True, help="The session whose policy and vaults apply.")
@click.option("--tenant", "tenant_id", default=None, help="The session's tenant (default: found by looking).")
@click.argument("url")
def egress_test(session_id: str, tenant_id: str | None, url: str) -> None:
    """Print what the egress proxy would do for URL from the session's sandbox: allowed or refused, why,
    and the NAMES of the credential headers it would inject (never their values)."""
    from urllib.parse import urlsplit

    from openma.core.egress import EgressResolverImpl
    from openma.errors import NotFound
    from openma.platform import Platform

    parts = urlsplit(url)
    try:
        host, port = parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        host, port = None, 0
    if parts.scheme not in ("http", "https") or not host:
        _fail(InvalidInput(f"{url!r} is not an http(s) URL", field="url"))
    settings = _settings()

    async def go() -> bool:
        async with Platform.open(settings) as oma:
            resolver = EgressResolverImpl(oma.tenant, oma.keys)
            tenants = [tenant_id] if tenant_id else []
            cursor: str | None = None
            while not tenant_id:
                page = await oma.tenants.list(limit=200, cursor=cursor, include_archived=True)
                tenants += [t.id for t in page]
                if page.next_cursor is None:
                    break
                cursor = page.next_cursor
            for candidate in tenants:
                try:
                    found = await resolver.explain(candidate, session_id, host, port)
                except NotFound:
                    continue
                grant = found.grant
                hosts = ", ".join(grant.allowed_hosts) or "none"
                click.echo(
                    f"session {session_id} (tenant {candidate}): networking {grant.networking}; allowed hosts: {hosts}"
                )
                click.echo(f"{host}:{port} resolves to: {', '.join(found.addresses) or 'nothing'}")
                click.echo(f"{'ALLOWED' if found.allowed else 'REFUSED'}: {found.reason}")
                click.echo(f"headers injected: {', '.join(found.injected) or 'none'}")
                return found.allowed
            raise NotFound(f"no live session {session_id}", session_id=session_id)

    if not _run(go):
        sys.exit(1)
