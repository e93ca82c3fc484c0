"""The examples in the runtime's docstrings run, and docs/runtime.md covers every rule."""

from __future__ import annotations

import doctest
from pathlib import Path

import pytest

from runtime import chat, engine, matching, program, templates, validation

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("module", [chat, engine, matching, program, templates, validation])
def test_docstring_examples(module: object) -> None:
    failures, _ = doctest.testmod(module, optionflags=doctest.ELLIPSIS)  # type: ignore[arg-type]
    assert failures == 0


def test_runtime_doc_explains_each_rule() -> None:
    text = (ROOT / "docs" / "runtime.md").read_text(encoding="utf-8").lower()
    for topic in (
        "priority",
        "accents",
        "whole words",
        "fallback",
        "interrupt",
        "resume",
        "stale",
        "tries",
        "handed over",
        "max_actions",
        "error message",
        "{{ 7*7 }}",
        "version",
        "flowc chat",
        "--json",
    ):
        assert topic in text, topic
