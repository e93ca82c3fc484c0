"""Settings from FLOW_* variables, and `flowc serve` stopping with one clear line when a
setting, a flow, the database or the stored tokens are wrong."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner
from server_kit import BOT_FLOW

from flowlang.cli import main
from runtime import db
from runtime.commands import COMMANDS
from server.commands import SERVER_COMMANDS
from server.crypto import TokenCipher
from server.pages import PageRegistry
from server.serve import serve_command
from server.settings import DEFAULT_GRAPH_API_URL, SettingsError, load_settings

REQUIRED = {
    "FLOW_APP_SECRET": "app-secret-value",
    "FLOW_VERIFY_TOKEN": "verify-token-value",
    "FLOW_SECRET_KEY": "secret-key-value",
}


def test_defaults_and_values() -> None:
    settings = load_settings(REQUIRED)
    assert settings.app_secret.get_secret_value() == "app-secret-value"
    assert settings.database_url == "sqlite:///flowlang.db"
    assert settings.graph_api_url == DEFAULT_GRAPH_API_URL == "https://graph.facebook.com/v25.0"
    assert settings.max_body_bytes == 1 << 20
    assert (settings.page_id, settings.page_token, settings.admin_token) == (None, None, None)
    full = load_settings(
        {
            **REQUIRED,
            "FLOW_PAGE_ID": " 123 ",
            "FLOW_PAGE_TOKEN": "EAAB",
            "FLOW_GRAPH_API_URL": "http://127.0.0.1:8081/v25.0/",
            "FLOW_MAX_BODY_BYTES": "4096",
            "FLOW_APP_ID": "42",
            "FLOW_UNRELATED": "x",
        }
    )
    assert full.page_id == "123"
    assert full.graph_api_url == "http://127.0.0.1:8081/v25.0"
    assert full.max_body_bytes == 4096
    assert full.app_id == "42"


def test_secrets_never_show() -> None:
    settings = load_settings({**REQUIRED, "FLOW_PAGE_ID": "1", "FLOW_PAGE_TOKEN": "EAABtoken"})
    shown = repr(settings) + str(settings)
    for secret in ("app-secret-value", "verify-token-value", "secret-key-value", "EAABtoken"):
        assert secret not in shown


def test_the_process_environment_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in REQUIRED.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("FLOW_DATABASE_URL", "sqlite:////tmp/x.db")
    assert load_settings().database_url == "sqlite:////tmp/x.db"
    # Command-line options win over the environment.
    assert load_settings(database_url="other.db").database_url == "other.db"


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"FLOW_APP_SECRET": None}, "FLOW_APP_SECRET is not set: set it to your Meta app's"),
        ({"FLOW_VERIFY_TOKEN": None}, "FLOW_VERIFY_TOKEN is not set: set it to the Verify Token"),
        ({"FLOW_SECRET_KEY": None}, "FLOW_SECRET_KEY is not set: set it to a long random"),
        ({"FLOW_APP_SECRET": "  "}, "FLOW_APP_SECRET is empty"),
        ({"FLOW_PAGE_ID": "123"}, "FLOW_PAGE_ID is set but FLOW_PAGE_TOKEN is not"),
        ({"FLOW_PAGE_TOKEN": "EAAB"}, "FLOW_PAGE_TOKEN is set but FLOW_PAGE_ID is not"),
        ({"FLOW_PAGE_ID": "my page", "FLOW_PAGE_TOKEN": "t"}, "FLOW_PAGE_ID must be digits"),
        ({"FLOW_APP_ID": "x1"}, "FLOW_APP_ID must be digits"),
        ({"FLOW_GRAPH_API_URL": "graph.facebook.com"}, "FLOW_GRAPH_API_URL must be an http(s)"),
        ({"FLOW_MAX_BODY_BYTES": "lots"}, "FLOW_MAX_BODY_BYTES is invalid: input should be"),
        ({"FLOW_MAX_BODY_BYTES": "0"}, "FLOW_MAX_BODY_BYTES is invalid: input should be greater"),
    ],
)
def test_each_problem_is_one_line_naming_the_variable(
    changes: dict[str, str | None], message: str
) -> None:
    env = {**REQUIRED, **changes}
    with pytest.raises(SettingsError) as caught:
        load_settings({k: v for k, v in env.items() if v is not None})
    text = str(caught.value)
    assert text.startswith(message), text
    assert "\n" not in text
    assert "secret-key-value" not in text and "app-secret-value" not in text


# ----------------------------------------------------------------------------- flowc serve


def test_serve_and_page_are_flowc_commands() -> None:
    assert serve_command in SERVER_COMMANDS
    assert serve_command in COMMANDS
    assert main.commands["serve"] is serve_command
    assert "page" in main.commands


@pytest.fixture
def flows(tmp_path: Path) -> Path:
    folder = tmp_path / "flows"
    folder.mkdir()
    (folder / "bot.flow").write_text(BOT_FLOW, encoding="utf-8")
    return folder


def serve(args: list[str], env: dict[str, str | None]) -> tuple[int, str]:
    full_env: dict[str, str | None] = {name: None for name in REQUIRED}
    full_env.update(env)
    result = CliRunner().invoke(main, ["serve", *args], env=full_env)
    return result.exit_code, result.output


def test_serve_with_a_missing_setting_says_so_in_one_line(flows: Path) -> None:
    code, output = serve([str(flows)], {"FLOW_APP_SECRET": "x", "FLOW_SECRET_KEY": "k"})
    assert code == 1
    assert output.strip().splitlines() == [
        "Error: FLOW_VERIFY_TOKEN is not set: set it to the Verify Token you typed in the app's "
        "Webhooks settings"
    ]


def test_serve_with_flows_that_do_not_compile(flows: Path, tmp_path: Path) -> None:
    (flows / "broken.flow").write_text("flow broken\n  step\n", encoding="utf-8")
    env = {**REQUIRED, "FLOW_DATABASE_URL": f"sqlite:///{tmp_path / 'x.db'}"}
    code, output = serve([str(flows)], env)
    assert code == 1
    assert "broken.flow:2:" in output
    assert output.strip().splitlines()[-1] == (
        "Error: the flows have errors; fix them first (flowc check)"
    )
    assert "Traceback" not in output
    assert not (tmp_path / "x.db").exists()  # nothing was started


def test_serve_with_no_flow_files(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    code, output = serve([str(empty)], REQUIRED)
    assert code == 1
    assert output.strip() == f"Error: no .flow files found in {empty}"


def test_serve_with_an_unreachable_database(flows: Path) -> None:
    env = {**REQUIRED, "FLOW_DATABASE_URL": "postgresql://flow:pw@127.0.0.1:1/none"}
    code, output = serve([str(flows)], env)
    assert code == 1
    (line,) = output.strip().splitlines()
    assert line.startswith("Error: cannot open the database at postgresql+psycopg://flow:***@")
    assert "pw" not in line


def test_serve_with_tokens_stored_under_another_key(flows: Path, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'pages.db'}"
    db.upgrade(url)
    engine = db.create_engine_for(url)
    try:
        PageRegistry(engine, TokenCipher("the old key")).add("123", "EAABtoken")
    finally:
        engine.dispose()
    code, output = serve(["--database-url", url, str(flows)], REQUIRED)
    assert code == 1
    (line,) = output.strip().splitlines()
    assert line.startswith("Error: a stored page token cannot be decrypted: FLOW_SECRET_KEY")
    assert "EAABtoken" not in output
