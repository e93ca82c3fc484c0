"""Encryption of secrets at rest (page access tokens), keyed by FLOW_SECRET_KEY.

The Fernet key (AES-128-CBC + HMAC-SHA256, authenticated) is derived from FLOW_SECRET_KEY with
HKDF-SHA256, so any string works as the secret; it should be long and random, e.g. the output of
`python -c "import secrets; print(secrets.token_urlsafe(32))"`. Changing FLOW_SECRET_KEY makes the
stored tokens unreadable: add the pages again with `flowc page add`."""

from __future__ import annotations

import base64

from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

# Fixed HKDF inputs: they separate this use of the secret from any other one (a future
# "v2" changes the info string, not the secret).
_SALT = b"flowlang"
_INFO = b"flowlang page tokens v1"


class CryptoError(Exception):
    """A secret cannot be encrypted or decrypted; the message says what to do about it."""


def derive_key(secret: str) -> bytes:
    """The Fernet key (urlsafe base64 of 32 bytes) derived from `secret` with HKDF-SHA256."""
    if not secret:
        raise CryptoError("FLOW_SECRET_KEY is empty: set it to a long random string")
    raw = HKDF(algorithm=hashes.SHA256(), length=32, salt=_SALT, info=_INFO).derive(
        secret.encode("utf-8")
    )
    return base64.urlsafe_b64encode(raw)


class TokenCipher:
    """Encrypts and decrypts short secrets (page tokens) with a key derived from a secret.

    >>> cipher = TokenCipher("a long random secret")
    >>> cipher.decrypt(cipher.encrypt("EAAB...")) == "EAAB..."
    True
    """

    def __init__(self, secret: str) -> None:
        self._fernet = Fernet(derive_key(secret))

    def __repr__(self) -> str:
        return "TokenCipher(<secret>)"  # never show key material

    def encrypt(self, plaintext: str) -> str:
        """The ciphertext of `plaintext` as ASCII text (a Fernet token: random IV, timestamped)."""
        return self._fernet.encrypt(plaintext.encode("utf-8")).decode("ascii")

    def decrypt(self, ciphertext: str) -> str:
        """The plaintext of `ciphertext`; `CryptoError` when it was made with another key or
        has been altered."""
        try:
            return self._fernet.decrypt(ciphertext.encode("ascii")).decode("utf-8")
        except (InvalidToken, UnicodeError, ValueError):
            raise CryptoError(
                "a stored page token cannot be decrypted: FLOW_SECRET_KEY is not the key it was "
                "stored with (set the old key, or add the page again with `flowc page add`)"
            ) from None
