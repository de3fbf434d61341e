"""Session rows: snapshots frozen at creation, keyset lists, metadata merges, batched deletes."""

from __future__ import annotations

import builtins
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from openma.adapters.sql.archive import archive_row
from openma.adapters.sql.listing import created_between, list_page
from openma.adapters.sql.partial import PartialUpdate
from openma.adapters.sql.sessions.context import (
    DEFAULT_BATCH,
    WRITE_RETRIES,
    SessionContext,
    SessionPart,
    check_fence,
    check_title,
    session_of,
    snapshot_text,
)
from openma.adapters.sql.sessions.log import SqlEventLog
from openma.adapters.sql.sessions.retention import SqlRetention
from openma.adapters.sql.sessions.schedules import forget_statements
from openma.adapters.sql.wakeups import EVENTS
from openma.core import events as ev
from openma.core import validate
from openma.core.clock import ms_to_datetime
from openma.core.ids import check_id, new_id
from openma.core.jsonutil import dumps, loads
from openma.core.lifecycle import check_status, sources_for
from openma.core.pagination import (
    Order,
)
from openma.errors import (
    Conflict,
    InvalidInput,
    NotFound,
)
from openma.models import Event, Page, Session
from openma.ports.sessions import UNSET
from openma.ports.sql import Statement


def _vault_ids(value: Sequence[str]) -> list[str]:
    if isinstance(value, str) or not isinstance(value, Sequence):
        raise InvalidInput("vault_ids must be a list of vault ids", field="vault_ids")
    return list(dict.fromkeys(check_id(v, "vlt", what="vault_ids[]") for v in value))


class SqlSessionRows(SessionPart):
    """The :class:`~openma.ports.sessions.SessionRows` port: create, read, list, update, archive, delete, status."""

    def __init__(self, ctx: SessionContext, log: SqlEventLog, retention: SqlRetention) -> None:
        super().__init__(ctx)
        self._log = log
        self._retention = retention

    async def create(
        self,
        *,
        agent_id: str,
        environment_id: str,
        agent_snapshot: dict[str, Any],
        environment_snapshot: dict[str, Any],
        title: str | None = None,
        metadata: dict[str, Any] | None = None,
        vault_ids: Sequence[str] = (),
    ) -> Session:
        check_id(agent_id, "agt", what="agent_id")
        vaults = _vault_ids(vault_ids)
        check_id(environment_id, "env", what="environment_id")
        agent_text = snapshot_text(agent_snapshot, "agent_snapshot")
        environment_text = snapshot_text(environment_snapshot, "environment_snapshot")
        title = check_title(title)
        meta = validate.metadata(metadata)
        await self._ctx.tenant.ensure()
        now = self._ctx.clock.now_ms()
        session_id = new_id("ses", now_ms=now)
        await self._ctx.db.run_batch(
            [
                Statement(
                    "INSERT INTO sessions (tenant_id, id, agent_id, environment_id, agent_snapshot,"
                    " environment_snapshot, title, metadata, status, last_seq, retained_from_seq, last_inbox_pos,"
                    " lease_epoch, created_at, updated_at, vault_ids)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'idle', 0, 1, 0, 0, ?, ?, ?)",
                    (
                        self.tenant_id,
                        session_id,
                        agent_id,
                        environment_id,
                        agent_text,
                        environment_text,
                        title,
                        dumps(meta),
                        now,
                        now,
                        dumps(vaults),
                    ),
                )
            ]
        )
        created = ms_to_datetime(now)
        return Session(
            id=session_id,
            tenant_id=self.tenant_id,
            agent_id=agent_id,
            environment_id=environment_id,
            title=title,
            metadata=meta,
            status="idle",
            agent=loads(agent_text),
            environment=loads(environment_text),
            last_seq=0,
            first_seq=1,
            created_at=created,
            updated_at=created,
            vault_ids=vaults,
        )

    async def get(self, session_id: str) -> Session:
        return session_of(await self._ctx.row(session_id))

    async def list(
        self,
        *,
        limit: int = 50,
        cursor: str | None = None,
        order: Order = "desc",
        agent_id: str | None = None,
        environment_id: str | None = None,
        status: str | None = None,
        include_archived: bool = False,
        created_after: datetime | None = None,
        created_before: datetime | None = None,
    ) -> Page[Session]:
        include_archived = validate.flag(include_archived, "include_archived")
        where: list[str] = ["tenant_id = ?", "deleted_at IS NULL"]
        params: list[Any] = [self.tenant_id]
        if not include_archived:
            where.append("archived_at IS NULL")
        if agent_id is not None:
            where.append("agent_id = ?")
            params.append(check_id(agent_id, "agt", what="agent_id"))
        if environment_id is not None:
            where.append("environment_id = ?")
            params.append(check_id(environment_id, "env", what="environment_id"))
        if status is not None:
            where.append("status = ?")
            params.append(check_status(status))
        after, before = created_between(where, params, created_after, created_before)
        return await list_page(
            self._ctx.db,
            table="sessions",
            where=where,
            params=params,
            scope=(self.tenant_id, bool(include_archived), agent_id, environment_id, status, after, before),
            cursor=cursor,
            order=order,
            limit=limit,
            to_model=session_of,
        )

    async def update(
        self, session_id: str, *, title: str | None = UNSET, metadata: dict[str, Any] | None = None
    ) -> Session:
        """Change the title and/or merge a metadata patch; only what is named is written.

        The ``UPDATE`` assigns the title only when one is given and merges the patch into the stored metadata
        in the same statement, so a concurrent update of another field (or of other metadata keys) is never
        reverted. An update that changes nothing returns the session as read, without a write.
        """
        new_title = UNSET if title is UNSET else check_title(title)
        if metadata is not None and not isinstance(metadata, dict):
            raise InvalidInput("metadata must be an object", field="metadata")
        await self._ctx.tenant.ensure()
        for _ in range(WRITE_RETRIES):
            row = await self._ctx.row(session_id)
            if row["archived_at"] is not None:
                raise Conflict(f"session {session_id} is archived and cannot be updated", session_id=session_id)
            current_meta = loads(row["metadata"])
            # Validates the patch and the merged size against the current row (clear errors before writing).
            meta = validate.merge_metadata(current_meta, metadata) if metadata is not None else current_meta
            if (new_title is UNSET or new_title == row["title"]) and meta == current_meta:
                return session_of(row)
            update = PartialUpdate(self._ctx.db.dialect)
            if new_title is not UNSET:
                update.set("title", new_title)
            if metadata:
                update.merge("metadata", metadata, read=(row["metadata"], meta))
            result = await self._ctx.db.run_batch(
                [
                    update.statement(
                        "sessions",
                        "tenant_id = ? AND id = ? AND deleted_at IS NULL AND archived_at IS NULL",
                        (self.tenant_id, session_id),
                        self._ctx.clock.now_ms(),
                    )
                ]
            )
            if result.committed:
                return session_of(result.rows[0][0])
            # Deleted, archived, or the merged metadata would now be over its limits: re-read and report.
        raise Conflict(f"session {session_id} kept changing under this update; retry", session_id=session_id)

    async def archive(self, session_id: str) -> Session:
        check_id(session_id, "ses", what="session_id")
        row = await archive_row(
            self._ctx.db,
            "sessions",
            tenant_id=self.tenant_id,
            row_id=session_id,
            now=self._ctx.clock.now_ms(),
            extra_where=" AND deleted_at IS NULL",
        )
        if row is None:
            raise NotFound(f"session {session_id} not found", session_id=session_id)
        return session_of(row)

    async def delete(self, session_id: str) -> None:
        check_id(session_id, "ses", what="session_id")
        now = self._ctx.clock.now_ms()
        result = await self._ctx.db.run_batch(
            [
                Statement(
                    "UPDATE sessions SET deleted_at = ?, updated_at = ? WHERE tenant_id = ? AND id = ?"
                    " AND deleted_at IS NULL",
                    (now, now, self.tenant_id, session_id),
                    expect_rows=True,
                ),
                # Its secrets go at once, in the same unit (the rest is purged in batches below).
                Statement(
                    "DELETE FROM session_secrets WHERE tenant_id = ? AND session_id = ?", (self.tenant_id, session_id)
                ),
                *forget_statements(self.tenant_id, session_id),  # out of the runnable index, no wake-ups
            ]
        )
        if not result.committed:
            raise NotFound(f"session {session_id} not found", session_id=session_id)
        self._ctx.wakeups.notify_local(EVENTS, self.tenant_id, session_id)
        await self._retention.purge(session_id, DEFAULT_BATCH)

    async def set_status(
        self,
        session_id: str,
        status: str,
        *,
        from_statuses: Iterable[str] | None = None,
        events: Sequence[dict[str, Any]] = (),
        fence: int | None = None,
    ) -> tuple[Session, builtins.list[Event]]:
        check_id(session_id, "ses", what="session_id")
        target = check_status(status)
        sources = tuple(sources_for(target) if from_statuses is None else [check_status(s) for s in from_statuses])
        if not sources:
            raise InvalidInput("from_statuses must not be empty", field="from_statuses")
        fence = check_fence(fence)
        prepared = ev.prepare_batch(events, max_bytes=self._ctx.max_event_bytes)
        written, row = await self._log.write_events(session_id, prepared, fence=fence, status=(target, sources))
        assert row is not None
        return session_of(row), written
