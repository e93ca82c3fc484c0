"""How keywords and messages are compared: the one normalisation shared by the compiler's
trigger-conflict check and the runtime's trigger matching.

Accents removed, case folded, apostrophes dropped (`don't` = `dont`), every other punctuation
mark a word break, each emoji a word of its own."""

from __future__ import annotations

import unicodedata

_APOSTROPHES = frozenset("'’ʼ`´")
#: For ASCII text, one bytes.translate does all of the normalisation: capitals to small
#: letters, letters and digits kept, every other character a space; apostrophes are deleted.
ASCII_FOLD = bytes(
    (ord(chr(i).lower()) if chr(i).isalnum() else 32) if i < 128 else i for i in range(256)
)
ASCII_APOSTROPHES = b"'`"


def words(text: str) -> tuple[str, ...]:
    """The normalised words of a text (see the module docstring).

    >>> words("Café?! I'd like PRICING 👍🏽")
    ('cafe', 'id', 'like', 'pricing', '👍')
    """
    if text.isascii():
        return tuple(text.encode().translate(ASCII_FOLD, ASCII_APOSTROPHES).decode().split())
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
