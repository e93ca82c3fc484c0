"""`flowc page setup` (server/pagecli.py) and the profile diff (server/profile_sync.py).

The command runs as `flowc` runs it (click, the real GraphClient on aiohttp) against the fake
Graph API (server/emulator.py) served by uvicorn on loopback, with "Require App Secret" on and
one valid token; every test checks the exact requests Meta receives. Pages are stored in real
SQLite files (and PostgreSQL for the full setup)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from click.testing import Result
from ops_kit import (
    FIELDS,
    PAGE,
    SECRET_KEY,
    TOKEN,
    Env,
    calls,
    closed_port,
    flowc,
    one_line_error,
)
from server_kit import rows

from flowlang.load import compile_paths
from runtime import db
from server import profile_sync
from server.crypto import TokenCipher
from server.emulator import EMULATOR_APP_ID, Emulator, FailRule
from server.messenger import EVENT_KINDS
from server.opskit import WEBHOOK_FIELDS
from server.pages import PageRegistry
from server.processor import RECORD_ONLY

PROFILE_QUERY = {"fields": "greeting,get_started,persistent_menu,ice_breakers,whitelisted_domains"}

GREETING = 'greeting "Hi {{user_first_name}}!"'
PAGE_FLOW = f"""\
page
  {GREETING}
  greeting for fr_FR "Bonjour !"
  get started sends "GET_STARTED"
  menu
    item "Start over" starts welcome
    item "Website" opens "https://example.com" full
  menu for fr_FR
    item "Recommencer" starts welcome
    typing disabled
  ice breakers
    question "What do you sell?" sends "SERVICES"
  whitelisted domains "https://example.com", "https://shop.example.com"
"""
WELCOME_FLOW = """\
flow welcome
  when get started
  when postback "SERVICES"
  step start
    say "Welcome!"
"""
#: What Meta must receive for PAGE_FLOW (reference §9).
PROFILE = {
    "greeting": [
        {"locale": "default", "text": "Hi {{user_first_name}}!"},
        {"locale": "fr_FR", "text": "Bonjour !"},
    ],
    "get_started": {"payload": "GET_STARTED"},
    "persistent_menu": [
        {
            "locale": "default",
            "composer_input_disabled": False,
            "call_to_actions": [
                {"type": "postback", "title": "Start over", "payload": "FLOW:welcome"},
                {
                    "type": "web_url",
                    "title": "Website",
                    "url": "https://example.com",
                    "webview_height_ratio": "full",
                },
            ],
        },
        {
            "locale": "fr_FR",
            "composer_input_disabled": True,
            "call_to_actions": [
                {"type": "postback", "title": "Recommencer", "payload": "FLOW:welcome"}
            ],
        },
    ],
    "ice_breakers": [
        {
            "call_to_actions": [{"question": "What do you sell?", "payload": "SERVICES"}],
            "locale": "default",
        }
    ],
    "whitelisted_domains": ["https://example.com", "https://shop.example.com"],
}


# ----------------------------------------------------------------------------- harness


@pytest.fixture
def flows(tmp_path: Path) -> Path:
    """A folder with the page block and the flow its menu starts."""
    folder = tmp_path / "flows"
    folder.mkdir()
    (folder / "page.flow").write_text(PAGE_FLOW, encoding="utf-8")
    (folder / "welcome.flow").write_text(WELCOME_FLOW, encoding="utf-8")
    return folder


def setup(env: Env, *args: str) -> Result:
    """`flowc page setup --page-id PAGE ARGS`."""
    return flowc(env, "page", "setup", "--page-id", PAGE, *args)


def stored(url: str) -> PageRegistry:
    return PageRegistry(db.create_engine_for(url), TokenCipher(SECRET_KEY))


SUBSCRIBE = ("POST", f"/{PAGE}/subscribed_apps", {"subscribed_fields": FIELDS}, None)
READ_PROFILE = ("GET", "/me/messenger_profile", PROFILE_QUERY, None)


# ----------------------------------------------------------------------------- the commands


def test_the_operations_commands_are_listed_in_flowc_help(env: Env) -> None:
    listing = flowc(env, "--help").stdout
    assert "\n  page " in listing and "\n  webhook " in listing
    page_help = flowc(env, "page", "--help").stdout
    assert "\n  setup " in page_help
    webhook_help = flowc(env, "webhook", "--help").stdout
    for command in ("verify", "subscribe", "list-subscriptions", "send-test"):
        assert f"\n  {command} " in webhook_help


def test_setup_stores_subscribes_and_pushes_the_profile_then_sends_no_write_again(
    database_url: str, meta: Emulator, env: Env, flows: Path
) -> None:
    env["FLOW_DATABASE_URL"] = database_url
    first = setup(
        env,
        "--token",
        TOKEN,
        "--test-connection",
        "--configure-profile",
        "--app-id",
        EMULATOR_APP_ID,
        str(flows),
    )
    assert first.exit_code == 0, first.output
    assert calls(meta) == [
        ("GET", "/me", {"fields": "id,name"}, None),
        SUBSCRIBE,
        ("GET", f"/{PAGE}/subscribed_apps", {}, None),
        READ_PROFILE,
        ("POST", "/me/messenger_profile", {}, PROFILE),
    ]
    assert meta.messenger_profile == PROFILE
    assert meta.subscribed_fields == FIELDS.split(",")
    assert "The token works: it is the token of page 1000000000000001 (Emulated page)." in (
        first.stdout
    )
    assert "Updated the Messenger profile: greeting, get_started, persistent_menu, " in (
        first.stdout
    )
    assert TOKEN not in first.output
    # Stored with the page's name from Meta, the token only encrypted.
    (row,) = rows(database_url, "pages")
    assert (row.page_id, row.name, row.healthy) == (PAGE, "Emulated page", True)
    assert TOKEN not in row.token_encrypted
    registry = stored(database_url)
    try:
        assert registry.token(PAGE) == TOKEN
    finally:
        registry.engine.dispose()

    # Again, with no change to the page block and the stored token: the profile is read only.
    again = setup(env, "--configure-profile", str(flows))
    assert again.exit_code == 0, again.output
    assert calls(meta) == [SUBSCRIBE, READ_PROFILE]
    assert "The Messenger profile is up to date: nothing to send." in again.stdout
    assert "Updated page 1000000000000001 (Emulated page)" in again.stdout


def test_a_changed_property_is_the_only_one_sent(
    meta: Emulator, env: Env, flows: Path, snapshot: Any
) -> None:
    assert setup(env, "--token", TOKEN, "--configure-profile", str(flows)).exit_code == 0
    calls(meta)
    page = flows / "page.flow"
    page.write_text(
        PAGE_FLOW.replace(GREETING, 'greeting "Hello {{user_first_name}}!"'), encoding="utf-8"
    )
    result = setup(env, "--configure-profile", str(flows))
    assert result.exit_code == 0, result.output
    greeting = [
        {"locale": "default", "text": "Hello {{user_first_name}}!"},
        {"locale": "fr_FR", "text": "Bonjour !"},
    ]
    assert calls(meta) == [
        SUBSCRIBE,
        READ_PROFILE,
        ("POST", "/me/messenger_profile", {}, {"greeting": greeting}),
    ]
    assert meta.messenger_profile == {**PROFILE, "greeting": greeting}
    assert result.stdout == snapshot


def test_properties_the_flows_drop_are_deleted_menu_before_get_started(
    meta: Emulator, env: Env, flows: Path
) -> None:
    assert setup(env, "--token", TOKEN, "--configure-profile", str(flows)).exit_code == 0
    calls(meta)
    (flows / "page.flow").write_text(f"page\n  {GREETING}\n", encoding="utf-8")
    result = setup(env, "--configure-profile", str(flows))
    assert result.exit_code == 0, result.output
    removed = ["persistent_menu", "get_started", "ice_breakers", "whitelisted_domains"]
    assert calls(meta) == [
        SUBSCRIBE,
        READ_PROFILE,
        ("POST", "/me/messenger_profile", {}, {"greeting": [PROFILE["greeting"][0]]}),
        ("DELETE", "/me/messenger_profile", {}, {"fields": removed}),
    ]
    assert meta.messenger_profile == {"greeting": [PROFILE["greeting"][0]]}
    assert f"Removed from the Messenger profile: {', '.join(removed)}." in result.stdout


def test_dry_run_shows_the_diff_and_writes_nothing(
    meta: Emulator, env: Env, flows: Path, tmp_path: Path, snapshot: Any
) -> None:
    meta.messenger_profile.update(
        {
            "greeting": [{"locale": "default", "text": "Hi there"}],
            "get_started": {"payload": "GET_STARTED"},
            "account_linking_url": "https://example.com/link",  # not Flowlang's: untouched
        }
    )
    before = dict(meta.messenger_profile)
    result = setup(env, "--token", TOKEN, "--configure-profile", "--dry-run", str(flows))
    assert result.exit_code == 0, result.output
    assert calls(meta) == [READ_PROFILE]
    assert meta.messenger_profile == before
    assert meta.subscribed_fields == []
    assert not (tmp_path / "ops.db").exists()  # with --token, a dry run needs no database
    assert result.stdout == snapshot


def test_a_profile_meta_returns_in_another_form_is_not_written_again(
    meta: Emulator, env: Env, flows: Path
) -> None:
    menu_default, menu_fr = PROFILE["persistent_menu"]
    website = {"type": "web_url", "title": "Website", "url": "https://EXAMPLE.com/"}
    meta.messenger_profile.update(
        {
            "greeting": list(reversed(PROFILE["greeting"])),
            "get_started": {"payload": "GET_STARTED"},
            "persistent_menu": [
                menu_fr,
                {  # Meta's defaults left out: text box on, web pages opened full height
                    "locale": "default",
                    "call_to_actions": [menu_default["call_to_actions"][0], website],
                },
            ],
            # Meta's old flat format means the default locale.
            "ice_breakers": [{"question": "What do you sell?", "payload": "SERVICES"}],
            "whitelisted_domains": ["https://shop.example.com/", "https://example.com/"],
        }
    )
    result = setup(env, "--token", TOKEN, "--configure-profile", str(flows))
    assert result.exit_code == 0, result.output
    assert calls(meta) == [SUBSCRIBE, READ_PROFILE]


# ----------------------------------------------------------------------------- failures


def test_a_bad_token_fails_with_metas_message_and_is_not_stored(
    meta: Emulator, env: Env, flows: Path, tmp_path: Path
) -> None:
    meta.valid_tokens = {"another-token"}
    result = setup(env, "--token", TOKEN, "--test-connection", "--configure-profile", str(flows))
    assert one_line_error(result) == (
        "Error: checking the token (GET /me) failed: Meta refused the access token (error "
        "190): Invalid OAuth access token - Cannot parse access token; get a new Page access "
        "token and store it with `flowc page setup --page-id … --token …`"
    )
    assert calls(meta) == [("GET", "/me", {"fields": "id,name"}, None)]
    assert rows(f"sqlite:///{tmp_path / 'ops.db'}", "pages") == []


def test_a_token_refused_later_marks_the_stored_page_unhealthy(
    meta: Emulator, env: Env, tmp_path: Path
) -> None:
    meta.valid_tokens = {"another-token"}
    result = setup(env, "--token", TOKEN)
    assert "Meta refused the access token (error 190)" in one_line_error(result)
    (row,) = rows(f"sqlite:///{tmp_path / 'ops.db'}", "pages")
    assert not row.healthy
    assert row.last_error == "Invalid OAuth access token - Cannot parse access token"


def test_a_token_of_another_page_is_refused(meta: Emulator, env: Env, tmp_path: Path) -> None:
    result = flowc(env, "page", "setup", "--page-id", "42", "--token", TOKEN, "--test-connection")
    assert one_line_error(result) == (
        "Error: the token works but belongs to Emulated page (1000000000000001), not to page "
        "42: use the Page access token of page 42"
    )
    assert rows(f"sqlite:///{tmp_path / 'ops.db'}", "pages") == []


def test_the_graph_api_out_of_reach_is_one_line(env: Env, flows: Path) -> None:
    port = closed_port()
    env["FLOW_GRAPH_API_URL"] = f"http://127.0.0.1:{port}/v25.0"
    line = one_line_error(setup(env, "--token", TOKEN, "--test-connection"))
    assert line.startswith(
        f"Error: checking the token (GET /me) failed: no answer from the Graph API at "
        f"http://127.0.0.1:{port}/v25.0 ("
    )
    assert line.endswith("); check FLOW_GRAPH_API_URL and the network")


def test_the_profile_rate_limit_stops_before_any_profile_write(
    meta: Emulator, env: Env, flows: Path
) -> None:
    meta.rules.append(FailRule(code=613, path=r"/messenger_profile$"))
    result = setup(env, "--token", TOKEN, "--configure-profile", str(flows))
    assert one_line_error(result) == (
        "Error: reading the Messenger profile (GET /me/messenger_profile) failed: Meta's rate "
        "limit was reached (error 613): (#613) Calls to this api have exceeded the rate limit; "
        "wait a few minutes before trying again"
    )
    assert calls(meta) == [SUBSCRIBE, READ_PROFILE]


def test_flows_with_errors_or_without_a_page_block_send_nothing(
    meta: Emulator, env: Env, flows: Path
) -> None:
    (flows / "page.flow").write_text(PAGE_FLOW + "  nonsense here\n", encoding="utf-8")
    broken = setup(env, "--token", TOKEN, "--configure-profile", str(flows))
    assert broken.exit_code == 1
    assert "page.flow:" in broken.stderr
    assert broken.stderr.rstrip().endswith(
        "Error: the flows have errors; fix them first (flowc check), nothing was stored or sent"
    )
    (flows / "page.flow").unlink()
    no_page = setup(env, "--token", TOKEN, "--configure-profile", str(flows))
    assert "have no `page` block" in one_line_error(no_page)
    assert calls(meta) == []


def test_missing_settings_are_one_line(env: Env) -> None:
    assert one_line_error(setup({**env, "FLOW_APP_SECRET": None}, "--token", TOKEN)) == (
        "Error: FLOW_APP_SECRET is not set: set it to your Meta app's App Secret, from App "
        "Dashboard > App settings > Basic (every Graph API call is signed with it)"
    )
    assert "FLOW_SECRET_KEY is not set" in one_line_error(
        setup({**env, "FLOW_SECRET_KEY": None}, "--token", TOKEN)
    )
    odd_id = flowc(env, "page", "setup", "--page-id", "../me", "--token", TOKEN)
    assert one_line_error(odd_id) == "Error: '../me' is not a page id (a page id is a number)"
    assert "must be an http(s) URL" in one_line_error(
        setup({**env, "FLOW_GRAPH_API_URL": "graph.facebook.com"}, "--token", TOKEN)
    )


def test_a_wrong_app_id_is_reported(meta: Emulator, env: Env) -> None:
    result = setup(env, "--token", TOKEN, "--app-id", "123")
    assert one_line_error(result) == (
        "Error: Meta does not list app 123 among the apps subscribed to page 1000000000000001 "
        f"(it lists: {EMULATOR_APP_ID}): the token belongs to another app, or --app-id / "
        "FLOW_APP_ID is wrong"
    )


# ----------------------------------------------------------------------------- profile_sync


def test_the_subscribed_fields_are_the_events_the_runtime_acts_on() -> None:
    kind_of = {
        "messages": "message",
        "messaging_postbacks": "postback",
        "messaging_referrals": "referral",
        "message_deliveries": "delivery",
        "message_reads": "read",
        "messaging_handovers": "pass_thread_control",
        "standby": "standby",
        "messaging_policy_enforcement": "policy_enforcement",
    }
    assert ",".join(WEBHOOK_FIELDS) == FIELDS
    assert set(kind_of) == set(WEBHOOK_FIELDS)
    for kind in kind_of.values():
        assert kind in EVENT_KINDS and kind not in RECORD_ONLY
    # The fields left out bring events the runtime only records.
    for kind in ("echo", "reaction", "optin", "message_edit", "account_linking"):
        assert kind in RECORD_ONLY


def test_the_golden_page_block_becomes_metas_json() -> None:
    golden = Path(__file__).resolve().parents[1] / "golden" / "ok" / "page.flow"
    program = compile_paths([golden]).program
    assert program is not None
    profile = profile_sync.profile_from_page(program.page)
    assert list(profile) == list(profile_sync.MANAGED)
    assert profile["get_started"] == {"payload": "GET_STARTED"}
    assert profile["ice_breakers"][1] == {
        "call_to_actions": [{"question": "Que vendez-vous ?", "payload": "SERVICES"}],
        "locale": "fr_FR",
    }
    assert profile["persistent_menu"][0]["call_to_actions"][2] == {
        "type": "web_url",
        "title": "Website",
        "url": "https://example.com",
        "webview_height_ratio": "full",
    }
    assert profile_sync.profile_from_page(None) == {}


def test_meta_answers_are_read_for_the_managed_properties_only() -> None:
    answer = {"data": [{"greeting": PROFILE["greeting"], "account_linking_url": "https://x"}]}
    assert profile_sync.profile_from_answer(answer) == {"greeting": PROFILE["greeting"]}
    assert profile_sync.profile_from_answer({"data": []}) == {}
    empty = {"data": [{"whitelisted_domains": [], "get_started": None}]}
    assert profile_sync.profile_from_answer(empty) == {}


@pytest.mark.parametrize(
    ("name", "ours", "metas"),
    [
        (
            "whitelisted_domains",
            ["https://a.com", "https://b.com"],
            ["https://B.com/", "https://a.com"],
        ),
        ("greeting", PROFILE["greeting"], list(reversed(PROFILE["greeting"]))),
        (
            "persistent_menu",
            [{"locale": "default", "composer_input_disabled": False, "call_to_actions": []}],
            [{"locale": "default", "call_to_actions": []}],
        ),
        (
            "ice_breakers",
            [{"call_to_actions": [{"question": "Q", "payload": "P"}], "locale": "default"}],
            [{"question": "Q", "payload": "P"}],
        ),
    ],
)
def test_forms_meta_treats_alike_compare_equal(name: str, ours: Any, metas: Any) -> None:
    assert profile_sync.plan_profile({name: ours}, {name: metas}).empty


def test_what_people_see_differently_is_a_change() -> None:
    menu = PROFILE["persistent_menu"]
    reordered = [{**menu[0], "call_to_actions": list(reversed(menu[0]["call_to_actions"]))}]
    plan = profile_sync.plan_profile({"persistent_menu": menu[:1]}, {"persistent_menu": reordered})
    assert [c.action for c in plan.changes] == ["change"]
    assert plan.post_body == {"persistent_menu": menu[:1]}
    assert plan.delete_body is None
    tall = {
        "persistent_menu": [
            {
                **menu[0],
                "call_to_actions": [
                    {**menu[0]["call_to_actions"][1], "webview_height_ratio": "tall"}
                ],
            }
        ]
    }
    full = {"persistent_menu": [{**menu[0], "call_to_actions": [menu[0]["call_to_actions"][1]]}]}
    assert not profile_sync.plan_profile(tall, full).empty
