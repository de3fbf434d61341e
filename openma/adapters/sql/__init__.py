"""The built-in store family, written once in portable SQL over the :class:`~openma.ports.sql.SqlClient`.

SQLite ("cf") and Postgres ("pg") are two engines of this one family; what differs lives in their dialect
objects and in the per-dialect migration files under ``migrations/``.
"""
