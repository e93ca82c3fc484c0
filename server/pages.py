"""The Facebook Pages the server answers for: ids, names, encrypted tokens and health.

One row per page in the `pages` table. Tokens are stored only encrypted (`server.crypto`) and
leave this module only through `PageRegistry.credentials` / `token`, for the Graph client; `Page`
(what `flowc page list` shows and what gets logged) has no token field. A page whose token is
rejected by Meta (error 190) is marked unhealthy with the error; replacing its token with
`flowc page add` makes it healthy again and the sender resumes its messages."""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine, Row, bindparam, delete, func, select, update
from sqlalchemy.dialects import postgresql, sqlite

from runtime import tables
from server.crypto import CryptoError, TokenCipher

_TABLE = tables.pages
_C = _TABLE.c

#: Page ids are numbers at Meta (the column is String(64)).
_PAGE_ID = re.compile(r"^[0-9]{1,64}$")


class PageError(ValueError):
    """A page cannot be added or used; the message says why."""


@dataclass(frozen=True)
class Page:
    """A page as shown to people: everything except its token."""

    page_id: str
    name: str | None
    healthy: bool
    last_error: str | None
    updated_at: datetime


@dataclass(frozen=True)
class PageCredentials:
    """What the sender needs to call the Graph API for a page.

    `ciphertext` identifies the token version: marking a page unhealthy for a rejected token
    only applies if the token was not replaced in the meantime."""

    page_id: str
    token: str
    healthy: bool
    ciphertext: str

    def __repr__(self) -> str:  # the token must never reach a log line through a repr
        return f"PageCredentials(page_id={self.page_id!r}, healthy={self.healthy})"


def _now() -> datetime:
    return datetime.now(UTC)


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _page(row: Row[Any]) -> Page:
    return Page(
        page_id=row.page_id,
        name=row.name,
        healthy=bool(row.healthy),
        last_error=row.last_error,
        updated_at=_utc(row.updated_at),
    )


def _upsert(dialect: Any) -> Any:
    insert = dialect.insert(_TABLE)
    return insert.on_conflict_do_update(
        index_elements=["page_id"],
        set_={
            "token_encrypted": insert.excluded.token_encrypted,
            # `flowc page add` without --name keeps the name the page had.
            "name": func.coalesce(insert.excluded.name, _C.name),
            "healthy": True,
            "last_error": None,
            "updated_at": insert.excluded.updated_at,
        },
    )


_UPSERT = {"sqlite": _upsert(sqlite), "postgresql": _upsert(postgresql)}
_LIST = select(_C.page_id, _C.name, _C.healthy, _C.last_error, _C.updated_at).order_by(_C.page_id)
_GET = _LIST.where(_C.page_id == bindparam("page_id"))
_CREDENTIALS = select(_C.page_id, _C.token_encrypted, _C.healthy)
_REMOVE = delete(_TABLE).where(_C.page_id == bindparam("page_id"))
_MARK_UNHEALTHY = (
    update(_TABLE)
    .where(_C.page_id == bindparam("key"), _C.token_encrypted == bindparam("ciphertext"))
    .values(healthy=False, last_error=bindparam("error"), updated_at=bindparam("now"))
)
_MARK_HEALTHY = (
    update(_TABLE)
    .where(_C.page_id == bindparam("key"))
    .values(healthy=True, last_error=None, updated_at=bindparam("now"))
)


class PageRegistry:
    """The `pages` table, with tokens encrypted by `cipher`. All methods are synchronous
    (call them from a worker thread in async code) and each is one short transaction.

    Without a cipher, the registry can list, remove and mark pages but not read or write
    tokens (`CryptoError`): `flowc page list` needs no secret key."""

    def __init__(self, engine: Engine, cipher: TokenCipher | None = None) -> None:
        dialect = engine.dialect.name
        if dialect not in _UPSERT:
            raise PageError(f"Flowlang supports SQLite and PostgreSQL, not {dialect}")
        self.engine = engine
        self._cipher = cipher
        self._upsert = _UPSERT[dialect]
        # ciphertext -> token: decrypting costs more than a send's other bookkeeping. Worker
        # threads share it (processor and sender), hence the lock.
        self._plain: dict[str, str] = {}
        self._plain_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"PageRegistry({self.engine.url.render_as_string(hide_password=True)})"

    def add(self, page_id: str, token: str, *, name: str | None = None) -> Page:
        """Add a page or replace its token (and name, when given). The page is healthy
        afterwards: a new token deserves a new try."""
        page_id = page_id.strip()
        token = token.strip()
        if not _PAGE_ID.match(page_id):
            raise PageError(f"{page_id!r} is not a page id (a page id is a number)")
        if not token or any(c.isspace() for c in token):
            raise PageError("the page token is empty or contains spaces")
        values = {
            "page_id": page_id,
            "name": name.strip() if name and name.strip() else None,
            "token_encrypted": self._require_cipher().encrypt(token),
            "healthy": True,
            "last_error": None,
            "updated_at": _now(),
        }
        with self.engine.begin() as conn:
            conn.execute(self._upsert, values)
            row = conn.execute(_GET, {"page_id": page_id}).one()
        return _page(row)

    def _require_cipher(self) -> TokenCipher:
        if self._cipher is None:
            raise CryptoError("FLOW_SECRET_KEY is needed to read or store page tokens")
        return self._cipher

    def remove(self, page_id: str) -> bool:
        """Forget a page and its token; False when it was not there. Its unsent messages stay
        pending (and are sent if the page is added again)."""
        with self.engine.begin() as conn:
            return conn.execute(_REMOVE, {"page_id": page_id}).rowcount > 0

    def list(self) -> list[Page]:
        """Every page, by id."""
        with self.engine.connect() as conn:
            return [_page(row) for row in conn.execute(_LIST)]

    def get(self, page_id: str) -> Page | None:
        """One page, or None when it is not configured."""
        with self.engine.connect() as conn:
            row = conn.execute(_GET, {"page_id": page_id}).first()
        return None if row is None else _page(row)

    def credentials(self) -> dict[str, PageCredentials]:
        """Every page's decrypted token and health, by page id (one query). A token that
        cannot be decrypted (FLOW_SECRET_KEY changed) raises `CryptoError`."""
        with self.engine.connect() as conn:
            rows = conn.execute(_CREDENTIALS).all()
        found = {}
        with self._plain_lock:
            for page_id, ciphertext, healthy in rows:
                token = self._plain.get(ciphertext)
                if token is None:
                    token = self._require_cipher().decrypt(ciphertext)
                    self._plain[ciphertext] = token
                found[page_id] = PageCredentials(page_id, token, bool(healthy), ciphertext)
            # Forget replaced tokens.
            live = {c.ciphertext for c in found.values()}
            for old in [c for c in self._plain if c not in live]:
                del self._plain[old]
        return found

    def token(self, page_id: str) -> str | None:
        """The decrypted token of a page (healthy or not), or None when it is not configured."""
        credentials = self.credentials().get(page_id)
        return None if credentials is None else credentials.token

    def mark_unhealthy(self, page_id: str, error: str, *, ciphertext: str | None = None) -> bool:
        """Record that Meta rejected the page's token. With `ciphertext`, only if the page
        still has that token (it may have been replaced meanwhile). True if a row changed."""
        with self.engine.begin() as conn:
            if ciphertext is None:
                row = conn.execute(select(_C.token_encrypted).where(_C.page_id == page_id)).first()
                if row is None:
                    return False
                ciphertext = row[0]
            params = {"key": page_id, "ciphertext": ciphertext, "error": error, "now": _now()}
            return conn.execute(_MARK_UNHEALTHY, params).rowcount > 0

    def mark_healthy(self, page_id: str) -> bool:
        """Clear a page's error (e.g. after a manual check); True if the page exists."""
        with self.engine.begin() as conn:
            return conn.execute(_MARK_HEALTHY, {"key": page_id, "now": _now()}).rowcount > 0


__all__ = ["CryptoError", "Page", "PageCredentials", "PageError", "PageRegistry"]
