"""The page block as Messenger Profile API properties, and the difference with the live profile.

Pure functions (no I/O): `flowc page setup --configure-profile` reads the profile with one GET,
`plan_profile` compares, and the command sends at most one POST (every property that changed)
and one DELETE (every property the flows no longer define). Meta allows about 10 profile calls
per 10 minutes per page, so an unchanged profile costs the GET only.

Flowlang manages five properties (`MANAGED`); the page block is the truth for them, and a
property it does not define is removed from the page. Other properties (account linking URL,
commands, …) are never read or touched.

What counts as "the same" (Meta's answer may differ in form from what was sent, reference §9):

- greetings, menus and ice breakers are compared per locale, whatever the order of the locales;
  the order *within* a locale (menu items, ice breaker questions) is what people see, so it
  counts;
- a menu without `composer_input_disabled` has the text box (false is Meta's default); a
  `web_url` item without `webview_height_ratio` opens `full` (Meta's default);
- ice breakers in Meta's old flat format (`[{"question", "payload"}]`) are the `default` locale;
- web addresses compare without case in the scheme and host, and without a bare trailing `/`
  (`https://Example.com/` = `https://example.com`); whitelisted domains compare as a set;
- keys Flowlang never writes (e.g. `messenger_extensions` on a menu item) are ignored.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

from flowlang.ir import Button, PageConfig

#: The Messenger Profile properties a page block defines, in the order they are shown.
MANAGED: tuple[str, ...] = (
    "greeting",
    "get_started",
    "persistent_menu",
    "ice_breakers",
    "whitelisted_domains",
)
#: The `fields` query of the GET that reads them.
PROFILE_FIELDS = ",".join(MANAGED)
#: Meta's default height of a web page opened from a button.
DEFAULT_WEBVIEW_HEIGHT = "full"

Action = Literal["add", "change", "remove"]
_EMPTY: tuple[Any, ...] = (None, [], {}, "")


# ----------------------------------------------------------------------------- page block → JSON


def _button(button: Button) -> dict[str, Any]:
    found: dict[str, Any] = {"type": button.type, "title": button.title}
    if button.url is not None:
        found["url"] = button.url
    if button.webview_height_ratio is not None:
        found["webview_height_ratio"] = button.webview_height_ratio
    if button.payload is not None:
        found["payload"] = button.payload
    return found


def profile_from_page(page: PageConfig | None) -> dict[str, Any]:
    """The Messenger Profile properties the page block defines, shaped as Meta takes them
    (reference §9); a property the block does not define is left out."""
    if page is None:
        return {}
    profile: dict[str, Any] = {}
    if page.greeting:
        profile["greeting"] = [{"locale": g.locale, "text": g.text} for g in page.greeting]
    if page.get_started_payload is not None:
        profile["get_started"] = {"payload": page.get_started_payload}
    if page.persistent_menu:
        profile["persistent_menu"] = [
            {
                "locale": menu.locale,
                "composer_input_disabled": menu.composer_input_disabled,
                "call_to_actions": [_button(b) for b in menu.call_to_actions],
            }
            for menu in page.persistent_menu
        ]
    if page.ice_breakers:
        profile["ice_breakers"] = [
            {
                "call_to_actions": [
                    {"question": q.question, "payload": q.payload} for q in group.call_to_actions
                ],
                "locale": group.locale,
            }
            for group in page.ice_breakers
        ]
    if page.whitelisted_domains:
        profile["whitelisted_domains"] = list(page.whitelisted_domains)
    return profile


def profile_from_answer(answer: Mapping[str, Any]) -> dict[str, Any]:
    """The managed properties in Meta's answer to GET /me/messenger_profile
    (`{"data": [{…}]}`, or `{"data": []}` when none is set)."""
    data = answer.get("data")
    found: dict[str, Any] = {}
    if isinstance(data, list):
        for item in data:
            if isinstance(item, dict):
                # An empty value is no value: removing it would cost a call for nothing.
                found.update({k: v for k, v in item.items() if k in MANAGED and v not in _EMPTY})
    return found


# ----------------------------------------------------------------------------- normal forms


def _url(value: Any) -> str:
    text = str(value).strip()
    parts = urlsplit(text)
    if not parts.scheme or not parts.netloc:
        return text
    path = "" if parts.path == "/" else parts.path
    return urlunsplit(
        (parts.scheme.lower(), parts.netloc.lower(), path, parts.query, parts.fragment)
    )


def _locale_groups(value: Any) -> list[dict[str, Any]]:
    items = value if isinstance(value, list) else []
    groups = [item for item in items if isinstance(item, dict)]
    return sorted(groups, key=lambda g: str(g.get("locale", "default")))


def _normal_button(button: Any) -> tuple[Any, ...]:
    if not isinstance(button, dict):
        return ("?", json.dumps(button, sort_keys=True))
    kind = str(button.get("type", "")).lower()
    if kind == "web_url":
        height = button.get("webview_height_ratio") or DEFAULT_WEBVIEW_HEIGHT
        return (kind, button.get("title"), _url(button.get("url", "")), str(height).lower())
    return (kind, button.get("title"), button.get("payload"))


def _ice_breaker_groups(value: Any) -> list[dict[str, Any]]:
    items = value if isinstance(value, list) else []
    if items and all(isinstance(i, dict) and "question" in i for i in items):
        # Meta's old flat format: one list of questions for every locale.
        return [{"locale": "default", "call_to_actions": items}]
    return _locale_groups(items)


def normalise(name: str, value: Any) -> Any:
    """A comparable form of a property's value: equal forms mean Meta shows the same thing
    (see the module docstring for what is ignored)."""
    if name == "greeting":
        return tuple(
            (str(g.get("locale", "default")), g.get("text")) for g in _locale_groups(value)
        )
    if name == "get_started":
        return value.get("payload") if isinstance(value, dict) else value
    if name == "persistent_menu":
        return tuple(
            (
                str(menu.get("locale", "default")),
                bool(menu.get("composer_input_disabled", False)),
                tuple(_normal_button(b) for b in menu.get("call_to_actions") or ()),
            )
            for menu in _locale_groups(value)
        )
    if name == "ice_breakers":
        return tuple(
            (
                str(group.get("locale", "default")),
                tuple(
                    (q.get("question"), q.get("payload"))
                    for q in group.get("call_to_actions") or ()
                    if isinstance(q, dict)
                ),
            )
            for group in _ice_breaker_groups(value)
        )
    if name == "whitelisted_domains":
        items = value if isinstance(value, list) else [value]
        return tuple(sorted({_url(d) for d in items}))
    return json.dumps(value, sort_keys=True)


# ----------------------------------------------------------------------------- the plan


@dataclass(frozen=True)
class Change:
    """One property to write or remove. `before` is the live value (None: not set), `after`
    the page block's (None: the block no longer defines it, so it is removed)."""

    name: str
    before: Any
    after: Any

    @property
    def action(self) -> Action:
        """ "add", "change" or "remove"."""
        if self.before is None:
            return "add"
        return "remove" if self.after is None else "change"


@dataclass(frozen=True)
class ProfilePlan:
    """What to send to make the live profile match the page block."""

    changes: tuple[Change, ...]
    #: Managed properties that are already right (set or unset).
    unchanged: tuple[str, ...]

    @property
    def post_body(self) -> dict[str, Any] | None:
        """The one POST /me/messenger_profile body (every added or changed property), or
        None when there is nothing to write."""
        body = {c.name: c.after for c in self.changes if c.after is not None}
        return body or None

    @property
    def delete_body(self) -> dict[str, Any] | None:
        """The one DELETE /me/messenger_profile body, or None when nothing is removed. A menu
        is listed before the Get Started button it needs."""
        names = [c.name for c in self.changes if c.after is None]
        return {"fields": names} if names else None

    @property
    def empty(self) -> bool:
        """True when the live profile already matches: nothing is sent."""
        return not self.changes


def _same(name: str, want: Any, have: Any) -> bool:
    if want is None or have is None:
        return want is None and have is None
    return normalise(name, want) == normalise(name, have)


def plan_profile(desired: Mapping[str, Any], current: Mapping[str, Any]) -> ProfilePlan:
    """The changes that make `current` (the live managed properties) match `desired` (the
    page block's, from `profile_from_page`), in `MANAGED` order."""
    changes: list[Change] = []
    unchanged: list[str] = []
    # persistent_menu comes before get_started when both go: Meta wants a menu's Get Started.
    order = ("greeting", "persistent_menu", "get_started", "ice_breakers", "whitelisted_domains")
    for name in order:
        want, have = desired.get(name), current.get(name)
        if _same(name, want, have):
            unchanged.append(name)
        else:
            changes.append(Change(name, have, want))
    rank = {name: i for i, name in enumerate(MANAGED)}
    # Writes in the usual order, then removals (in `order`: a menu before its Get Started).
    shown = sorted(
        changes, key=lambda c: (c.after is None, rank[c.name] if c.after is not None else 0)
    )
    return ProfilePlan(tuple(shown), tuple(sorted(unchanged, key=rank.__getitem__)))


# ----------------------------------------------------------------------------- showing it


def _quoted(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def describe(name: str, value: Any) -> list[str]:
    """A property's value as lines a person reads (in its normal form, so that differences
    Meta ignores do not show)."""
    if value is None:
        return []
    form = normalise(name, value)
    if name == "greeting":
        return [f"{locale}: {_quoted(text)}" for locale, text in form]
    if name == "get_started":
        return [f"sends {_quoted(form)}"]
    if name == "persistent_menu":
        lines = []
        for locale, disabled, buttons in form:
            for button in buttons:
                if button[0] == "web_url":
                    lines.append(f"{locale}: {_quoted(button[1])} opens {button[2]} ({button[3]})")
                elif button[0] == "postback":
                    lines.append(f"{locale}: {_quoted(button[1])} sends {_quoted(button[2])}")
                else:
                    lines.append(f"{locale}: {button[0]} {_quoted(button[1:])}")
            if disabled:
                lines.append(f"{locale}: typing disabled (menu only)")
        return lines
    if name == "ice_breakers":
        return [
            f"{locale}: {_quoted(question)} sends {_quoted(payload)}"
            for locale, questions in form
            for question, payload in questions
        ]
    if name == "whitelisted_domains":
        return list(form)
    return [str(form)]


_HEADINGS = {
    "add": "{name}: new",
    "change": "{name}: changed",
    "remove": "{name}: removed (the flows no longer define it)",
}


def render_change(change: Change) -> list[str]:
    """One change as a heading and a listing: `- ` lines go, `+ ` lines come, and the lines
    that stay are shown indented for context."""
    lines = [_HEADINGS[change.action].format(name=change.name)]
    before, after = describe(change.name, change.before), describe(change.name, change.after)
    matcher = difflib.SequenceMatcher(a=before, b=after, autojunk=False)
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        if tag == "equal":
            lines.extend(f"      {line}" for line in before[i1:i2])
            continue
        lines.extend(f"    - {line}" for line in before[i1:i2])
        lines.extend(f"    + {line}" for line in after[j1:j2])
    if change.action == "change" and before == after:
        # Same content in another form Meta does not treat alike (e.g. an unknown key).
        lines.append("    (same items; Meta's copy differs in detail)")
    return ["  " + lines[0], *lines[1:]]


def render_plan(plan: ProfilePlan) -> list[str]:
    """The whole plan as lines (empty when nothing changes)."""
    lines: list[str] = []
    for change in plan.changes:
        lines.extend(render_change(change))
    return lines


def names(changes: Sequence[Change]) -> str:
    """ "greeting, persistent_menu" for a list of changes."""
    return ", ".join(c.name for c in changes)
