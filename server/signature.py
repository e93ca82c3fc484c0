"""Webhook authenticity: `X-Hub-Signature-256` over the raw body, and the verify-token check.

Both comparisons are constant-time (`hmac.compare_digest`). The signature is computed over the
exact bytes received: Meta signs the body as sent (non-ASCII already escaped), so re-encoding
parsed JSON would break it (reference §2)."""

from __future__ import annotations

import hashlib
import hmac

#: The header Meta signs webhooks with (the legacy sha1 `X-Hub-Signature` is not accepted).
SIGNATURE_HEADER = "x-hub-signature-256"
_PREFIX = "sha256="


def sign(body: bytes, app_secret: str | bytes) -> str:
    """The `X-Hub-Signature-256` value for `body`: "sha256=" + lowercase hex HMAC-SHA256."""
    key = app_secret.encode() if isinstance(app_secret, str) else app_secret
    return _PREFIX + hmac.new(key, body, hashlib.sha256).hexdigest()


def signature_ok(body: bytes, header: str | None, app_secret: str | bytes) -> bool:
    """Whether `header` (the X-Hub-Signature-256 value, or None when absent) signs `body`."""
    if not header:
        return False
    expected = sign(body, app_secret).encode("ascii")
    # Hex digits may come in either case; anything non-ASCII can never match.
    given = header.strip().lower().encode("ascii", "replace")
    return hmac.compare_digest(given, expected)


def token_matches(given: str | None, expected: str) -> bool:
    """Whether the `hub.verify_token` of a verification request is the configured one."""
    if given is None:
        return False
    return hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8"))
