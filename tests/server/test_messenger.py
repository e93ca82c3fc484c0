"""Webhook bodies → events: every kind of the messenger-platform reference §4, the
conversation each belongs to, dedupe keys, malformed bodies, and the runtime `Inbound`."""

from __future__ import annotations

import json
from typing import Any

import pytest

from runtime.events import Inbound
from server.messenger import (
    EVENT_KINDS,
    MalformedPayload,
    WebhookEvent,
    parse_body,
    split_events,
    to_inbound,
)

PAGE = "682498171943165"
GREEN = "DEVELOPER_DEFINED_PAYLOAD_FOR_PICKING_GREEN"
USER = "1254459154682919"


def one(item: dict[str, Any], *, standby: bool = False) -> WebhookEvent:
    """The single event of a body holding `item`."""
    channel = "standby" if standby else "messaging"
    body = {"object": "page", "entry": [{"id": PAGE, "time": 1458692752478, channel: [item]}]}
    (event,) = parse_body(json.dumps(body).encode())
    return event


def user(**event: Any) -> dict[str, Any]:
    return {
        "sender": {"id": USER},
        "recipient": {"id": PAGE},
        "timestamp": 1458692752478,
        **event,
    }


# ----------------------------------------------------------------------------- messages


def test_text_message() -> None:
    event = one(user(message={"mid": "mid.1457764197618:41d102a3e1ae206a38", "text": "hi"}))
    assert (event.page_id, event.psid, event.kind) == (PAGE, USER, "message")
    assert event.key == "mid:mid.1457764197618:41d102a3e1ae206a38"
    assert to_inbound(event.kind, event.payload) == Inbound(
        "text", text="hi", mid="mid.1457764197618:41d102a3e1ae206a38"
    )


def test_quick_reply_carries_payload_and_the_tapped_title() -> None:
    # Reference §4.1, Meta's own full envelope.
    body = {
        "object": "page",
        "entry": [
            {
                "id": "<PAGE_ID>",
                "time": 1502905976963,
                "messaging": [
                    {
                        "sender": {"id": "1254459154682919"},
                        "recipient": {"id": "682498171943165"},
                        "timestamp": 1502905976377,
                        "message": {
                            "quick_reply": {
                                "payload": "DEVELOPER_DEFINED_PAYLOAD_FOR_PICKING_GREEN"
                            },
                            "mid": "m_AG5Hz2Uq7tuwNEhXfYYKj8mJEM_QPpz5jdCK48PnKAjSdjfipqxqMvK8ma6",
                            "text": "Green",
                        },
                    }
                ],
            }
        ],
    }
    (event,) = parse_body(json.dumps(body).encode())
    assert event.page_id == "<PAGE_ID>"  # the entry's id names the page
    assert to_inbound(event.kind, event.payload) == Inbound(
        "quick_reply",
        text="Green",
        payload=GREEN,
        mid="m_AG5Hz2Uq7tuwNEhXfYYKj8mJEM_QPpz5jdCK48PnKAjSdjfipqxqMvK8ma6",
    )


def test_email_quick_reply_delivers_the_address() -> None:
    message = {
        "mid": "m_1",
        "text": "ada@example.com",
        "quick_reply": {"payload": "ada@example.com"},
    }
    event = one(user(message=message))
    inbound = to_inbound(event.kind, event.payload)
    assert inbound is not None
    assert (inbound.kind, inbound.payload) == ("quick_reply", "ada@example.com")


def test_reply_to_is_a_text_message() -> None:
    message = {
        "mid": "m_1457764197618:41d102a3e1ae206a38",
        "text": "hello, world!",
        "reply_to": {"mid": "m_1fTq8oLumEyIp3Q2MR-aY7IfLZDamVrALniheU", "is_self_reply": False},
    }
    event = one(user(message=message))
    assert event.kind == "message"
    assert to_inbound(event.kind, event.payload) == Inbound(
        "text", text="hello, world!", mid="m_1457764197618:41d102a3e1ae206a38"
    )


def test_image_attachment() -> None:
    attachment = {"type": "image", "payload": {"url": "https://cdn.example/i.png"}}
    event = one(user(message={"mid": "mid.$cAAJdkrCd2ORnva8", "attachments": [attachment]}))
    assert to_inbound(event.kind, event.payload) == Inbound(
        "attachment", attachments=(attachment,), mid="mid.$cAAJdkrCd2ORnva8"
    )


@pytest.mark.parametrize("sticker_id", ["842488328414943", 369239263222822])
def test_sticker_during_the_transition_comes_with_an_image(sticker_id: Any) -> None:
    attachments = [
        {"type": "sticker", "payload": {"sticker_id": sticker_id, "url": "https://s.fb/1"}},
        {"type": "image", "payload": {"url": "https://s.fb/1"}},
    ]
    # Meta's sticker example has no timestamp.
    item = {"sender": {"id": USER}, "recipient": {"id": PAGE}}
    event = one({**item, "message": {"mid": "<MESSAGE_ID>", "attachments": attachments}})
    inbound = to_inbound(event.kind, event.payload)
    assert inbound == Inbound("attachment", attachments=tuple(attachments), mid="<MESSAGE_ID>")


def test_fallback_link_share_with_text_is_text_with_the_attachment() -> None:
    raw = (
        b'{"object":"page","entry":[{"id":"<PAGE_ID>","time":1583173667623,"messaging":[{'
        b'"sender":{"id":"<PSID>"},"recipient":{"id":"<PAGE_ID>"},"timestamp":1583173666767,'
        b'"message":{"mid":"m_toDnmD...","text":"This is where I want to go: '
        b'https:\\/\\/youtu.be\\/bbo_fZAjIhg","attachments":[{"type":"fallback","payload":'
        b'{"url":"<ATTACHMENT_URL >","title":"TAHITI - Heaven on Earth"}}]}}]}]}'
    )
    (event,) = parse_body(raw)
    inbound = to_inbound(event.kind, event.payload)
    assert inbound is not None
    assert inbound.kind == "text"
    assert inbound.text == "This is where I want to go: https://youtu.be/bbo_fZAjIhg"
    assert inbound.attachments[0]["type"] == "fallback"


def test_fallback_without_payload_is_an_attachment() -> None:
    attachment = {"type": "fallback", "payload": None}
    event = one(user(message={"mid": "m_2", "attachments": [attachment]}))
    assert to_inbound(event.kind, event.payload) == Inbound(
        "attachment", attachments=(attachment,), mid="m_2"
    )


def test_legacy_location_attachment() -> None:
    attachment = {
        "title": "Pin",
        "url": "https://maps.example",
        "type": "location",
        "payload": {"coordinates": {"lat": 48.85, "long": 2.35}},
    }
    event = one(user(message={"mid": "m_3", "attachments": [attachment]}))
    assert to_inbound(event.kind, event.payload) == Inbound(
        "location", attachments=(attachment,), mid="m_3"
    )


def test_a_message_with_nothing_usable_is_not_for_a_flow() -> None:
    event = one(user(message={"mid": "m_4", "commands": [{"name": "flights"}]}))
    assert event.kind == "message"
    assert to_inbound(event.kind, event.payload) is None


# ----------------------------------------------------------------------------- echoes


def test_echo_swaps_sender_and_recipient() -> None:
    echo = {
        "sender": {"id": PAGE},
        "recipient": {"id": USER},
        "timestamp": 1457764197627,
        "message": {
            "is_echo": True,
            "app_id": 1517776481860111,
            "metadata": "<DEVELOPER_DEFINED_METADATA_STRING>",
            "mid": "mid.1457764197618:41d102a3e1ae206a38",
            "text": "hello, world!",
        },
    }
    event = one(echo)
    assert (event.kind, event.page_id, event.psid) == ("echo", PAGE, USER)
    assert event.key == "mid:mid.1457764197618:41d102a3e1ae206a38"
    assert to_inbound(event.kind, event.payload) is None  # never answered


# ----------------------------------------------------------------------------- postbacks


def test_postback_with_mid_and_referral_from_an_m_me_link() -> None:
    postback = {
        "mid": "m_pb_1",
        "title": "Get Started",
        "payload": "GET_STARTED",
        "referral": {"ref": "summer", "source": "SHORTLINK", "type": "OPEN_THREAD"},
    }
    event = one(user(postback=postback))
    assert (event.kind, event.key) == ("postback", "pb:m_pb_1")
    assert to_inbound(event.kind, event.payload) == Inbound(
        "postback", text="Get Started", payload="GET_STARTED", ref="summer", mid="m_pb_1"
    )


def test_classic_postback_without_mid_is_keyed_by_its_content() -> None:
    postback = {"title": "<TITLE_FOR_THE_CTA>", "payload": "<USER_DEFINED_PAYLOAD>"}
    first = one(user(postback=postback))
    again = one(user(postback=postback))
    later = one({**user(postback=postback), "timestamp": 1458692752479})
    assert first.key.startswith("h:")
    assert first.key == again.key  # a redelivery
    assert later.key != first.key  # the user tapped again


# ----------------------------------------------------------------------------- others


def test_referral_of_an_existing_thread() -> None:
    referral = {"ref": "summer", "source": "SHORTLINK", "type": "OPEN_THREAD"}
    event = one(user(referral=referral))
    assert event.kind == "referral"
    assert to_inbound(event.kind, event.payload) == Inbound("referral", ref="summer")


def test_ad_referral_without_ref() -> None:
    referral = {"source": "ADS", "type": "OPEN_THREAD", "ad_id": "6045246247433"}
    event = one(user(referral=referral))
    assert to_inbound(event.kind, event.payload) == Inbound("referral", ref=None)


def test_optins() -> None:
    marketing = one(
        {
            "sender": {"id": "PSID"},
            "recipient": {"id": "PAGE-ID"},
            "timestamp": "TIMESTAMP",
            "optin": {
                "type": "notification_messages",
                "payload": "ADDITIONAL-INFORMATION",
                "notification_messages_token": "NOTIFICATION-MESSAGES-TOKEN",
                "title": "TITLE",
            },
        }
    )
    assert (marketing.kind, marketing.psid) == ("optin", "PSID")
    # The checkbox plugin's opt-in has no sender: a page-level event.
    plugin = one(
        {
            "recipient": {"id": PAGE},
            "timestamp": 1234567890,
            "optin": {"ref": "PASS_THROUGH_PARAM", "user_ref": "UNIQUE_REF_PARAM"},
        }
    )
    assert (plugin.kind, plugin.page_id, plugin.psid) == ("optin", PAGE, None)
    assert to_inbound(plugin.kind, plugin.payload) is None


def test_delivery_without_timestamp_and_read() -> None:
    delivery = one(
        {
            "sender": {"id": USER},
            "recipient": {"id": PAGE},
            "delivery": {
                "mids": ["mid.1458668856218:ed81099e15d3f4f233"],
                "watermark": 1458668856253,
            },
        }
    )
    read = one(user(read={"watermark": 1458668856253}))
    assert (delivery.kind, delivery.psid) == ("delivery", USER)
    assert (read.kind, read.psid) == ("read", USER)
    assert delivery.key != read.key


def test_reactions_are_keyed_by_mid_action_emoji_and_time() -> None:
    react = {"reaction": "love", "emoji": "\u2764\ufe0f", "action": "react", "mid": "m_x"}
    first = one(user(reaction=react))
    again = one(user(reaction=react))
    unreact = one(user(reaction={**react, "action": "unreact"}))
    assert first.kind == "reaction"
    assert first.key.startswith("re:")
    assert first.key == again.key
    assert unreact.key != first.key
    assert to_inbound(first.kind, first.payload) is None


@pytest.mark.parametrize(
    ("item", "kind"),
    [
        (
            user(
                pass_thread_control={
                    "previous_owner_app_id": None,
                    "new_owner_app_id": "123456789",
                    "metadata": "Additional content",
                }
            ),
            "pass_thread_control",
        ),
        (
            user(
                take_thread_control={
                    "previous_owner_app_id": "123456789",
                    "new_owner_app_id": "263902037430900",
                    "metadata": "additional content",
                }
            ),
            "take_thread_control",
        ),
        (
            user(request_thread_control={"requested_owner_app_id": 123456789, "metadata": "x"}),
            "request_thread_control",
        ),
        (
            {
                "recipient": {"id": PAGE},
                "timestamp": 1458692752478,
                "app_roles": {"123456789": ["primary_receiver"]},
            },
            "app_roles",
        ),
        (user(message_edit={"mid": "m_5", "text": "edited", "num_edit": 1}), "message_edit"),
        (user(account_linking={"status": "unlinked"}), "account_linking"),
        (
            {
                "recipient": {"id": PAGE},
                "timestamp": 1458692752478,
                "policy_enforcement": {"action": "block", "reason": "spam"},
            },
            "policy_enforcement",
        ),
        (user(game_play={"game_id": "1"}), "unknown"),
        (user(response_feedback={"feedback": "Good response", "mid": "m_6"}), "unknown"),
        (user(), "unknown"),
    ],
)
def test_other_kinds(item: dict[str, Any], kind: str) -> None:
    event = one(item)
    assert event.kind == kind
    assert kind in EVENT_KINDS
    assert to_inbound(event.kind, event.payload) is None


def test_standby_items_keep_their_inner_kind() -> None:
    event = one(user(message={"mid": "m_sb", "text": "to the human"}), standby=True)
    assert (event.kind, event.inner_kind, event.psid) == ("standby", "message", USER)
    # Kept apart from the same item on the messaging channel.
    assert event.key == "s:mid:m_sb"
    bare = one({"sender": {"id": "<USER_ID>"}, "recipient": {"id": PAGE}}, standby=True)
    assert (bare.kind, bare.inner_kind) == ("standby", "unknown")


# ----------------------------------------------------------------------------- envelopes


def test_every_entry_and_every_item_in_order() -> None:
    body = {
        "object": "page",
        "entry": [
            {
                "id": "p1",
                "time": 1,
                "messaging": [
                    user(message={"mid": "a", "text": "1"}),
                    user(message={"mid": "b", "text": "2"}),
                ],
                "standby": [user(read={"watermark": 5})],
            },
            {"id": "p2", "time": 2, "changes": [{"field": "feed", "value": {}}]},
            {"id": 3, "time": 3, "messaging": [user(message={"mid": 7, "text": "3"})]},
        ],
    }
    events = split_events(body)
    assert [(e.page_id, e.kind, e.key) for e in events] == [
        ("p1", "message", "mid:a"),
        ("p1", "message", "mid:b"),
        ("p1", "standby", events[2].key),
        ("3", "message", "mid:7"),  # numeric ids become text
    ]


def test_redelivery_differing_only_in_entry_time_has_the_same_keys() -> None:
    item = user(read={"watermark": 1458668856253})

    def body(time: int) -> dict[str, Any]:
        return {"object": "page", "entry": [{"id": PAGE, "time": time, "messaging": [item]}]}

    first = split_events(
        {"object": "page", "entry": [{"id": PAGE, "time": 1, "messaging": [item]}]}
    )
    again = split_events(
        {"object": "page", "entry": [{"id": PAGE, "time": 2, "messaging": [item]}]}
    )
    assert first[0].key == again[0].key


def test_a_very_long_mid_is_hashed_to_fit_the_key_column() -> None:
    event = one(user(message={"mid": "m" * 400, "text": "x"}))
    assert len(event.key) <= 255
    assert event.key.startswith("h:")


def test_page_id_falls_back_to_the_recipient() -> None:
    body = {"object": "page", "entry": [{"time": 1, "messaging": [user(read={"watermark": 1})]}]}
    assert split_events(body)[0].page_id == PAGE


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"not json",
        b"\xff\xfe",
        b"[]",
        b'"page"',
        b'{"object": "instagram", "entry": []}',
        b'{"entry": []}',
        b'{"object": "page"}',
        b'{"object": "page", "entry": {}}',
        b'{"object": "page", "entry": [1]}',
        b'{"object": "page", "entry": [{"id": "1", "messaging": {}}]}',
        b'{"object": "page", "entry": [{"id": "1", "messaging": ["x"]}]}',
        b'{"object": "page", "entry": [{"id": "1", "standby": [null]}]}',
        b'{"object": "page", "entry": [{"id": "1", "messaging": [{"timestamp": NaN}]}]}',
    ],
)
def test_malformed_bodies(raw: bytes) -> None:
    with pytest.raises(MalformedPayload):
        parse_body(raw)


def test_an_empty_entry_list_is_valid_and_has_no_events() -> None:
    assert parse_body(b'{"object": "page", "entry": []}') == []
