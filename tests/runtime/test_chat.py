"""`flowc chat`: the scriptable JSON form end to end, the interactive form, the session."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from engine_kit import CHAT_FLOWS, LEAD_TEXTS, compile_flows

from runtime.chat import ChatSession, MemoryConversations, Option, send_api_body
from runtime.commands import COMMANDS, chat_command
from runtime.events import Inbound, Outbound
from runtime.program import ProgramView
from runtime.state import ConversationState

ROOT = Path(__file__).resolve().parents[2]
LEAD_INPUT = "I am interested in pricing\nAda\nada@example.com\n"


def _texts(stdout: str) -> list[str]:
    return [json.loads(line)["message"]["text"] for line in stdout.splitlines()]


def test_chat_json_prints_send_api_bodies_in_order() -> None:
    result = CliRunner().invoke(chat_command, [str(CHAT_FLOWS), "--json"], input=LEAD_INPUT)
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["message"].get("text") for line in lines] == LEAD_TEXTS
    assert lines[0] == {
        "recipient": {"id": "chat-user"},
        "messaging_type": "RESPONSE",
        "message": {"text": LEAD_TEXTS[0]},
    }
    assert lines[3]["message"]["quick_replies"] == [{"content_type": "user_email"}]


def test_chat_json_in_a_real_process() -> None:
    env = {**os.environ, "PYTHONIOENCODING": "utf-8"}
    done = subprocess.run(
        [sys.executable, "-m", "runtime.commands", "chat", str(CHAT_FLOWS), "--json"],
        input=LEAD_INPUT.encode(),
        capture_output=True,
        cwd=ROOT,
        env=env,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode()
    assert _texts(done.stdout.decode("utf-8")) == LEAD_TEXTS


def test_flowc_has_the_chat_command_when_the_cli_registers_runtime_commands() -> None:
    flowc = Path(sys.executable).parent / "flowc"
    if not flowc.exists():
        pytest.skip("the flowc script is not installed in this environment")
    done = subprocess.run(
        [str(flowc), "chat", str(CHAT_FLOWS), "--json"],
        input=LEAD_INPUT.encode(),
        capture_output=True,
        cwd=ROOT,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode()
    assert _texts(done.stdout.decode("utf-8")) == LEAD_TEXTS


def test_chat_json_input_forms_and_actions(tmp_path: Path) -> None:
    (tmp_path / "forms.flow").write_text(
        """
flow menu
  when postback "MENU"
  when quick reply "MORE"
  when referral "ad1"
  when get started
  step s
    typing for 1 second
    say "menu {{ message.payload }} {{ message.ref }}"
      tag HUMAN_AGENT
""".lstrip(),
        encoding="utf-8",
    )
    script = "postback:MENU\nquick:MORE\nreferral:ad1\nget_started\n\n"
    result = CliRunner().invoke(
        chat_command, [str(tmp_path), "--json", "--actions", "--psid", "42"], input=script
    )
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert lines[0] == {"recipient": {"id": "42"}, "sender_action": "typing_on"}
    messages = [line for line in lines if "message" in line]
    assert [m["message"]["text"] for m in messages] == [
        "menu MENU ",
        "menu MORE ",
        "menu  ad1",
        "menu  ",
    ]
    assert messages[0]["messaging_type"] == "MESSAGE_TAG" and messages[0]["tag"] == "HUMAN_AGENT"
    assert len(lines) == 8  # a typing indicator before each message; pauses never printed


def test_chat_reports_compile_errors_and_exits_1(tmp_path: Path) -> None:
    (tmp_path / "bad.flow").write_text("flow broken\n  step s\n    goto nowhere\n", "utf-8")
    result = CliRunner().invoke(chat_command, [str(tmp_path), "--json"], input="hi\n")
    assert result.exit_code == 1
    assert "bad.flow:3" in result.stderr
    assert result.stdout == ""


def test_chat_faults_go_to_stderr(tmp_path: Path) -> None:
    (tmp_path / "f.flow").write_text(
        # Dividing by zero passes the compiler and fails only when the text is rendered.
        'flow f\n  when user says "f"\n  step s\n    set zero = 0\n    say "{{ 1 / zero }}"\n',
        "utf-8",
    )
    result = CliRunner().invoke(chat_command, [str(tmp_path), "--json"], input="f\n")
    assert result.exit_code == 0
    assert "f.flow:5" in result.stderr and "division by zero" in result.stderr
    assert _texts(result.stdout) == ["Sorry, something went wrong on our side. Please try again."]


def test_interactive_chat_numbers_choices_and_knows_its_commands(tmp_path: Path) -> None:
    (tmp_path / "w.flow").write_text(
        """
flow welcome
  when get started
  step greet
    say "Hello {{ user.first_name }}!"
      button "Website" opens "https://example.com"
    ask "What do you need?" as need
      choice "Pricing"
      choice "Help" goto help
    say "You picked {{ need }}"
    end
  step help
    say "Helping."
    hand over
""".lstrip(),
        encoding="utf-8",
    )
    script = "\n".join(
        ["get_started", "1", "/state", "3", "anything", "/takeback", "/help", "/reset",
         "/state", "get_started", "2", "/bogus", "/quit", "never read"]
    )  # fmt: skip
    result = CliRunner().invoke(
        chat_command, [str(tmp_path), "--first-name", "Grace", "--fast"], input=script
    )
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "bot: Hello Grace!" in out
    assert "[1] Website  (opens https://example.com)" in out
    assert "[2] (quick reply) Pricing" in out and "[3] (quick reply) Help" in out
    assert "(opens https://example.com in the browser; the bot is not told)" in out
    assert "step:        greet" in out and "status:      waiting" in out
    assert "You picked Help" not in out and "Helping." in out
    assert "bot: You picked Pricing" in out
    assert "postback:PAYLOAD" in out  # the help text
    assert "(new conversation)" in out
    assert "(handed over to a person" in out
    assert "(a person has this conversation" in out
    assert "(the bot answers again)" in out
    assert "unknown command '/bogus'" in out
    assert "never read" not in out


def test_session_uses_a_plugged_in_store_and_numbers_taps() -> None:
    program = compile_flows(
        """
        flow pick
          when user says "pick"
          step s
            ask "Email?" as email
              expect an email address
              quick reply email
            say "ok {{ email }}"
        """
    )
    store = MemoryConversations()
    session = ChatSession(ProgramView(program), store=store, email="me@example.com", psid="p1")
    session.send(Inbound("text", text="pick"))
    assert session.options == [Option("user_email", "your email")]
    event = session.parse("1")
    assert event == Inbound("quick_reply", text="me@example.com", payload="me@example.com")
    assert isinstance(event, Inbound)
    turn = session.send(event)
    assert turn.messages == [{"text": "ok me@example.com"}]
    saved = store.load("chat-page", "p1")
    assert isinstance(saved, ConversationState) and saved.variables == {"email": "me@example.com"}
    assert session.parse("9") == Inbound("text", text="9")  # no such option: plain text
    assert session.parse("text:1") == Inbound("text", text="1")
    assert session.parse("   ") is None
    assert session.parse("location:1.5,2") == Inbound(
        "location",
        attachments=({"type": "location", "payload": {"coordinates": {"lat": 1.5, "long": 2.0}}},),
    )


def test_send_api_body_shapes() -> None:
    message = Outbound("message", {"text": "hi"}, tag="HUMAN_AGENT")
    assert send_api_body("u", message) == {
        "recipient": {"id": "u"},
        "messaging_type": "MESSAGE_TAG",
        "tag": "HUMAN_AGENT",
        "message": {"text": "hi"},
    }
    handover = Outbound("pass_thread", {"target_app_id": 1, "metadata": "m"})
    assert send_api_body("u", handover) == {
        "recipient": {"id": "u"},
        "target_app_id": 1,
        "metadata": "m",
    }
    assert send_api_body("u", Outbound("pause", seconds=1)) is None


def test_commands_list_starts_with_chat() -> None:
    assert COMMANDS[0] is chat_command
