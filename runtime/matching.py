"""Trigger matching: which flow an inbound event starts, and how user text is normalised.

Words are compared after normalisation: accents removed, case folded, apostrophes dropped
(`don't` = `dont`), every other punctuation mark a word break, each emoji a word of its own.
A keyword matches when its words appear in the message as consecutive whole words. The index is
built once per program; matching a message costs one normalisation and a few dict lookups."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from flowlang import ir

_APOSTROPHES = frozenset("'’ʼ`´")
_ASCII_WORD = re.compile(r"[a-z0-9]+")

#: When two flows match one event with the same priority, the trigger kind decides, then the
#: flow id (alphabetically), so the winner never depends on file order or dict order.
KIND_RANK = {
    "postback": 0,
    "quick_reply": 0,
    "referral": 1,
    "get_started": 2,
    "keyword": 3,
    "regex": 4,
    "fallback": 5,
}


def words(text: str) -> tuple[str, ...]:
    """The normalised words of a text (see the module docstring).

    >>> words("Café?! I'd like PRICING 👍🏽")
    ('cafe', 'id', 'like', 'pricing', '👍')
    """
    if text.isascii():
        return tuple(_ASCII_WORD.findall(text.lower().replace("'", "").replace("`", "")))
    out: list[str] = []
    word: list[str] = []
    category = unicodedata.category
    for ch in unicodedata.normalize("NFKD", text):
        if ch in _APOSTROPHES:
            continue
        cat = category(ch)
        if cat[0] in "LN":
            word.append(ch)
        elif cat == "Mn":  # accents and emoji variation selectors: ignore, keep the word whole
            continue
        else:
            if word:
                out.append("".join(word).casefold())
                word = []
            if cat == "So":  # emoji and other pictographs are words of their own
                out.append(ch)
    if word:
        out.append("".join(word).casefold())
    return tuple(out)


def normalise(text: str) -> str:
    """The normalised form of a text: its words joined by single spaces."""
    return " ".join(words(text))


@dataclass(frozen=True, slots=True)
class TriggerHit:
    """A trigger that matched: which flow, by which kind of trigger, on which value."""

    flow_id: str
    kind: str
    value: str
    interrupting: bool
    priority: int
    source: str

    @property
    def rank(self) -> tuple[int, int, str]:
        """Sort key: higher priority first, then trigger kind, then flow id."""
        return (-self.priority, KIND_RANK[self.kind], self.flow_id)


def _best(hits: Iterable[TriggerHit]) -> TriggerHit | None:
    best: TriggerHit | None = None
    for hit in hits:
        if best is None or hit.rank < best.rank:
            best = hit
    return best


class _TextIndex:
    """Keyword and regex triggers, for matching typed text."""

    def __init__(self, hits: Iterable[tuple[TriggerHit, tuple[str, ...] | re.Pattern[str]]]):
        self.keywords: dict[str, list[tuple[tuple[str, ...], TriggerHit]]] = {}
        self.regexes: list[tuple[re.Pattern[str], TriggerHit]] = []
        for hit, key in hits:
            if isinstance(key, tuple):
                self.keywords.setdefault(key[0], []).append((key, hit))
            else:
                self.regexes.append((key, hit))

    def __bool__(self) -> bool:
        return bool(self.keywords or self.regexes)

    def match(self, text: str) -> TriggerHit | None:
        best: TriggerHit | None = None
        keywords = self.keywords
        if keywords:
            said = words(text)
            for i, word in enumerate(said):
                entries = keywords.get(word)
                if entries is None:
                    continue
                for key, hit in entries:
                    if (len(key) == 1 or said[i : i + len(key)] == key) and (
                        best is None or hit.rank < best.rank
                    ):
                        best = hit
        if self.regexes:
            stripped = text.strip()
            for pattern, hit in self.regexes:
                if (best is None or hit.rank < best.rank) and pattern.search(stripped):
                    best = hit
        return best


class TriggerIndex:
    """Every trigger of the active flows of a program, indexed for matching one event."""

    def __init__(self, flows: Iterable[ir.Flow]) -> None:
        self.payloads: dict[str, list[TriggerHit]] = {}
        self.referrals: dict[str, list[TriggerHit]] = {}
        self.get_started_hits: list[TriggerHit] = []
        self.fallback_hits: list[TriggerHit] = []
        #: Patterns that did not compile (the compiler reports them; the runtime skips them).
        self.bad_patterns: list[TriggerHit] = []
        text_all: list[tuple[TriggerHit, tuple[str, ...] | re.Pattern[str]]] = []
        for flow in flows:
            if not flow.active:
                continue
            for trigger in flow.triggers:
                where = f"{trigger.source.file}:{trigger.source.line}"
                for value in trigger.values or ("",):
                    hit = TriggerHit(
                        flow.id, trigger.kind, value, trigger.interrupting, flow.priority, where
                    )
                    self._add(hit, text_all)
        self.text = _TextIndex(text_all)
        self.interrupting_text = _TextIndex((hit, key) for hit, key in text_all if hit.interrupting)
        #: Whether any trigger can interrupt a waiting flow by text (checked on every answer).
        self.has_interrupting_text = bool(self.interrupting_text)

    def _add(self, hit: TriggerHit, text: list[tuple[TriggerHit, Any]]) -> None:
        kind, value = hit.kind, hit.value
        if kind in ("postback", "quick_reply"):
            self.payloads.setdefault(value, []).append(hit)
        elif kind == "referral":
            self.referrals.setdefault(value, []).append(hit)
        elif kind == "get_started":
            self.get_started_hits.append(hit)
        elif kind == "fallback":
            self.fallback_hits.append(hit)
        elif kind == "keyword":
            key = words(value)
            if key:
                text.append((hit, key))
        elif kind == "regex":
            try:
                text.append((hit, re.compile(value, re.IGNORECASE)))
            except re.error:
                self.bad_patterns.append(hit)

    def by_payload(self, payload: str) -> TriggerHit | None:
        """The best `when postback` / `when quick reply` trigger for a payload.

        A payload is a payload: either kind of trigger matches a button tap or a quick reply
        tap, so one trigger covers a menu item, an ice breaker and a quick reply alike."""
        return _best(self.payloads.get(payload, ()))

    def by_referral(self, ref: str) -> TriggerHit | None:
        """The best `when referral` trigger for a ref (m.me link, ad, QR code)."""
        return _best(self.referrals.get(ref, ()))

    def get_started(self) -> TriggerHit | None:
        """The best `when get started` trigger."""
        return _best(self.get_started_hits)

    def by_text(self, text: str, *, interrupting_only: bool = False) -> TriggerHit | None:
        """The best keyword or regex trigger for typed text."""
        index = self.interrupting_text if interrupting_only else self.text
        return index.match(text) if index else None

    def fallback(self) -> TriggerHit | None:
        """The best `when nothing else matches` flow."""
        return _best(self.fallback_hits)
