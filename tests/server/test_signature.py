"""X-Hub-Signature-256: computed over the raw bytes, compared in constant time, required."""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Callable

import pytest
from server_kit import APP_SECRET, Bot, envelope, text_item

from server import signature
from server.signature import sign, signature_ok, token_matches


def test_sign_is_sha256_hmac_hex() -> None:
    body = b'{"object":"page"}'
    expected = hmac.new(b"secret", body, hashlib.sha256).hexdigest()
    assert sign(body, "secret") == f"sha256={expected}"
    assert sign(body, b"secret") == f"sha256={expected}"


def test_signature_ok() -> None:
    body = b'{"object":"page","entry":[]}'
    good = sign(body, "secret")
    assert signature_ok(body, good, "secret")
    assert signature_ok(body, good.upper().replace("SHA256=", "sha256="), "secret")
    assert not signature_ok(body, None, "secret")
    assert not signature_ok(body, "", "secret")
    assert not signature_ok(body, good, "other secret")
    assert not signature_ok(body + b" ", good, "secret")
    assert not signature_ok(body, good.removeprefix("sha256="), "secret")
    assert not signature_ok(body, "sha1=" + hmac.new(b"secret", body, "sha1").hexdigest(), "secret")
    assert not signature_ok(body, "sha256=zzz\u00e9", "secret")


def test_comparisons_are_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    compared: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def recording(a: bytes, b: bytes) -> bool:
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr(signature.hmac, "compare_digest", recording)
    assert signature_ok(b"x", sign(b"x", "s"), "s")
    assert token_matches("token", "token")
    assert not token_matches("tokem", "token")
    assert len(compared) == 3


def test_token_matches() -> None:
    assert token_matches("abc", "abc")
    assert not token_matches("abd", "abc")
    assert not token_matches(None, "abc")
    assert not token_matches("", "abc")
    assert token_matches("gr\u00fc\u00df", "gr\u00fc\u00df")


# ----------------------------------------------------------------------------- over HTTP


@pytest.fixture
def bot(start_bot: Callable[..., Bot], sqlite_url: str) -> Bot:
    return start_bot(sqlite_url)


def post_raw(bot: Bot, raw: bytes, headers: dict[str, str]) -> int:
    return bot.running.request("POST", "/webhook", content=raw, headers=headers).status_code


def test_missing_signature_is_403_and_nothing_is_stored(bot: Bot) -> None:
    raw = json.dumps(envelope(text_item("u1", "hi"))).encode()
    assert post_raw(bot, raw, {"Content-Type": "application/json"}) == 403
    assert bot.events() == []


def test_wrong_signature_is_403(bot: Bot) -> None:
    raw = json.dumps(envelope(text_item("u1", "hi"))).encode()
    assert post_raw(bot, raw, {"X-Hub-Signature-256": sign(raw, "not the secret")}) == 403
    tampered = raw.replace(b"hi", b"ho")
    assert post_raw(bot, tampered, {"X-Hub-Signature-256": sign(raw, APP_SECRET)}) == 403
    assert bot.events() == []


def test_the_legacy_sha1_header_alone_is_not_enough(bot: Bot) -> None:
    raw = json.dumps(envelope(text_item("u1", "hi"))).encode()
    sha1 = "sha1=" + hmac.new(APP_SECRET.encode(), raw, hashlib.sha1).hexdigest()
    assert post_raw(bot, raw, {"X-Hub-Signature": sha1}) == 403
    assert bot.events() == []


def test_non_ascii_body_is_verified_over_its_raw_bytes(bot: Bot) -> None:
    # Meta sends non-ASCII escaped (\u00e4…) and signs exactly those bytes.
    escaped = json.dumps(envelope(text_item("u1", "\u00e4\u00f6\u00e5 caf\u00e9"))).encode()
    assert b"\\u00e4" in escaped
    assert post_raw(bot, escaped, {"X-Hub-Signature-256": sign(escaped, APP_SECRET)}) == 200
    # The same text as raw UTF-8 bytes, signed over those bytes, is accepted as well.
    utf8 = json.dumps(envelope(text_item("u1", "gr\u00fc\u00df")), ensure_ascii=False).encode()
    assert post_raw(bot, utf8, {"X-Hub-Signature-256": sign(utf8, APP_SECRET)}) == 200
    # A signature over a re-encoded form of the body does not match the bytes sent.
    decoded = escaped.decode("unicode_escape").encode("utf-8")
    assert post_raw(bot, escaped, {"X-Hub-Signature-256": sign(decoded, APP_SECRET)}) == 403
    bot.drain()
    assert {e.payload["message"]["text"] for e in bot.events()} == {
        "\u00e4\u00f6\u00e5 caf\u00e9",
        "gr\u00fc\u00df",
    }
