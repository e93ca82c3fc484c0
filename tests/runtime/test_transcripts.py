"""Transcript tests: the parser, the runner (pass, fail, diff, coverage) and `flowc test`."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from flowlang.render import render
from runtime import testcli
from runtime.testcli import render_text
from runtime.testing import (
    DiffLine,
    TestReport,
    run_tests,
)
from runtime.transcript import (
    Check,
    ExpectCard,
    ExpectMessage,
    ExpectNothing,
    ExpectReply,
    ExpectStatus,
    UserInput,
    parse_transcript,
)

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures" / "transcripts"
SHOP = FIXTURES / "shop"
FLOWS = ROOT / "flows"


def _shop(tmp_path: Path, transcript: str) -> Path:
    """A folder with the shop flows and one transcript written by the test."""
    folder = tmp_path / "shop"
    folder.mkdir(parents=True)
    shutil.copy(SHOP / "shop.flow", folder / "shop.flow")
    (folder / "t.transcript").write_text(transcript, encoding="utf-8")
    return folder


def _run(tmp_path: Path, transcript: str) -> TestReport:
    return run_tests([_shop(tmp_path, transcript)])


def _only_failure(report: TestReport):  # type: ignore[no-untyped-def]
    assert not report.compile_errors and not report.transcript_errors
    assert len(report.results) == 1
    failure = report.results[0].failure
    assert failure is not None, "the test was expected to fail"
    return failure


START = """test "t"
  user says "shop"
  bot says "Hi Alex! Welcome to the shop."
  bot says "How many shirts?"
"""

# ----------------------------------------------------------------------------- the parser


def test_parser_reads_every_kind_of_line() -> None:
    text = (SHOP / "shop.transcript").read_text(encoding="utf-8")
    transcript = parse_transcript(text, "shop.transcript")
    assert transcript.errors == ()
    names = [t.name for t in transcript.tests]
    assert names == [
        "buying a blue shirt",
        "tapping a card button and a quick reply by payload",
        "other inputs",
    ]
    first, second, third = transcript.tests
    # The file's profile is shared; a test's own profile overrides field by field.
    assert first.profile == {"first_name": "Ada", "last_name": "Lovelace"}
    assert second.profile == {
        "first_name": "Grace",
        "last_name": "Lovelace",
        "locale": "en_GB",
        "timezone": -5,
    }
    assert first.items[0] == UserInput(8, "get_started")
    assert ExpectMessage(9, "text", texts=("Hi Ada! Welcome to the shop.",)) in first.items
    assert Check(15, "count", "is", 3) in first.items
    assert Check(25, "wrap", "is", True) in first.items
    carousel = next(i for i in first.items if isinstance(i, ExpectMessage) and i.cards)
    assert carousel.cards == (
        ExpectCard(19, "Red shirt", "Cotton", ("Buy red",)),
        ExpectCard(22, "Blue shirt", None, ("Buy blue",)),
    )
    assert carousel.quick_replies == (ExpectReply(24, "text", "Later"),)
    say = next(i for i in first.items if isinstance(i, ExpectMessage) and i.buttons)
    assert (say.line, say.buttons, say.quick_replies) == (27, ("Pay", "Help"), None)
    assert ExpectMessage(32, "media", media_type="image", url=SHOP_RECEIPT) in first.items
    assert ExpectMessage(33, "hand_over", app_id="12345", note="paid") in first.items
    assert ExpectNothing(36) in first.items
    assert UserInput(37, "hands_back") in first.items
    assert ExpectMessage(39, "take_back", note="back again") in first.items
    assert ExpectStatus(30, "ended") in first.items
    assert ExpectMessage(48, "text", pattern="Hi Grace! .*") in second.items
    assert UserInput(56, "quick_reply", text="LATER", payload="LATER") in second.items
    assert third.items[:2] == (
        UserInput(60, "referral", ref="promo"),
        ExpectMessage(61, "text", texts=("Red it is.",)),
    )
    assert UserInput(64, "attachment", media_type="image", url=CAT) in third.items
    assert UserInput(66, "location", latitude=52.52, longitude=13.40) in third.items
    assert Check(68, "count", "not_set") in third.items


SHOP_RECEIPT = "https://example.com/receipt.png"
CAT = "https://example.com/cat.png"


def test_parser_reads_alternatives_menus_and_quoted_escapes() -> None:
    transcript = parse_transcript(
        'test "x"\n'
        '  user taps menu item "Start over"\n'
        '  bot says "A \\"quoted\\" word" or "B"   # a comment\n'
        "    quick reply email\n"
        "    quick reply phone\n"
        '  user taps ice breaker "What do you sell?"\n'
        "  bot hands over\n"
        "  bot waits for an answer\n"
        '  check topic is not "Billing"\n'
        '  check topic matches "Bill.*"\n'
        "  check topic is set\n"
        "  check n is 2.5\n",
        "x.transcript",
    )
    assert transcript.errors == ()
    assert transcript.tests[0].items == (
        UserInput(2, "menu", text="Start over"),
        ExpectMessage(
            3,
            "text",
            texts=('A "quoted" word', "B"),
            quick_replies=(ExpectReply(4, "user_email"), ExpectReply(5, "user_phone_number")),
        ),
        UserInput(6, "ice_breaker", text="What do you sell?"),
        ExpectMessage(7, "hand_over"),
        ExpectStatus(8, "waiting"),
        Check(9, "topic", "is_not", "Billing"),
        Check(10, "topic", "matches", "Bill.*"),
        Check(11, "topic", "set"),
        Check(12, "n", "is", 2.5),
    )


_EXPECT = re.compile(r'#\s*expect:\s*"((?:[^"\\]|\\.)*)"\s*$')
_EXPECT_BELOW = re.compile(r'^\s*#\s*expect below:\s*"((?:[^"\\]|\\.)*)"\s*$')


def _chunks() -> list[tuple[int, str]]:
    """(first line number, text) of each chunk of mistakes.transcript."""
    lines = (FIXTURES / "mistakes.transcript").read_text(encoding="utf-8").split("\n")
    chunks: list[tuple[int, str]] = []
    start = 0
    for number, line in enumerate([*lines, "---"]):
        if line.strip() == "---":
            chunks.append((start + 1, "\n".join(lines[start:number])))
            start = number + 1
    return chunks


def _expectations(text: str) -> dict[int, str]:
    expected: dict[int, str] = {}
    lines = text.split("\n")
    for number, line in enumerate(lines, start=1):
        below = _EXPECT_BELOW.match(line)
        if below:
            expected[number + 1] = below.group(1).replace('\\"', '"')
        elif match := _EXPECT.search(line):
            expected[number] = match.group(1).replace('\\"', '"')
    return expected


@pytest.mark.parametrize("first_line,text", _chunks(), ids=lambda v: str(v)[:30])
def test_each_mistake_gives_one_clear_error_on_its_line(first_line: int, text: str) -> None:
    transcript = parse_transcript(text, "mistakes.transcript")
    expected = _expectations(text)
    assert expected, f"the chunk at line {first_line} has no expectation"
    got = {e.line: e.message for e in transcript.errors}
    assert len(got) == len(transcript.errors), "two errors on one line"
    assert sorted(got) == sorted(expected), (
        f"chunk at line {first_line}: errors on lines {sorted(got)}, expected {sorted(expected)}"
        f": {transcript.errors}"
    )
    for line, pattern in expected.items():
        assert re.search(pattern, got[line]), f"line {line}: {got[line]!r} !~ {pattern!r}"
    assert all(e.column >= 1 and e.length >= 1 for e in transcript.errors)


def test_errors_have_columns_and_did_you_mean() -> None:
    transcript = parse_transcript('test "x"\n  user says "hi"\n  bot sais "Hello"\n', "a.t")
    (error,) = transcript.errors
    assert (error.line, error.column, error.length) == (3, 7, 4)
    assert error.help == "did you mean `says`?"


def test_transcript_errors_render_like_compiler_diagnostics(tmp_path: Path) -> None:
    report = _run(tmp_path, 'test "x"\n  usr says "hi"\n')
    assert report.results == [] and not report.ok
    text = render(report.transcript_errors, report.transcript_sources, "rich")
    assert text == (
        "error[transcript]: expected `user`, `bot`, `check` or `flow ends`, but found `usr`\n"
        f" --> {tmp_path / 'shop' / 't.transcript'}:2:3\n"
        "  |\n"
        '2 |   usr says "hi"\n'
        "  |   ^^^\n"
        "  |\n"
        "  = help: did you mean `user`?"
    )


def test_an_unreadable_transcript_is_an_error_not_a_crash(tmp_path: Path) -> None:
    folder = _shop(tmp_path, "")
    (folder / "t.transcript").write_bytes(b'test "x"\n  user says "\xff"\n')
    report = run_tests([folder])
    (error,) = report.transcript_errors
    assert "not UTF-8" in error.message and not report.ok


# ----------------------------------------------------------------------------- the runner


def test_the_shop_fixture_passes_with_full_coverage() -> None:
    report = run_tests([SHOP])
    assert [r.failure for r in report.results] == [None, None, None]
    assert {c.flow: (c.visited, c.steps) for c in report.coverage} == {
        "shop": (3, 3),
        "manager": (1, 1),
        "red": (1, 1),
        "later": (1, 1),
        "fallback": (1, 1),
    }
    assert report.ok


def test_a_wrong_text_fails_with_a_diff_that_names_the_line(tmp_path: Path) -> None:
    report = _run(
        tmp_path,
        'test "t"\n  user says "shop"\n  bot says "Hello Alex!"\n  bot says "How many shirts?"\n',
    )
    failure = _only_failure(report)
    assert failure.line == 3
    assert failure.message == (
        'the bot\'s answer to line 2 (user says "shop") is not what the test expects'
    )
    assert failure.diff == (
        DiffLine("-", 'bot says "Hello Alex!"', 3),
        DiffLine("+", 'bot says "Hi Alex! Welcome to the shop."'),
        DiffLine(" ", 'bot says "How many shirts?"', 4),
    )


def test_a_missing_message_fails(tmp_path: Path) -> None:
    report = _run(tmp_path, START + '  bot says "And one more thing"\n')
    failure = _only_failure(report)
    assert failure.line == 5
    assert "has fewer messages than the test expects" in failure.message
    assert failure.diff[-1] == DiffLine("-", 'bot says "And one more thing"', 5)


def test_an_extra_message_fails(tmp_path: Path) -> None:
    report = _run(tmp_path, 'test "t"\n  user says "shop"\n  bot says "How many shirts?"\n')
    failure = _only_failure(report)
    assert failure.line == 2
    assert "has more messages than the test expects" in failure.message
    assert failure.diff == (
        DiffLine("+", 'bot says "Hi Alex! Welcome to the shop."'),
        DiffLine(" ", 'bot says "How many shirts?"', 3),
    )


def test_bot_says_nothing_fails_when_the_bot_speaks(tmp_path: Path) -> None:
    report = _run(tmp_path, 'test "t"\n  user says "manager"\n  bot says nothing\n')
    failure = _only_failure(report)
    assert [d.sign for d in failure.diff] == ["+", "+"]
    assert failure.diff[0].text == 'bot takes back with note "back again"'


def test_written_details_must_match_and_omitted_ones_are_not_checked(tmp_path: Path) -> None:
    base = START + '  user says "1"\n  bot says "Gift wrap?"\n  user says "no"\n'
    ok = _run(tmp_path / "a", base + "  bot sends carousel\n")
    assert ok.results[0].passed
    report = _run(
        tmp_path / "b",
        base + '  bot sends carousel\n    card "Red shirt"\n    card "Green shirt"\n',
    )
    failure = _only_failure(report)
    assert failure.diff[0] == DiffLine("-", "bot sends carousel", 8)
    assert DiffLine("+", '    subtitle "Cotton"') in failure.diff
    wrong_reply = _run(tmp_path / "c", base + '  bot sends carousel\n    quick reply "Not now"\n')
    assert _only_failure(wrong_reply).line == 8


def test_exact_or_and_matching_texts(tmp_path: Path) -> None:
    variants = {
        '  bot says "Hi!" or "Hi Alex! Welcome to the shop."\n': True,
        '  bot says matching "Hi \\w+! Welcome .*"\n': True,
        '  bot says matching "Welcome"\n': False,  # the pattern must match the whole text
        '  bot says "hi alex! welcome to the shop."\n': False,  # exact means exact
    }
    for index, (line, passes) in enumerate(variants.items()):
        text = 'test "t"\n  user says "shop"\n' + line + '  bot says "How many shirts?"\n'
        report = _run(tmp_path / str(index), text)
        assert report.results[0].passed is passes, line


def test_checks_on_variables(tmp_path: Path) -> None:
    base = START + '  user says "3"\n  bot says "Gift wrap?"\n'
    cases = {
        "  check count is 3\n  check total is 30\n  check wrap is not set\n": None,
        '  check count is "3"\n': 'check count is "3", but count is 3, which is a number',
        "  check count is 4\n": "check count is 4, but count is 3",
        "  check wrap is set\n": "check wrap is set, but wrap is not set",
        '  check count matches "[0-9]+"\n': None,
        "  check count is not 3\n": "check count is not 3, but count is 3",
    }
    for index, (lines, message) in enumerate(cases.items()):
        report = _run(tmp_path / str(index), base + lines)
        failure = report.results[0].failure
        assert (failure.message if failure else None) == message, lines
        if failure:
            assert failure.line == 7


def test_flow_ends_and_waits(tmp_path: Path) -> None:
    passing = _run(tmp_path / "a", START + "  bot waits for an answer\n")
    assert passing.results[0].passed
    report = _run(tmp_path / "b", START + "  flow ends\n")
    failure = _only_failure(report)
    assert failure.line == 5
    assert failure.message == (
        "the flow has not ended: the bot waits for an answer in flow `shop`, step `start`"
    )


def test_tapping_something_not_offered_says_what_is_offered(tmp_path: Path) -> None:
    text = (
        START + '  user says "1"\n  bot says "Gift wrap?"\n  user says "no"\n  bot sends carousel\n'
        '  user taps "Buy green"\n'
    )
    failure = _only_failure(_run(tmp_path, text))
    assert failure.line == 9
    assert failure.message == (
        'there is no quick reply or button "Buy green" to tap; the bot\'s last messages '
        "offer: [Later] [Buy blue] [Buy red]"
    )


def test_tapping_a_web_button_sends_nothing(tmp_path: Path) -> None:
    text = (
        START + '  user says "1"\n  bot says "Gift wrap?"\n  user says "no"\n'
        '  bot sends carousel\n  user taps "Buy blue"\n  bot says "That is 10 euros."\n'
        '  user taps "Help"\n'
    )
    failure = _only_failure(_run(tmp_path, text))
    assert (failure.line, failure.message) == (
        11,
        'the button "Help" opens a web page: tapping it sends nothing to the bot',
    )


def test_a_runtime_fault_fails_the_test(tmp_path: Path) -> None:
    folder = tmp_path / "boom"
    folder.mkdir()
    (folder / "boom.flow").write_text(
        'flow boom\n  title "Boom"\n  when user says "boom"\n\n  step start\n'
        '    set n = 0\n    set x = 10 / n\n    say "never"\n',
        encoding="utf-8",
    )
    (folder / "boom.transcript").write_text(
        'test "t"\n  user says "boom"\n  bot says "never"\n', encoding="utf-8"
    )
    failure = _only_failure(run_tests([folder]))
    assert failure.line == 2
    assert failure.message.startswith("the flow ran into a problem: ")
    assert f"{folder / 'boom.flow'}:7" in failure.message


def test_a_test_stops_at_its_first_failure_and_others_still_run(tmp_path: Path) -> None:
    text = START.replace('"t"', '"first"') + '  user says "1"\n  bot says "Nope"\n'
    text += "\n" + START.replace('"t"', '"second"')
    report = _run(tmp_path, text)
    assert [r.passed for r in report.results] == [False, True]
    assert report.results[0].failure is not None and report.results[0].failure.line == 6


# ----------------------------------------------------------------------------- coverage


def test_coverage_counts_steps_and_lists_the_uncovered_ones_with_lines(tmp_path: Path) -> None:
    report = _run(tmp_path, START)
    coverage = {c.flow: c for c in report.coverage}
    shop = coverage["shop"]
    assert (shop.steps, shop.visited) == (3, 1)
    assert [(u.step, u.line) for u in shop.uncovered] == [("checkout", 25), ("pay", 31)]
    assert shop.file == str(tmp_path / "shop" / "shop.flow") and shop.line == 3
    assert round(shop.percent, 1) == 33.3
    assert [(u.step, u.line) for u in coverage["red"].uncovered] == [("thanks", 51)]
    # Coverage is reported, but only fails the run when asked for.
    assert report.ok
    strict = run_tests([tmp_path / "shop"], min_coverage=100)
    assert not strict.ok and {c.flow for c in strict.low_coverage} == {
        "shop",
        "red",
        "later",
        "fallback",
        "manager",
    }


def test_text_report(tmp_path: Path) -> None:
    report = _run(tmp_path, START + '  user says "1"\n  bot says "Gift wrapping?"\n')
    text = render_text(report)
    file = tmp_path / "shop" / "t.transcript"
    assert f"  FAIL  t  ({file}:1)\n" in text
    assert '        line 6: the bot\'s answer to line 5 (user says "1")' in text
    assert '           line 6 - bot says "Gift wrapping?"\n' in text
    assert '                  + bot says "Gift wrap?"\n' in text
    assert "    not visited: step checkout (line 25)" in text
    assert text.endswith("1 test: 0 passed, 1 failed")


# ----------------------------------------------------------------------------- flowc test


def _cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(testcli.test_command, [str(a) for a in args])
    return result.exit_code, result.output


def test_cli_exit_0_when_everything_passes() -> None:
    code, out = _cli(SHOP)
    assert code == 0, out
    assert "  PASS  buying a blue shirt" in out
    assert out.rstrip().endswith("3 tests: 3 passed")


def test_cli_exit_1_on_a_failing_test(tmp_path: Path) -> None:
    code, out = _cli(_shop(tmp_path, START + "  flow ends\n"))
    assert code == 1
    assert "FAIL  t" in out


def test_cli_exit_1_on_a_transcript_mistake(tmp_path: Path) -> None:
    code, out = _cli(_shop(tmp_path, 'test "t"\n  user sayz "hi"\n'))
    assert code == 1
    assert "error[transcript]: expected what the user does, but found `sayz`" in out
    assert "1 transcript file with mistakes (not run)" in out


def test_cli_exit_1_on_compile_errors_shown_like_flowc_check(tmp_path: Path) -> None:
    folder = _shop(tmp_path, START)
    (folder / "broken.flow").write_text(
        'flow broken\n  title "B"\n  when user says "x"\n\n  step a\n    goto nowhere\n',
        encoding="utf-8",
    )
    code, out = _cli(folder)
    assert code == 1
    assert "error[FL" in out and f"{folder / 'broken.flow'}:6:" in out
    assert "no test was run" in out


def test_cli_exit_1_below_min_coverage(tmp_path: Path) -> None:
    code, out = _cli(_shop(tmp_path, START), "--min-coverage", "100")
    assert code == 1
    assert "below the minimum" in out and "below 100% step coverage" in out


@pytest.mark.parametrize(
    "args,message",
    [
        (["no/such/folder"], "there is no file or folder named"),
        (["--format", "xml", "flows"], "'xml' is not one of"),
        (["--min-coverage", "150", "flows"], "150"),
        ([], "Missing argument"),
    ],
)
def test_cli_exit_2_on_usage_errors(args: list[str], message: str) -> None:
    code, out = _cli(*args)
    assert code == 2 and message in out


def test_cli_exit_2_without_transcripts_or_flows(tmp_path: Path) -> None:
    (tmp_path / "a.flow").write_text((SHOP / "shop.flow").read_text(), encoding="utf-8")
    code, out = _cli(tmp_path)
    assert code == 2 and "no .transcript files found" in out
    empty = tmp_path / "empty"
    empty.mkdir()
    code, out = _cli(empty)
    assert code == 2 and "no .flow files found" in out


def test_cli_a_single_transcript_brings_its_folders_flows() -> None:
    code, out = _cli(SHOP / "shop.transcript")
    assert code == 0, out


def test_cli_json_format(tmp_path: Path) -> None:
    code, out = _cli(
        _shop(tmp_path, START + '  user says "1"\n  bot says "Nope"\n'), "--format", "json"
    )
    assert code == 1
    data = json.loads(out)
    assert set(data) == {
        "ok",
        "summary",
        "diagnostics",
        "transcript_errors",
        "tests",
        "coverage",
        "min_coverage",
    }
    assert data["ok"] is False
    assert data["summary"] == {
        "tests": 1,
        "passed": 0,
        "failed": 1,
        "flow_files": 1,
        "transcript_files": 1,
    }
    (test,) = data["tests"]
    assert test["status"] == "failed" and test["name"] == "t" and test["line"] == 1
    assert test["failure"]["line"] == 6
    assert test["failure"]["after"] == 'user says "1"'
    assert test["failure"]["diff"] == [
        {"sign": "-", "text": 'bot says "Nope"', "line": 6},
        {"sign": "+", "text": 'bot says "Gift wrap?"', "line": None},
    ]
    shop = next(c for c in data["coverage"] if c["flow"] == "shop")
    assert shop["steps"] == 3 and shop["visited"] == 1 and shop["percent"] == 33.3
    assert shop["uncovered"] == [{"step": "checkout", "line": 25}, {"step": "pay", "line": 31}]


def test_cli_json_reports_transcript_mistakes_with_positions(tmp_path: Path) -> None:
    code, out = _cli(_shop(tmp_path, 'test "t"\n  user sayz "hi"\n'), "--format", "json")
    assert code == 1
    (error,) = json.loads(out)["transcript_errors"]
    assert (error["line"], error["column"], error["code"]) == (2, 8, "transcript")
    assert error["help"] == "did you mean `says`?"


# ----------------------------------------------------------------------------- the examples


def test_every_example_flow_has_a_transcript() -> None:
    flows = {p.stem for p in FLOWS.glob("*.flow")}
    transcripts = {p.stem for p in FLOWS.glob("*.transcript")}
    assert flows and flows <= transcripts


def test_flowc_test_flows_passes_with_full_step_coverage() -> None:
    code, out = _cli(FLOWS, "--min-coverage", "100")
    assert code == 0, out
    report = run_tests([FLOWS])
    assert report.results and all(r.passed for r in report.results)
    assert report.coverage and all(c.visited == c.steps for c in report.coverage)
