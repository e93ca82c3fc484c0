"""The sandboxed renderer: strict, cached, and its fast path agrees with Jinja."""

from __future__ import annotations

from typing import Any

import pytest
from jinja2 import StrictUndefined
from jinja2.sandbox import SandboxedEnvironment

from runtime.templates import Renderer, TemplateError, shared_renderer

CONTEXT: dict[str, Any] = {
    "name": "Ada",
    "count": 3,
    "price": 9.5,
    "flag": True,
    "nothing": None,
    "items": ["a", "b"],
    "user": {"first_name": "Ada", "items": "shadowed by dict.items", "locale": ""},
    "text": "{{ 7*7 }}",
}


@pytest.mark.parametrize(
    "source",
    [
        "plain text",
        "Hi {{ name }}!",
        "{{name}}{{count}}{{price}}{{flag}}{{nothing}}",
        "{{ user.first_name }} / {{ user['first_name'] }} / {{ user.locale }}",
        "{{ user.items }}",  # a dict method: the fast path must leave it to Jinja
        "{{ items }} {{ items|length }} {{ name|upper }}",
        "{% if flag %}yes{% else %}no{% endif %}",
        "{{ text }}",  # a value is data: never rendered again
        "{{ range }}",  # a Jinja global, not a variable
        "{{- name -}}  and  {{ count }}\n",
    ],
)
def test_render_agrees_with_a_plain_strict_sandbox(source: str) -> None:
    reference = SandboxedEnvironment(undefined=StrictUndefined, autoescape=False)
    expected = reference.from_string(source).render(CONTEXT)
    renderer = Renderer()
    assert renderer.render(source, CONTEXT) == expected
    assert renderer.render(source, CONTEXT) == expected  # cached path too


@pytest.mark.parametrize(
    ("source", "words"),
    [
        ("Hi {{ missing }}", ("undefined", "missing")),
        ("{{ user.nickname }}", ("undefined", "nickname")),
        ("{{ ''.__class__ }}", ("unsafe", "__class__")),
        ("{{ name.__class__.__mro__ }}", ("unsafe",)),
        ("{{ 'x' * 20000 }}", ("not allowed",)),
        ("{{ 2 ** 1000 }}", ("exponent",)),
        ("{{ name ", ("syntax",)),
        ("{{ count / 0 }}", ("ZeroDivisionError",)),
    ],
)
def test_render_failures_become_template_errors(source: str, words: tuple[str, ...]) -> None:
    with pytest.raises(TemplateError) as caught:
        Renderer().render(source, CONTEXT)
    for word in words:
        assert word in caught.value.reason


def test_evaluate_expressions_strictly() -> None:
    renderer = Renderer()
    assert renderer.evaluate("count + 1", CONTEXT) == 4
    assert renderer.evaluate("name == 'Ada' and flag", CONTEXT) is True
    assert renderer.evaluate("missing is defined", CONTEXT) is False
    with pytest.raises(TemplateError, match="undefined"):
        renderer.evaluate("missing", CONTEXT)
    with pytest.raises(TemplateError, match="undefined"):
        renderer.evaluate("missing + 1", CONTEXT)
    with pytest.raises(TemplateError, match="unsafe"):
        renderer.evaluate("name.__class__", CONTEXT)


def test_compiled_texts_and_expressions_are_cached_by_source() -> None:
    renderer = Renderer()
    renderer.render("Hi {{ name }}", CONTEXT)
    renderer.render("Hi {{ name }}", {"name": "Bob"})
    renderer.evaluate("count * 2", CONTEXT)
    renderer.evaluate("count * 2", {"count": 5})
    assert list(renderer._texts) == ["Hi {{ name }}"]
    assert list(renderer._expressions) == ["count * 2"]
    assert renderer.render("no braces", CONTEXT) == "no braces"
    assert "no braces" not in renderer._texts


def test_check_reports_syntax_errors_only() -> None:
    assert Renderer().check("{{ fine }}") is None
    assert "syntax" in (Renderer().check("{% if %}") or "")


def test_one_shared_renderer() -> None:
    assert shared_renderer() is shared_renderer()
