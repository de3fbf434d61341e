-- What a session remembers of its sandbox, written by its lease holder and fenced by lease_epoch like every
-- other write of the holder: sandbox_id is the provider's id of the sandbox serving the session (so a host
-- that restarts reattaches to it instead of leaking it), sandbox_snapshot the JSON of its latest workspace
-- snapshot ref (key, size, sha256, created_at, expires_at).

ALTER TABLE sessions ADD COLUMN sandbox_id TEXT;
ALTER TABLE sessions ADD COLUMN sandbox_snapshot TEXT;
