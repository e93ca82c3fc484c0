"""Pages: tokens encrypted at rest, health, and `flowc page add|list|remove`."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from outbox_kit import (
    NEW_TOKEN,
    PAGE,
    SECRET_KEY,
    SQL_BACKENDS,
    TOKEN,
    migrated_url,
    raw_rows,
)

from runtime import db
from server.crypto import CryptoError, TokenCipher, derive_key
from server.pagecli import page_group
from server.pages import PageError, PageRegistry


@pytest.fixture(params=SQL_BACKENDS)
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A migrated, empty database on each backend."""
    pg = request.getfixturevalue("pg_url") if request.param == "postgresql" else None
    with migrated_url(request.param, tmp_path, pg) as found:
        yield found


@pytest.fixture
def registry(url: str) -> Iterator[PageRegistry]:
    engine = db.create_engine_for(url)
    try:
        yield PageRegistry(engine, TokenCipher(SECRET_KEY))
    finally:
        engine.dispose()


# ----------------------------------------------------------------------------- crypto


def test_cipher_round_trip_and_key_derivation() -> None:
    cipher = TokenCipher(SECRET_KEY)
    sealed = cipher.encrypt(TOKEN)
    assert TOKEN not in sealed
    assert cipher.decrypt(sealed) == TOKEN
    assert cipher.encrypt(TOKEN) != sealed  # a fresh IV every time
    assert TokenCipher(SECRET_KEY).decrypt(sealed) == TOKEN  # the key is derived, not random
    assert derive_key(SECRET_KEY) == derive_key(SECRET_KEY)
    assert derive_key(SECRET_KEY) != derive_key(SECRET_KEY + "x")
    assert "test-secret" not in repr(cipher)


def test_a_wrong_key_or_altered_ciphertext_is_a_clear_error() -> None:
    sealed = TokenCipher(SECRET_KEY).encrypt(TOKEN)
    with pytest.raises(CryptoError, match="FLOW_SECRET_KEY is not the key it was stored with"):
        TokenCipher("another key").decrypt(sealed)
    with pytest.raises(CryptoError):
        TokenCipher(SECRET_KEY).decrypt(sealed[:-4] + "AAAA")
    with pytest.raises(CryptoError, match="empty"):
        TokenCipher("")


# ----------------------------------------------------------------------------- registry


@pytest.mark.parametrize("backend", SQL_BACKENDS)
def test_tokens_are_encrypted_at_rest(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    pg = request.getfixturevalue("pg_url") if backend == "postgresql" else None
    with migrated_url(backend, tmp_path, pg) as url:
        engine = db.create_engine_for(url)
        try:
            registry = PageRegistry(engine, TokenCipher(SECRET_KEY))
            page = registry.add(PAGE, TOKEN, name="Acme")
            assert (page.page_id, page.name, page.healthy, page.last_error) == (
                PAGE,
                "Acme",
                True,
                None,
            )
            assert TOKEN not in repr(page)
            (row,) = raw_rows(engine, "pages")
            assert TOKEN not in repr(row)
            assert TOKEN[5:20] not in repr(row)
            assert registry.token(PAGE) == TOKEN
            assert registry.credentials()[PAGE].token == TOKEN
            assert TOKEN not in repr(registry.credentials())
        finally:
            engine.dispose()
    if backend == "sqlite":  # nor anywhere in the file (WAL included)
        for path in tmp_path.glob("flowlang.db*"):
            assert TOKEN.encode() not in path.read_bytes()


def test_add_replaces_the_token_keeps_the_name_and_heals(registry: PageRegistry) -> None:
    registry.add(PAGE, TOKEN, name="Acme")
    first = registry.credentials()[PAGE]
    assert registry.mark_unhealthy(PAGE, "Graph API error 190/463: expired")
    page = registry.get(PAGE)
    assert page is not None and not page.healthy
    assert page.last_error == "Graph API error 190/463: expired"
    assert not registry.credentials()[PAGE].healthy
    page = registry.add(PAGE, NEW_TOKEN)
    assert (page.name, page.healthy, page.last_error) == ("Acme", True, None)
    assert page.updated_at.tzinfo is not None
    second = registry.credentials()[PAGE]
    assert (second.token, second.healthy) == (NEW_TOKEN, True)
    # A refusal of the old token, arriving late, does not condemn the new one.
    assert not registry.mark_unhealthy(PAGE, "late", ciphertext=first.ciphertext)
    assert registry.credentials()[PAGE].healthy
    assert registry.add(PAGE, NEW_TOKEN, name="Renamed").name == "Renamed"


def test_list_get_remove(registry: PageRegistry) -> None:
    assert registry.list() == []
    registry.add("300", "t3")
    registry.add("100", "t1", name="One")
    assert [p.page_id for p in registry.list()] == ["100", "300"]
    assert registry.get("999") is None
    assert registry.token("999") is None
    assert registry.remove("100")
    assert not registry.remove("100")
    assert [p.page_id for p in registry.list()] == ["300"]
    assert set(registry.credentials()) == {"300"}
    assert registry.mark_healthy("300")
    assert not registry.mark_unhealthy("999", "no such page")


@pytest.mark.parametrize(
    ("page_id", "token", "message"),
    [
        ("", TOKEN, "not a page id"),
        ("my page", TOKEN, "not a page id"),
        ("12ab", TOKEN, "not a page id"),
        (PAGE, "", "empty"),
        (PAGE, "two words", "spaces"),
    ],
)
def test_add_refuses_bad_input(
    registry: PageRegistry, page_id: str, token: str, message: str
) -> None:
    with pytest.raises(PageError, match=message):
        registry.add(page_id, token)
    assert registry.list() == []


def test_tokens_need_the_secret_key(registry: PageRegistry) -> None:
    registry.add(PAGE, TOKEN)
    keyless = PageRegistry(registry.engine)
    assert [p.page_id for p in keyless.list()] == [PAGE]  # listing needs no key
    with pytest.raises(CryptoError, match="FLOW_SECRET_KEY"):
        keyless.credentials()
    with pytest.raises(CryptoError):
        keyless.add(PAGE, TOKEN)
    with pytest.raises(CryptoError, match="not the key"):
        PageRegistry(registry.engine, TokenCipher("changed")).credentials()


# ----------------------------------------------------------------------------- flowc page


def test_flowc_page_add_list_remove(url: str) -> None:
    env = {"FLOW_DATABASE_URL": url, "FLOW_SECRET_KEY": SECRET_KEY}
    runner = CliRunner()
    added = runner.invoke(
        page_group, ["add", "--page-id", PAGE, "--token", TOKEN, "--name", "Acme"], env=env
    )
    assert added.exit_code == 0, added.output
    assert added.output == f"Added page {PAGE} (Acme); its token is stored encrypted.\n"
    # The token is asked for (without echo) when not given: it stays out of shell history.
    replaced = runner.invoke(
        page_group, ["add", "--page-id", PAGE], env=env, input=NEW_TOKEN + "\n"
    )
    assert replaced.exit_code == 0, replaced.output
    assert f"Replaced the token of page {PAGE} (Acme)" in replaced.output
    assert NEW_TOKEN not in replaced.output

    engine = db.create_engine_for(url)
    try:
        registry = PageRegistry(engine, TokenCipher(SECRET_KEY))
        assert registry.token(PAGE) == NEW_TOKEN
        registry.mark_unhealthy(PAGE, "Graph API error 190 (bad_token): Invalid OAuth access token")
    finally:
        engine.dispose()

    listed = runner.invoke(page_group, ["list"], env={"FLOW_DATABASE_URL": url})
    assert listed.exit_code == 0, listed.output
    lines = listed.output.splitlines()
    assert lines[0].split() == ["PAGE", "ID", "NAME", "STATUS", "UPDATED", "(UTC)", "LAST", "ERROR"]
    assert lines[1].startswith(f"{PAGE}  Acme  token refused  ")
    assert lines[1].endswith("Graph API error 190 (bad_token): Invalid OAuth access token")
    for secret in (TOKEN, NEW_TOKEN, SECRET_KEY):
        assert secret not in listed.output

    removed = runner.invoke(
        page_group, ["remove", "--page-id", PAGE], env={"FLOW_DATABASE_URL": url}
    )
    assert removed.exit_code == 0, removed.output
    assert removed.output == f"Removed page {PAGE} and its token.\n"
    again = runner.invoke(page_group, ["remove", "--page-id", PAGE], env={"FLOW_DATABASE_URL": url})
    assert again.exit_code == 1
    assert again.output == f"Error: there is no page {PAGE} (see `flowc page list`)\n"
    empty = runner.invoke(page_group, ["list", "--database-url", url])
    assert empty.output.startswith("No pages yet")


def test_flowc_page_add_creates_the_database(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'new.db'}"
    result = CliRunner().invoke(
        page_group,
        ["add", "--page-id", PAGE, "--token", TOKEN, "--database-url", url],
        env={"FLOW_SECRET_KEY": SECRET_KEY},
    )
    assert result.exit_code == 0, result.output
    assert db.current_revision(url) == db.head_revision()


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["add", "--page-id", PAGE, "--token", TOKEN], {}, "Error: FLOW_SECRET_KEY is not set"),
        (
            ["add", "--page-id", "my page", "--token", TOKEN],
            {"FLOW_SECRET_KEY": SECRET_KEY},
            "Error: 'my page' is not a page id (a page id is a number)",
        ),
        (["list"], {}, "has no Flowlang tables yet: add a page with `flowc page add`"),
        (["remove", "--page-id", PAGE], {}, "has no Flowlang tables yet"),
    ],
)
def test_flowc_page_errors_are_one_line(
    tmp_path: Path, args: list[str], env: dict[str, str], message: str
) -> None:
    # An empty database for list/remove (they do not create one), and no secret key.
    url = f"sqlite:///{tmp_path / 'empty.db'}"
    env = {"FLOW_DATABASE_URL": url, "FLOW_SECRET_KEY": "", **env}
    result = CliRunner().invoke(page_group, args, env=env)
    assert result.exit_code == 1, result.output
    assert message in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert "Traceback" not in result.output
    assert TOKEN not in result.output
    if args[0] != "add":
        assert not (tmp_path / "empty.db").exists()  # looking created no database


def test_flowc_page_is_a_flowc_command() -> None:
    from server.commands import SERVER_COMMANDS

    assert page_group in SERVER_COMMANDS
