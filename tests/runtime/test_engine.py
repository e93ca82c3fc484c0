"""The engine's semantics, one test (or a few) per rule of docs/runtime.md."""

from __future__ import annotations

import copy

import pytest
from engine_kit import LEAD_TEXTS, Bot, compile_flows, texts

from runtime.engine import DEFAULT_ERROR_MESSAGE, advance, take_back
from runtime.events import Inbound
from runtime.program import ProgramView
from runtime.state import ConversationState

LEAD = """
flow lead_generation
  title "Lead generation"
  priority 8
  when user says "interested", "demo", "pricing"

  step start
    say "Great! I'd love to learn more about your needs."
    ask "What's your name?" as lead_name

  step collect_email
    say "Nice to meet you, {{ lead_name }}!"
    ask "What's your email address?" as lead_email
      expect an email address
      quick reply email
      if invalid say "That doesn't look like an email address. Could you check it?"
      after 3 tries goto no_email

  step thanks
    say "Perfect! Our sales team will contact you at {{ lead_email }} within 24 hours."
    say "Thank you for your interest! 🚀"
    end

  step no_email
    say "No email then."
    end
"""


# ------------------------------------------------------------------------------- the seed


def test_lead_generation_conversation_in_order() -> None:
    bot = Bot(compile_flows(LEAD))
    said = bot.says_texts("I am interested in pricing")
    said += bot.says_texts("Ada")
    said += bot.says_texts("ada@example.com")
    assert said == LEAD_TEXTS
    assert bot.state.status == "idle"
    assert bot.state.variables == {"lead_name": "Ada", "lead_email": "ada@example.com"}


def test_advance_never_mutates_the_input_state() -> None:
    program = ProgramView(compile_flows(LEAD, CALLS))
    state = ConversationState("p", "u")
    for text in ("pricing", "Ada", "nope", "main", "x"):
        before = copy.deepcopy(state.to_dict())
        turn = advance(program, state, Inbound("text", text=text))
        assert state.to_dict() == before
        assert turn.state is not state
        assert turn.state.variables is not state.variables
        assert turn.state.stack is not state.stack
        state = turn.state


# ------------------------------------------------------------------------- trigger matching

KEYWORDS = """
flow cafe
  when user says "café", "talk to sales", "don't know"
  step s
    say "cafe flow"
"""


@pytest.mark.parametrize(
    ("message", "matches"),
    [
        ("café", True),
        ("CAFE!!", True),
        ("Un CAFÉ, s'il vous plaît", True),
        ("cafés", False),  # whole words only
        ("decafe", False),
        ("I want to TALK to sales.", True),  # multi-word keyword
        ("talk - to... sales", True),  # punctuation is a word break
        ("talk sales", False),
        ("I dont know", True),  # apostrophes are dropped on both sides
        ("I don’t know", True),
        ("", False),
    ],
)
def test_keywords_ignore_case_accents_punctuation_and_match_whole_words(
    message: str, matches: bool
) -> None:
    bot = Bot(compile_flows(KEYWORDS))
    assert (bot.says_texts(message) == ["cafe flow"]) is matches


PRIORITIES = """
flow low
  priority 1
  when user says "hello"
  step s
    say "low"

flow high
  priority 5
  when user says "hello"
  step s
    say "high"

flow beta
  priority 3
  when user says "banana"
  step s
    say "beta"

flow alpha
  priority 3
  when user says "apple"
  step s
    say "alpha"

flow by_regex
  priority 3
  when message matches "^order \\d+$"
  step s
    say "regex"

flow by_word
  priority 3
  when user says "order"
  step s
    say "keyword"

flow urgent
  priority 9
  when message matches "urgent"
  step s
    say "urgent"
"""


def test_higher_priority_wins_and_ties_are_broken_by_kind_then_flow_id() -> None:
    bot = Bot(compile_flows(PRIORITIES))
    assert bot.says_texts("hello") == ["high"]
    # Same priority: the flow id decides (alphabetically), not where the words are.
    assert bot.says_texts("banana and apple") == ["alpha"]
    assert bot.says_texts("apple and banana") == ["alpha"]
    assert bot.says_texts("Order 12") == ["keyword"]  # same priority: keyword before regex
    assert bot.says_texts("hello, URGENT") == ["urgent"]  # priority first, whatever the kind


def test_regex_trigger_searches_case_insensitively() -> None:
    bot = Bot(compile_flows(PRIORITIES))
    assert bot.says_texts("  ORDER 42  ") == ["keyword"]  # both match; keyword ranks first
    bot = Bot(compile_flows(PRIORITIES.split("flow by_word")[0]))
    assert bot.says_texts("ORDER 42") == ["regex"]
    assert bot.says_texts("my order 42") == []  # ^ anchors: no match, no fallback


PAYLOADS = """
flow sales
  when quick reply "SALES"
  step s
    say "sales by payload"

flow menu
  when postback "MENU"
  step s
    say "menu by payload"

flow pricing
  priority 9
  when user says "pricing", "menu"
  step s
    say "pricing by keyword"
"""


def test_payload_trigger_beats_keyword_whatever_the_priority() -> None:
    bot = Bot(compile_flows(PAYLOADS))
    assert texts(bot.quick("SALES", "Pricing")) == ["sales by payload"]
    assert texts(bot.taps("MENU", "pricing")) == ["menu by payload"]


def test_a_payload_is_a_payload_for_both_trigger_kinds() -> None:
    bot = Bot(compile_flows(PAYLOADS))
    assert texts(bot.taps("SALES")) == ["sales by payload"]
    assert texts(bot.quick("MENU", "Menu")) == ["menu by payload"]


def test_unmatched_quick_reply_is_read_as_the_text_the_user_tapped() -> None:
    bot = Bot(compile_flows(PAYLOADS))
    assert texts(bot.quick("SOMETHING", "Pricing")) == ["pricing by keyword"]


FALLBACK = """
flow hello
  when user says "hello"
  step s
    ask "Name?" as name
    say "Hi {{ name }}"

flow sorry
  when nothing else matches
  step s
    say "Sorry?"
"""


def test_fallback_runs_only_when_nothing_else_matches() -> None:
    bot = Bot(compile_flows(FALLBACK))
    assert bot.says_texts("blah") == ["Sorry?"]
    assert bot.says_texts("hello") == ["Name?"]


def test_fallback_never_runs_while_a_flow_waits() -> None:
    bot = Bot(compile_flows(FALLBACK))
    bot.says("hello")
    assert bot.says_texts("blah") == ["Hi blah"]


def test_unmatched_postback_runs_the_fallback_when_idle() -> None:
    bot = Bot(compile_flows(FALLBACK))
    assert texts(bot.taps("UNKNOWN")) == ["Sorry?"]


def test_no_match_and_no_fallback_sends_nothing() -> None:
    bot = Bot(compile_flows(FALLBACK.split("flow sorry")[0]))
    turn = bot.says("blah")
    assert turn.outbox == [] and turn.faults == []
    assert turn.trace[-1].kind == "nothing"


ENTRY = """
page
  get started sends "GET_STARTED"
  error message "Page error."

flow welcome
  when get started
  step s
    say "Welcome {{ user.first_name }}"

flow campaign
  when referral "summer"
  step s
    say "Summer sale"

flow off
  inactive
  when user says "hidden"
  step s
    say "never"
"""


def test_get_started_referral_and_inactive_flows() -> None:
    bot = Bot(compile_flows(ENTRY))
    assert texts(bot.send(Inbound("get_started"))) == ["Welcome Ada"]
    # The Get Started button arrives as a postback with the page's payload.
    assert texts(bot.taps("GET_STARTED", "Get Started")) == ["Welcome Ada"]
    assert texts(bot.send(Inbound("referral", ref="summer"))) == ["Summer sale"]
    # A referral is an arrival, not a message: with no matching flow, nothing happens.
    assert bot.send(Inbound("referral", ref="winter")).outbox == []
    # Get Started with a ref (an m.me link for a new user): the referral is more specific.
    assert texts(bot.send(Inbound("get_started", ref="summer"))) == ["Summer sale"]
    assert bot.says("hidden").outbox == []  # inactive: its triggers never fire


# ---------------------------------------------------------------- waiting and interrupting

INTERRUPTS = """
flow order
  when user says "order"
  step ask_size
    ask "What size?" as size
      choice "Small"
      choice "Large"
      choice "Talk to a person"
    say "Size {{ size }}"
    ask "Color?" as color
    say "Order: {{ size }} {{ color }}"

flow help
  interrupt when user says "help"
  step s
    say "Help text."
    resume

flow stop
  interrupt when user says "stop"
  step s
    say "Stopped."

flow agent
  interrupt when user says "person"
  step s
    say "A person will come."

flow other
  when user says "pricing"
  when postback "PRICING"
  step s
    say "Pricing!"

flow urgent
  interrupt when postback "URGENT"
  step s
    say "Urgent!"
    resume
"""


def test_waiting_flow_takes_the_next_message_as_the_answer_even_if_it_is_a_keyword() -> None:
    bot = Bot(compile_flows(INTERRUPTS))
    bot.says("order")
    bot.says("Small")
    assert bot.says_texts("pricing") == ["Order: Small pricing"]


def test_interrupting_trigger_pauses_the_flow_and_resume_asks_again() -> None:
    bot = Bot(compile_flows(INTERRUPTS))
    bot.says("order")
    bot.says("medium")  # a wrong answer: one try counted
    assert bot.state.tries == 1
    turn = bot.says("help me")
    assert texts(turn) == ["Help text.", "What size?"]
    assert bot.state.status == "waiting" and bot.state.flow_id == "order"
    assert bot.state.tries == 1  # the interrupted question keeps its count
    assert bot.state.stack == []
    assert bot.says_texts("large") == ["Size Large", "Color?"]


def test_interrupted_flow_is_on_the_stack_while_the_interrupting_flow_waits() -> None:
    program = compile_flows(
        INTERRUPTS,
        """
        flow survey
          interrupt when user says "survey"
          step s
            ask "Rate us?" as rating
            resume
        """,
    )
    bot = Bot(program)
    bot.says("order")
    bot.says("survey")
    assert [(f.flow_id, f.reason, f.status) for f in bot.state.stack] == [
        ("order", "interrupt", "waiting")
    ]
    assert bot.says_texts("5") == ["What size?"]
    assert bot.state.variables["rating"] == "5"


def test_end_of_an_interrupting_flow_drops_the_interrupted_one() -> None:
    bot = Bot(compile_flows(INTERRUPTS))
    bot.says("order")
    assert bot.says_texts("stop") == ["Stopped."]
    assert bot.state.status == "idle" and bot.state.stack == []
    assert bot.says_texts("Small") == []  # no longer an answer to anything


def test_a_typed_choice_title_is_an_answer_not_an_interruption() -> None:
    bot = Bot(compile_flows(INTERRUPTS))
    bot.says("order")
    assert bot.says_texts("talk to a person") == ["Size Talk to a person", "Color?"]


def test_payload_trigger_while_waiting_replaces_the_flow_unless_it_interrupts() -> None:
    bot = Bot(compile_flows(INTERRUPTS))
    bot.says("order")
    assert texts(bot.taps("URGENT")) == ["Urgent!", "What size?"]  # interrupting: comes back
    assert texts(bot.taps("PRICING")) == ["Pricing!"]  # not interrupting: the order is dropped
    assert bot.state.status == "idle" and bot.state.stack == []


def test_unmatched_postback_while_waiting_asks_again_without_counting_a_try() -> None:
    bot = Bot(compile_flows(INTERRUPTS))
    bot.says("order")
    assert texts(bot.taps("NOTHING", "Some button")) == ["What size?"]
    assert bot.state.tries == 0 and bot.state.status == "waiting"


# ------------------------------------------------------------------------------- asking


def _ask(expect: str, extra: str = "") -> Bot:
    program = compile_flows(
        f"""
        flow q
          when user says "go"
          step s
            ask "Answer?" as v
              expect {expect}
        {extra}
            say "got {{{{ v }}}}"
        """
    )
    bot = Bot(program)
    bot.says("go")
    return bot


@pytest.mark.parametrize(
    ("expect", "answer", "stored"),
    [
        ("text", "  Ada Lovelace ", "Ada Lovelace"),
        ("a number", "42", 42),
        ("a number", "-3.5", -3.5),
        ("a number", "1,5", 1.5),
        ("a number", "1,000", 1000),
        ("a number", "1 234,5", 1234.5),
        ("an email address", " ada@example.com ", "ada@example.com"),
        ("a phone number", "+1 (555) 123-4567", "+15551234567"),
        ("a phone number", "0612345678", "0612345678"),
        ("yes or no", "Yes!", True),
        ("yes or no", "y", True),
        ("yes or no", "Yeah", True),
        ("yes or no", "👍", True),
        ("yes or no", "nope", False),
        ("yes or no", "FALSE", False),
        ('pattern "[a-z]{2}\\d{3}"', "AB123", "AB123"),
    ],
)
def test_expect_kinds_accept_and_store_typed_values(
    expect: str, answer: str, stored: object
) -> None:
    bot = _ask(expect)
    turn = bot.says(answer)
    assert bot.state.variables["v"] == stored
    assert type(bot.state.variables["v"]) is type(stored)
    assert texts(turn) == [f"got {stored}"]


@pytest.mark.parametrize(
    ("expect", "answer"),
    [
        ("text", "   "),
        ("a number", "forty-two"),
        ("a number", "1,2,3"),
        ("a number", "1e5"),
        ("an email address", "ada@example"),
        ("an email address", "ada@@example.com"),
        ("an email address", "ada example.com"),
        ("a phone number", "12345"),
        ("a phone number", "call me maybe"),
        ("a phone number", "1234567890123456"),
        ("yes or no", "maybe"),
        ('pattern "[a-z]{2}\\d{3}"', "AB1234"),
    ],
)
def test_expect_kinds_refuse_wrong_answers(expect: str, answer: str) -> None:
    bot = _ask(expect)
    turn = bot.says(answer)
    assert texts(turn) == ["Answer?"]  # no reask text: the question again
    assert bot.state.tries == 1 and "v" not in bot.state.variables


def test_a_picture_is_not_a_text_answer() -> None:
    bot = _ask("text")
    image = {"type": "image", "payload": {"url": "https://example.com/cat.png"}}
    assert texts(bot.send(Inbound("attachment", attachments=(image,)))) == ["Answer?"]
    assert bot.state.tries == 1


CHOICES = """
flow pick
  when user says "pick"
  step s
    ask "Which one?" as fruit
      choice "Apple"
      choice "Banana" goto banana
      choice "Cherry" sends "CHERRY"
    say "You chose {{ fruit }}"
    end
  step banana
    say "Bananas!"
"""


@pytest.mark.parametrize(
    ("event", "stored"),
    [
        (Inbound("quick_reply", payload="ANSWER:pick:s.0:0", text="Apple"), "Apple"),
        (Inbound("quick_reply", payload="CHERRY", text="Cherry"), "Cherry"),
        (Inbound("text", text="  apple!"), "Apple"),
        (Inbound("text", text="3"), "Cherry"),
    ],
)
def test_choice_answers_by_payload_title_or_number(event: Inbound, stored: str) -> None:
    bot = Bot(compile_flows(CHOICES))
    bot.says("pick")
    turn = bot.send(event)
    assert bot.state.variables["fruit"] == stored
    assert texts(turn) == [f"You chose {stored}"]


def test_choice_with_a_target_goes_there_after_storing_the_answer() -> None:
    bot = Bot(compile_flows(CHOICES))
    bot.says("pick")
    assert bot.says_texts("2") == ["Bananas!"]
    assert bot.state.variables["fruit"] == "Banana"


def test_wrong_choice_is_refused() -> None:
    bot = Bot(compile_flows(CHOICES))
    bot.says("pick")
    assert bot.says_texts("4") == ["Which one?"]
    assert bot.says_texts("durian") == ["Which one?"]
    assert bot.state.tries == 2


def test_choice_quick_replies_and_button_choices_have_the_send_api_shape() -> None:
    bot = Bot(compile_flows(CHOICES))
    (body,) = bot.says("pick").messages
    assert body == {
        "text": "Which one?",
        "quick_replies": [
            {"content_type": "text", "title": "Apple", "payload": "ANSWER:pick:s.0:0"},
            {"content_type": "text", "title": "Banana", "payload": "ANSWER:pick:s.0:1"},
            {"content_type": "text", "title": "Cherry", "payload": "CHERRY"},
        ],
    }
    program = compile_flows(
        """
        flow pick
          when user says "pick"
          step s
            ask "Which one?" as fruit
              button "Apple" goto s
              button "Pear" sends "PEAR"
            say "ok {{ fruit }}"
        """
    )
    bot = Bot(program)
    (body,) = bot.says("pick").messages
    assert body == {
        "attachment": {
            "type": "template",
            "payload": {
                "template_type": "button",
                "text": "Which one?",
                "buttons": [
                    {"type": "postback", "title": "Apple", "payload": "ANSWER:pick:s.0:0"},
                    {"type": "postback", "title": "Pear", "payload": "PEAR"},
                ],
            },
        }
    }
    assert texts(bot.taps("PEAR", "Pear")) == ["ok Pear"]


def test_email_and_phone_quick_replies_and_their_answers() -> None:
    program = compile_flows(
        """
        flow contact
          when user says "contact"
          step s
            ask "Email?" as email
              expect an email address
              quick reply email
            ask "Phone?" as phone
              expect a phone number
              quick reply phone
            say "{{ email }} {{ phone }}"
        """
    )
    bot = Bot(program)
    assert bot.says("contact").messages == [
        {"text": "Email?", "quick_replies": [{"content_type": "user_email"}]}
    ]
    # Messenger sends the address as both the payload and the text of the quick reply.
    turn = bot.quick("ada@example.com", "ada@example.com")
    assert turn.messages == [
        {"text": "Phone?", "quick_replies": [{"content_type": "user_phone_number"}]}
    ]
    assert texts(bot.quick("+15551234567", "+15551234567")) == ["ada@example.com +15551234567"]


RETRIES = """
flow q
  when user says "go"
  step s
    ask "Age?" as age
      expect a number
      if invalid say "A number please." or "Digits please."
      after 2 tries goto give_up
    say "Age {{ age }}"
    end
  step give_up
    say "Never mind."
"""


def test_reask_text_then_retry_cap_then_fail_step() -> None:
    bot = Bot(compile_flows(RETRIES))
    bot.says("go")
    first = bot.says_texts("old")
    assert first[0] in ("A number please.", "Digits please.")
    assert bot.state.tries == 1
    assert bot.says_texts("older") == ["Never mind."]
    assert bot.state.status == "idle" and bot.state.tries == 0


def test_a_good_answer_resets_the_tries() -> None:
    bot = Bot(compile_flows(RETRIES))
    bot.says("go")
    bot.says("old")
    assert bot.says_texts("33") == ["Age 33"]
    assert bot.state.tries == 0


def test_after_tries_end_ends_the_flow_and_returns_to_the_caller() -> None:
    program = compile_flows(
        """
        flow main
          when user says "main"
          step s
            call q
            say "back in main"
        flow q
          step s
            ask "Number?" as n
              expect a number
              after 1 try end
            say "never"
        """
    )
    bot = Bot(program)
    assert bot.says_texts("main") == ["Number?"]
    assert bot.says_texts("no") == ["back in main"]


STALE = """
flow survey
  when user says "survey"
  step one
    ask "First?" as first
      choice "A"
      choice "B"
    ask "Second?" as second
      choice "C"
      choice "D"
    say "{{ first }}{{ second }}"

flow hello
  when user says "a"
  step s
    say "hello flow"
"""


def test_tapping_an_old_question_s_choice_asks_the_current_question_again() -> None:
    bot = Bot(compile_flows(STALE))
    bot.says("survey")
    bot.quick("ANSWER:survey:one.0:0", "A")
    turn = bot.quick("ANSWER:survey:one.0:1", "B")  # a quick reply of the first question
    assert texts(turn) == ["Second?"]
    assert bot.state.variables == {"first": "A"}  # never silently re-assigned
    assert bot.state.tries == 0  # and no try counted
    assert texts(bot.quick("ANSWER:survey:one.1:1", "D")) == ["AD"]


def test_an_answer_payload_whose_title_does_not_fit_is_stale() -> None:
    bot = Bot(compile_flows(STALE))
    bot.says("survey")
    assert texts(bot.quick("ANSWER:survey:one.0:0", "Something else")) == ["First?"]
    assert bot.state.variables == {}


def test_an_old_choice_tapped_when_nothing_waits_is_read_as_its_title() -> None:
    bot = Bot(compile_flows(STALE))
    assert texts(bot.quick("ANSWER:survey:one.0:0", "A")) == ["hello flow"]


# --------------------------------------------------------------------------- control flow

CONTROL = """
flow branch
  when user says "branch"
  step s
    ask "Score?" as score
      expect a number
    if score > 10
      say "high"
    elif score > 5
      say "medium"
    else if score == 5
      say "five"
    else
      say "low"
    say "done"
"""


@pytest.mark.parametrize(
    ("score", "said"),
    [("11", "high"), ("7", "medium"), ("5", "five"), ("1", "low")],
)
def test_if_elif_else(score: str, said: str) -> None:
    bot = Bot(compile_flows(CONTROL))
    bot.says("branch")
    assert bot.says_texts(score) == [said, "done"]


FLOWING = """
flow walk
  when user says "walk"
  step one
    say "one"
    set count = 1
    goto three
  step two
    say "two"
  step three
    set count = count + 1
    say "three {{ count }}"
  step four
    say "four"
    end
  step five
    say "five"
"""


def test_goto_fall_through_set_and_end() -> None:
    bot = Bot(compile_flows(FLOWING))
    assert bot.says_texts("walk") == ["one", "three 2", "four"]
    assert bot.state.variables == {"count": 2}
    assert bot.state.status == "idle"
    assert bot.last is not None
    assert bot.last.steps == [("walk", "one"), ("walk", "three"), ("walk", "four")]


CALLS = """
flow main
  when user says "main"
  step s
    say "main starts"
    call helper
    say "main again: {{ answer }}"
    end

flow helper
  step s
    ask "Helper question?" as answer
    say "helper done"
"""


def test_call_runs_the_flow_and_returns_after_the_call() -> None:
    bot = Bot(compile_flows(LEAD, CALLS))
    assert bot.says_texts("main") == ["main starts", "Helper question?"]
    assert [(f.flow_id, f.reason) for f in bot.state.stack] == [("main", "call")]
    assert bot.state.flow_id == "helper"
    assert bot.says_texts("42") == ["helper done", "main again: 42"]
    assert bot.state.status == "idle" and bot.state.stack == []


def test_resume_without_an_interrupted_flow_acts_like_end() -> None:
    program = compile_flows(
        """
        flow r
          when user says "r"
          step s
            say "before"
            resume
            say "after"
        """
    )
    bot = Bot(program)
    assert bot.says_texts("r") == ["before"]
    assert bot.state.status == "idle"


# ------------------------------------------------------------------------------ handover

HANDOVER = """
flow agent
  when user says "agent"
  step s
    say "Passing you to a person."
    hand over to page inbox with note "wants {{ user.first_name }}"
    say "never sent"

flow hello
  when user says "hello"
  step s
    say "Hello!"

flow grab
  when user says "grab"
  step s
    take back with note "bot is back"
    say "Back."
"""


def test_hand_over_passes_the_thread_and_the_bot_stays_silent_until_taken_back() -> None:
    bot = Bot(compile_flows(HANDOVER))
    turn = bot.says("agent")
    assert [o.kind for o in turn.outbox] == ["message", "pass_thread"]
    assert turn.outbox[1].body == {"target_app_id": 263902037430900, "metadata": "wants Ada"}
    assert bot.state.handed_over and bot.state.status == "idle"
    for event in (
        Inbound("text", text="hello"),
        Inbound("get_started"),
        Inbound("postback", payload="FLOW:hello"),
    ):
        turn = bot.send(event)
        assert turn.outbox == [] and turn.faults == []
        assert turn.trace[0].kind == "ignored"
    bot.state = take_back(bot.state)
    assert not bot.state.handed_over
    assert bot.says_texts("hello") == ["Hello!"]


def test_take_back_action_sends_take_thread() -> None:
    bot = Bot(compile_flows(HANDOVER))
    turn = bot.says("grab")
    assert [(o.kind, o.body) for o in turn.outbox] == [
        ("take_thread", {"metadata": "bot is back"}),
        ("message", {"text": "Back."}),
    ]


def test_hand_over_to_an_app() -> None:
    program = compile_flows(
        """
        flow a
          when user says "app"
          step s
            hand over to app 12345
        """
    )
    turn = Bot(program).says("app")
    assert [(o.kind, o.body) for o in turn.outbox] == [("pass_thread", {"target_app_id": 12345})]


# ------------------------------------------------------------------ faults and the sandbox

FAULTS = """
page
  error message "Page says sorry."

flow named
  error message "Flow says sorry."
  when user says "named"
  step greet
    say "Before the fault."
    say "Hello {{ nickname }}!"
    say "Never sent."

flow plain
  when user says "plain"
  step s
    say "{{ ''.__class__ }}"

flow big
  when user says "big"
  step s
    say "{{ 'ab' * 100000 }}"

flow setter
  when user says "set"
  step s
    set nickname = "Ace"
    say "{{ nickname }}"
"""


def test_undefined_variable_is_a_fault_naming_file_line_and_sends_the_flow_error_message() -> None:
    bot = Bot(compile_flows(FAULTS))
    turn = bot.says("named")
    assert texts(turn) == ["Before the fault.", "Flow says sorry."]
    (fault,) = turn.faults
    # `nickname` is set by another flow only, so this conversation has no value for it.
    assert (fault.flow_id, fault.step, fault.source) == ("named", "greet", "fixture.flow:9")
    assert "nickname" in fault.reason and "undefined" in fault.reason
    assert "fixture.flow:9" in str(fault)
    assert bot.state.status == "idle" and bot.state.flow_id is None


def test_sandbox_blocks_attribute_tricks_and_the_page_error_message_is_used() -> None:
    bot = Bot(compile_flows(FAULTS))
    turn = bot.says("plain")
    assert texts(turn) == ["Page says sorry."]
    (fault,) = turn.faults
    assert "unsafe" in fault.reason and "__class__" in fault.reason
    assert "class" not in texts(turn)[0]


def test_sandbox_refuses_to_build_huge_strings() -> None:
    turn = Bot(compile_flows(FAULTS)).says("big")
    assert texts(turn) == ["Page says sorry."]
    assert "too" in turn.faults[0].reason or "not allowed" in turn.faults[0].reason


def test_default_error_message_without_flow_or_page_message() -> None:
    program = compile_flows(
        """
        flow f
          when user says "f"
          step s
            say "{{ missing }}"
        flow g
          when user says "g"
          step s
            set missing = 1
        """
    )
    assert Bot(program).says_texts("f") == [DEFAULT_ERROR_MESSAGE]


def test_user_text_is_data_and_never_rendered() -> None:
    bot = Bot(compile_flows(LEAD))
    bot.says("pricing")
    assert bot.says_texts("{{ 7*7 }}") == ["Nice to meet you, {{ 7*7 }}!", LEAD_TEXTS[3]]
    assert bot.says_texts("{% for x in range(3) %}x{% endfor %}@evil.com")[0] == (
        "That doesn't look like an email address. Could you check it?"
    )


def test_message_namespace_holds_the_last_message_as_data() -> None:
    program = compile_flows(
        """
        flow echo
          when nothing else matches
          step s
            say "You said: {{ message.text }} ({{ message.payload }})"
        """
    )
    bot = Bot(program)
    assert bot.says_texts("{{ 7*7 }}") == ["You said: {{ 7*7 }} ()"]


def test_max_actions_stops_a_loop_that_never_waits() -> None:
    # The compiler refuses such a loop, so the IR is edited by hand: step `b` goes back to `a`.
    program = compile_flows(
        """
        flow loop
          error message "Loop stopped."
          when user says "loop"
          step a
            set n = 0
          step b
            set n = n + 1
            end
        """
    )
    flow = program.flows["loop"]
    step_b = flow.steps["b"]
    goto = step_b.actions[1].model_copy(update={"kind": "goto"})
    looping = step_b.model_copy(
        update={"actions": (step_b.actions[0], _goto(goto.id, goto.source, "b"))}
    )
    flow = flow.model_copy(update={"steps": {**flow.steps, "b": looping}})
    program = program.model_copy(update={"flows": {"loop": flow}})
    bot = Bot(program, max_actions=50)
    turn = bot.says("loop")
    assert texts(turn) == ["Loop stopped."]
    (fault,) = turn.faults
    assert "too many actions" in fault.reason
    assert bot.state.status == "idle"


def _goto(aid: str, source: object, step: str) -> object:
    from flowlang import ir

    return ir.GotoAction(id=aid, source=source, step=step)


def test_interruptions_cannot_pile_up_forever() -> None:
    program = compile_flows(
        """
        flow ping
          interrupt when user says "ping"
          step s
            ask "Ping?" as p
        flow pong
          interrupt when user says "pong"
          step s
            ask "Pong?" as q
        """
    )
    bot = Bot(program)
    turn = None
    for index in range(40):
        turn = bot.says("ping" if index % 2 else "pong")
        if turn.faults:
            break
    assert turn is not None and turn.faults
    assert "paused" in turn.faults[0].reason
    assert bot.state.stack == []


# --------------------------------------------------------------------------- buttons

BUTTONS = """
flow shop
  when user says "shop"
  step start
    say "Welcome to the shop"
      button "See plans" goto plans
      button "Talk to sales" starts sales
      button "Pricing" sends "PRICING"
    say "Contact"
      button "Website" opens "https://example.com" tall
      button "Call us" calls "+15551234567"
    ask "Your name?" as name
    say "Thanks {{ name }}"
    end
  step plans
    say "Our plans"

flow sales
  step intro
    say "Sales here"
  step deep
    say "Deep sales step"
"""


def test_button_template_body_is_the_send_api_message_without_ir_fields() -> None:
    bot = Bot(compile_flows(BUTTONS))
    body, contact = bot.says("shop").messages[:2]
    assert contact["attachment"]["payload"]["buttons"] == [
        {
            "type": "web_url",
            "url": "https://example.com",
            "title": "Website",
            "webview_height_ratio": "tall",
        },
        {"type": "phone_number", "title": "Call us", "payload": "+15551234567"},
    ]
    assert body == {
        "attachment": {
            "type": "template",
            "payload": {
                "template_type": "button",
                "text": "Welcome to the shop",
                "buttons": [
                    {"type": "postback", "title": "See plans", "payload": "FLOW:shop:plans"},
                    {"type": "postback", "title": "Talk to sales", "payload": "FLOW:sales"},
                    {"type": "postback", "title": "Pricing", "payload": "PRICING"},
                ],
            },
        }
    }


def test_step_button_jumps_inside_the_same_flow_version() -> None:
    bot = Bot(compile_flows(BUTTONS))
    bot.says("shop")
    assert texts(bot.taps("FLOW:shop:plans", "See plans")) == ["Our plans"]
    assert bot.state.status == "idle"


def test_step_and_flow_buttons_start_flows_when_not_in_them() -> None:
    bot = Bot(compile_flows(BUTTONS))
    assert texts(bot.taps("FLOW:shop:plans")) == ["Our plans"]  # idle: start at that step
    bot.says("shop")
    assert texts(bot.taps("FLOW:sales", "Talk to sales")) == ["Sales here", "Deep sales step"]
    assert texts(bot.taps("FLOW:sales:deep")) == ["Deep sales step"]
    assert texts(bot.taps("FLOW:sales:gone")) == ["Sales here", "Deep sales step"]  # entry
    assert bot.taps("FLOW:nowhere").outbox == []  # unknown flow: an unmatched postback


MEDIA = """
template product_card with name, price
  say "{{ name }} costs {{ price }}"
    button "Buy" sends "BUY"

flow media
  when user says "media"
  step s
    set total = "9.99"
    send image "https://example.com/a.png"
    typing for 2 seconds
    pause 1 second
    typing
    carousel
      card "Product 1"
        subtitle "Amazing"
        image "https://example.com/p1.jpg"
        opens "https://example.com/p1" compact
        button "Buy now" sends "BUY_1"
      card "Product 2"
      quick reply "More" with image "https://example.com/i.png" sends "MORE"
    send product_card with name = "Shoes", price = "{{ total }} USD"
    say "Tagged" or "Tagged too"
      tag HUMAN_AGENT
"""


def test_media_typing_pause_carousel_template_and_tag_shapes() -> None:
    bot = Bot(compile_flows(MEDIA))
    turn = bot.says("media")
    got = [(o.kind, o.body, o.seconds, o.tag) for o in turn.outbox]
    assert got[:5] == [
        (
            "message",
            {
                "attachment": {
                    "type": "image",
                    "payload": {"url": "https://example.com/a.png", "is_reusable": True},
                }
            },
            0.0,
            None,
        ),
        ("sender_action", {"sender_action": "typing_on"}, 0.0, None),
        ("pause", {}, 2.0, None),
        ("pause", {}, 1.0, None),
        ("sender_action", {"sender_action": "typing_on"}, 0.0, None),
    ]
    assert got[5][1] == {
        "attachment": {
            "type": "template",
            "payload": {
                "template_type": "generic",
                "elements": [
                    {
                        "title": "Product 1",
                        "subtitle": "Amazing",
                        "image_url": "https://example.com/p1.jpg",
                        "default_action": {
                            "type": "web_url",
                            "url": "https://example.com/p1",
                            "webview_height_ratio": "compact",
                        },
                        "buttons": [{"type": "postback", "title": "Buy now", "payload": "BUY_1"}],
                    },
                    {"title": "Product 2"},
                ],
            },
        },
        "quick_replies": [
            {
                "content_type": "text",
                "title": "More",
                "payload": "MORE",
                "image_url": "https://example.com/i.png",
            }
        ],
    }
    template_body = got[6][1]["attachment"]["payload"]
    assert template_body["text"] == "Shoes costs 9.99 USD"
    assert template_body["buttons"] == [{"type": "postback", "title": "Buy", "payload": "BUY"}]
    assert turn.outbox[6].source == "fixture.flow:2"  # the template's own line
    assert got[7][1]["text"] in ("Tagged", "Tagged too") and got[7][3] == "HUMAN_AGENT"


def test_a_template_sees_only_its_parameters() -> None:
    # The compiler refuses a template that reads a flow variable (FL108), so the IR is edited
    # here to show what the runtime does if such a program reaches it anyway.
    program = compile_flows(
        """
        template card with name
          say "{{ name }}"

        flow t
          when user says "t"
          step s
            set secret = "hidden"
            send card with name = "visible {{ secret }}"
        """
    )
    template = program.templates["card"]
    leaky = template.actions[0].model_copy(update={"texts": ("{{ name }} and {{ secret }}",)})
    program = program.model_copy(
        update={"templates": {"card": template.model_copy(update={"actions": (leaky,)})}}
    )
    turn = Bot(program).says("t")
    assert texts(turn) == [DEFAULT_ERROR_MESSAGE]
    assert turn.faults[0].source == "fixture.flow:2"
    assert "secret" in turn.faults[0].reason


def test_text_variations_are_picked_by_the_injected_random_source() -> None:
    program = compile_flows(
        """
        flow v
          when user says "v"
          step s
            say "one" or "two" or "three"
        """
    )
    seen = {Bot(program, seed=seed).says_texts("v")[0] for seed in range(30)}
    assert seen == {"one", "two", "three"}
    assert Bot(program, seed=4).says_texts("v") == Bot(program, seed=4).says_texts("v")


def test_profile_fields_are_always_readable() -> None:
    program = compile_flows(
        """
        flow p
          when user says "p"
          step s
            say "[{{ user.first_name }}|{{ user.gender }}|{{ user.id }}|{{ page.id }}]"
        """
    )
    assert Bot(program, profile={"first_name": "Ada", "gender": None}).says_texts("p") == [
        "[Ada||user-1|page-1]"
    ]


def test_static_template_lines_keep_their_own_source_and_are_reused() -> None:
    program = compile_flows(
        """
        template banner
          say "Welcome to our shop"
          send image "https://example.com/banner.png"

        flow t
          when user says "t"
          step s
            send banner
            send banner
        """
    )
    bot = Bot(program)
    for _ in range(2):
        turn = bot.says("t")
        assert texts(turn) == ["Welcome to our shop", "[image]"] * 2
        assert [o.source for o in turn.outbox] == ["fixture.flow:2", "fixture.flow:3"] * 2


def test_message_fields_are_empty_text_when_the_event_has_none() -> None:
    program = compile_flows(
        """
        flow f
          when nothing else matches
          step s
            say "You wrote [{{ message.text }}] payload [{{ message.payload }}]"
            if "hi" in message.text | lower
              say "hello"
        """
    )
    sticker = Inbound("attachment", attachments=({"type": "sticker", "url": "https://x/s.png"},))
    turn = Bot(program).send(sticker)
    assert turn.faults == []
    assert texts(turn) == ["You wrote [] payload []"]
