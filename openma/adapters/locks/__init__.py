"""Lease locks: ``flock`` files next to a SQLite database, Postgres session-level advisory locks."""
