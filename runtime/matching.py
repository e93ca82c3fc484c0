"""Trigger matching: which flow an inbound event starts, and how user text is normalised.

Words are compared after normalisation: accents removed, case folded, apostrophes dropped
(`don't` = `dont`), every other punctuation mark a word break, each emoji a word of its own.
A keyword matches when its words appear in the message as consecutive whole words. The index is
built once per program; matching a message costs one normalisation and a few dict lookups."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from flowlang import ir
from flowlang.keywords import ASCII_APOSTROPHES, ASCII_FOLD, words

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
        # Entries carry their hit's rank, computed once (it is compared for every match).
        self.keywords: dict[str, list[tuple[tuple[str, ...], TriggerHit, Any]]] = {}
        self.regexes: list[tuple[re.Pattern[str], TriggerHit, Any]] = []
        for hit, key in hits:
            if isinstance(key, tuple):
                self.keywords.setdefault(key[0], []).append((key, hit, hit.rank))
            else:
                self.regexes.append((key, hit, hit.rank))
        # A keyword matches only if its first word is in the text. For ASCII text that can be
        # ruled out with a few substring tests before splitting it into words, which pays when
        # there are few keywords (the interrupting ones, checked against every answer).
        # Non-ASCII first words never occur among the words of an ASCII text.
        firsts = [word for word in self.keywords if word.isascii()]
        self._probe: tuple[str, ...] | None = tuple(firsts) if len(firsts) <= 8 else None
        self._any = bool(self.keywords or self.regexes)
        self._one_word = all(
            len(key) == 1 for entries in self.keywords.values() for key, *_ in entries
        )
        # With one-word keywords only, each word has one winner: its first entry of the best
        # rank (what the loop over its entries would pick).
        self._best_by_word: dict[str, tuple[TriggerHit, Any]] = {}
        for word, entries in self.keywords.items():
            for _, hit, rank in entries:
                known = self._best_by_word.get(word)
                if known is None or rank < known[1]:
                    self._best_by_word[word] = (hit, rank)

    def __bool__(self) -> bool:
        return self._any

    def may_match(self, text: str) -> bool:
        """False only when no trigger of this index can match `text`: a quick test (the
        probe above) that saves the full match for most texts when there are few keywords."""
        probe = self._probe
        if probe is None or self.regexes or not text.isascii():
            return self._any
        if "'" in text or "`" in text:
            folded = text.encode().translate(ASCII_FOLD, ASCII_APOSTROPHES).decode()
        else:  # the probe words are letters and digits: finding them needs only the case fold
            folded = text.lower()
        for word in probe:  # noqa: SIM110 (a plain loop: any() and a generator cost more)
            if word in folded:
                return True
        return False

    def match(self, text: str) -> TriggerHit | None:
        best: TriggerHit | None = None
        best_rank: Any = None
        keywords = self.keywords
        if keywords:
            said: Any
            if text.isascii():
                # `words` for ASCII text, with the probe in between.
                folded = text.encode().translate(ASCII_FOLD, ASCII_APOSTROPHES).decode()
                probe = self._probe
                if probe is not None:
                    for word in probe:
                        if word in folded:
                            break
                    else:
                        folded = ""
                said = folded.split() if folded else ()
            else:
                said = words(text)
            if self._one_word:
                best_by_word = self._best_by_word
                for word in said:
                    found = best_by_word.get(word)
                    if found is not None and (best is None or found[1] < best_rank):
                        best, best_rank = found
            else:
                for i, word in enumerate(said):
                    entries = keywords.get(word)
                    if entries is None:
                        continue
                    for key, hit, rank in entries:
                        size = len(key)
                        if (size == 1 or tuple(said[i : i + size]) == key) and (
                            best is None or rank < best_rank
                        ):
                            best, best_rank = hit, rank
        if self.regexes:
            stripped = text.strip()
            for pattern, hit, rank in self.regexes:
                if (best is None or rank < best_rank) and pattern.search(stripped):
                    best, best_rank = hit, rank
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
        #: Whether any trigger matches typed text at all.
        self.has_text = bool(self.text)

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
        if interrupting_only:
            return self.interrupting_text.match(text) if self.has_interrupting_text else None
        return self.text.match(text) if self.has_text else None

    def fallback(self) -> TriggerHit | None:
        """The best `when nothing else matches` flow."""
        return _best(self.fallback_hits)
