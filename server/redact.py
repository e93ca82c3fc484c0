"""Secrets out of other libraries' logs: httpx logs every request's URL at INFO (with the
`appsecret_proof`, which proves a token and is as secret as one), and uvicorn's access log
(`flowc serve --access-log`) logs the webhook handshake's query (with the verify token)."""

from __future__ import annotations

import logging
import re

#: Query parameters whose values never reach a log line.
_SECRET = re.compile(r"((?:appsecret_proof|access_token|hub\.verify_token)=)[^&\s\"']+")
_NAMES = ("appsecret_proof", "access_token", "hub.verify_token")
#: The loggers that may print a URL with its query.
LOGGERS = ("httpx", "httpcore", "httpx_aiohttp", "uvicorn.access")


def redact(text: str) -> str:
    """`text` with the values of secret query parameters replaced by `[redacted]`."""
    return _SECRET.sub(r"\1[redacted]", text)


class RedactSecrets(logging.Filter):
    """Rewrites a record's message and arguments through `redact` (arguments that hold no
    secret keep their type, so `%d` still formats)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str) and any(n in record.msg for n in _NAMES):
            record.msg = redact(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(
                redact(str(a)) if any(n in str(a) for n in _NAMES) else a for a in record.args
            )
        return True


def install() -> None:
    """Add the filter to every logger in `LOGGERS` (once)."""
    for name in LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactSecrets) for f in logger.filters):
            logger.addFilter(RedactSecrets())
