"""Connection secrets never show: not in ``repr(settings)``, not in a message built from a driver error.

Every form of a secret is covered: the URL's userinfo password, ``?password=`` / ``sslpassword`` / ``passfile``
in its query, the key=value DSN form (quoted or bare), and a driver message that quotes a token of the URL
out of context.
"""

from __future__ import annotations

import functools
import socket
from urllib.parse import quote

import psycopg
import pytest
from hypothesis import assume, example, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from openma.adapters.locks.pg_advisory import PgAdvisoryLeaseLock
from openma.adapters.postgres import PostgresClient, connection_params
from openma.errors import ConfigError, StorageUnavailable
from openma.settings import Settings, redact_secrets

passwords = st.text(st.characters(exclude_categories=["Cs", "Cc"]), min_size=1, max_size=30)
#: Characters a password written raw (not percent-encoded) in a URL's userinfo can hold.
raw_passwords = st.text(
    st.characters(exclude_categories=["Cs", "Cc", "Zs", "Zl", "Zp"], exclude_characters="/?#'\"%"),
    min_size=1,
    max_size=30,
)


def dsn_quote(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def forms(password: str) -> list[str]:
    enc = quote(password, safe="")
    return [
        f"postgresql://app:{enc}@db.example:5432/main",
        f"postgresql://app@db.example/main?sslmode=require&password={enc}",
        f"postgres://app@db.example/main?sslpassword={enc}&connect_timeout=3",
        f"postgresql://app@db.example/main?passfile={enc}",
        f"host=db.example user=app password={dsn_quote(password)} dbname=main",
        f"host=db.example sslpassword = {dsn_quote(password)} passfile={dsn_quote(password)}",
    ]


def messages(conninfo: str, password: str) -> list[str]:
    """What a caller builds from a driver error about ``conninfo``: the URL itself, quoted tokens, a repr."""
    out = [
        redact_secrets(conninfo, conninfo),
        redact_secrets(f"cannot connect with {conninfo!r}: refused", conninfo),
        redact_secrets(f'invalid percent-encoded token: "{quote(password, safe="")}"', conninfo),
        redact_secrets(f'unexpected spaces found in "{password}", use %20', conninfo),
        redact_secrets(conninfo),  # no conninfo given: the patterns alone
    ]
    if "://" in conninfo and "password=" in conninfo:  # Settings() is slow to build: one form is enough
        out.append(repr(Settings(postgres_url=conninfo)))
    return out


@functools.cache
def skeletons() -> tuple[str, ...]:
    """Every message of every form for a password that cannot occur: what the frame holds anyway."""
    return tuple(" ".join(messages(info, "\x00")) for info in forms("\x00"))


def hidden(password: str, text: str, skeleton: str) -> bool:
    """``password`` (as written, or percent-encoded) is not in ``text`` unless the message's frame has it."""
    return all(p not in text for p in {password, quote(password, safe="")} if p not in skeleton)


@hypothesis_settings(deadline=None)
@given(passwords)
@example("topsecret")
@example("p@ss:w/rd?&#=")
@example("it's a 'quoted' \\ secret")
@example("%zz")
def test_no_password_form_survives(password: str) -> None:
    for conninfo, skeleton in zip(forms(password), skeletons(), strict=True):
        assume(password not in skeleton and quote(password, safe="") not in skeleton)
        for text in messages(conninfo, password)[:4]:
            assert hidden(password, text, skeleton), (conninfo, text)
        # The patterns alone mask every well-formed form too (a message with no known conninfo).
        assert hidden(password, messages(conninfo, password)[4], skeleton)


@hypothesis_settings(deadline=None, max_examples=50)
@given(raw_passwords)
@example("se@cret")
@example("x")
def test_a_raw_userinfo_password_is_masked(password: str) -> None:
    url = f"postgresql://app:{password}@db.example/main"
    # What is left around a masked password (a password that is also a piece of it, such as "x" of
    # "example", is masked there too, so only passwords that are not are tested).
    skeleton = repr(Settings(postgres_url="postgresql://app:Q@db.example/main"))
    assume(password not in skeleton and password not in redact_secrets("postgresql://app:Q@db.example/main"))
    assert password not in redact_secrets(url)
    assert password not in repr(Settings(postgres_url=url))
    # Even what libpq makes of it: a password holding '@' leaves its tail in the host name.
    if "@" in password:
        tail = password.split("@", 1)[1]
        assume(tail not in skeleton)
        assert tail not in redact_secrets(f'could not translate host name "{tail}@db.example"', url)


def test_settings_repr_masks_the_query_password() -> None:
    settings = Settings(postgres_url="postgresql://app@db/main?password=topsecret&sslpassword=keypass")
    assert "topsecret" not in repr(settings) and "keypass" not in repr(settings)
    assert "postgresql://app@db/main?password=***&sslpassword=***" in repr(settings)


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://app:p%zzsecret@db/main",
        "postgresql://app@db/main?password=se%zzcret",
        "postgresql://app:sec ret@db/main",
        "postgresql://app:secret@[::1/main",
    ],
)
def test_a_malformed_url_error_quotes_no_secret(url: str) -> None:
    with pytest.raises(ConfigError) as info:
        connection_params(url, Settings(), psycopg)
    text = str(info.value)
    assert "secret" not in text.replace("***", "") and "sec ret" not in text
    assert info.value.__cause__ is None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.anyio
@pytest.mark.parametrize(
    "url",
    [
        "postgresql://app:userinfosecret@127.0.0.1:{port}/main",
        "postgresql://app@127.0.0.1:{port}/main?password=querysecret",
        "postgresql://app@127.0.0.1:{port}/main?sslpassword=sslsecret&passfile=/tmp/passfilesecret",
    ],
)
async def test_connection_errors_carry_no_secret(url: str) -> None:
    url = url.format(port=free_port())
    with pytest.raises(StorageUnavailable) as info:
        await PostgresClient.open(url, Settings(postgres_url=url, pg_connect_timeout=2))
    assert "secret" not in str(info.value) and "secret" not in repr(info.value)
    conninfo = connection_params(url, Settings(), psycopg)
    lock = PgAdvisoryLeaseLock(conninfo, psycopg)
    with pytest.raises(StorageUnavailable) as info:
        await lock.acquire("k", wait=0)
    assert "secret" not in str(info.value)
