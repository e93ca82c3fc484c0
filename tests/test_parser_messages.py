"""Syntax errors in the author's words: what was expected, what was found, and the fix."""

from __future__ import annotations

import pytest

from flowlang import compile_source

HEADER = 'flow demo\n  when user says "demo"\n  step start\n'


def only_error(body: str) -> tuple[str, str | None, tuple[str, ...], int]:
    result = compile_source(HEADER + body, "demo.flow")
    assert len(result.errors) == 1, result.errors
    error = result.errors[0]
    line = result.sources["demo.flow"].position(error.span.start).line
    return f"{error.code}: {error.message}", error.help, error.notes, line


@pytest.mark.parametrize(
    ("typo", "keyword"), [("sey", "say"), ("aks", "ask"), ("goot", "goto"), ("snd", "send")]
)
def test_a_misspelled_keyword_gets_the_likeliest_suggestion(typo: str, keyword: str) -> None:
    message, help_text, notes, line = only_error(f'    {typo} "Hello"\n')
    assert message.startswith("FL002: expected ")
    assert f"found `{typo}`" in message
    assert help_text == f"did you mean `{keyword}`?"
    assert notes == ("this line is inside step `start` of flow `demo`",)
    assert line == 4


def test_curly_quotes_are_named() -> None:
    message, help_text, _, line = only_error("    say “Hello”\n")
    assert message.startswith("FL005: `“` is a curly quote")
    assert help_text is not None and "straight" not in help_text and '"' in help_text
    assert line == 4


def test_a_dash_in_a_name_explains_what_names_may_contain() -> None:
    message, help_text, _, line = only_error("    goto next-step\n")
    assert message == "FL005: `-` cannot be used here"
    assert help_text == "names can only contain letters, digits and underscores (_)"
    assert line == 4


def test_an_empty_step_at_the_end_of_the_file_names_that_step() -> None:
    result = compile_source(HEADER + '    say "hi"\n  step later\n', "demo.flow")
    (error,) = result.errors
    assert error.code == "FL006"
    assert "`step later` needs indented lines below it" in error.message
    assert result.sources["demo.flow"].position(error.span.start).line == 5


def test_a_missing_step_name_says_a_name_was_expected() -> None:
    message, _, _, line = only_error("    goto\n")
    assert message == "FL002: expected a name, found the end of the line"
    assert line == 4
