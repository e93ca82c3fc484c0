"""`flowc new`: the example flows it writes compile cleanly and pass their own tests, alone
and together, and files are never replaced without --force."""

from __future__ import annotations

import fnmatch
import itertools
import os
import subprocess
import tomllib
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from flowlang.cli import main
from runtime.newcli import ALL, TEMPLATES, scaffold_text, template_files

ROOT = Path(__file__).resolve().parent.parent
FLOWC = ROOT / ".venv" / "bin" / "flowc"
SCAFFOLDS = ROOT / "runtime" / "scaffolds"


def flowc(*args: str) -> Result:
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def assert_clean(folder: Path) -> None:
    """`flowc check --strict` finds nothing and `flowc test` passes with every step tested."""
    check = flowc("check", "--strict", str(folder))
    assert check.exit_code == 0, check.output
    assert check.stdout.endswith(": no problems\n")
    tested = flowc("test", str(folder), "--min-coverage", "100")
    assert tested.exit_code == 0, tested.output
    assert " failed" not in tested.stdout


@pytest.fixture
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run from an empty folder, so the default --dir (flows) lands there."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_new_all_in_an_empty_folder_checks_and_tests_clean(in_tmp: Path, snapshot) -> None:
    result = flowc("new", "all")
    assert result.exit_code == 0, result.output
    assert result.stdout == snapshot
    written = sorted(p.name for p in (in_tmp / "flows").iterdir())
    assert written == sorted(template_files(ALL))
    for name in written:
        assert (in_tmp / "flows" / name).read_text(encoding="utf-8") == scaffold_text(name)
    assert_clean(in_tmp / "flows")


def test_the_installed_flowc_writes_checks_and_tests_them(tmp_path: Path) -> None:
    """The same through the real `flowc` program, as a person at a terminal runs it."""
    env = {k: v for k, v in os.environ.items() if k != "FLOW_DATABASE_URL"}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(FLOWC), *args], cwd=tmp_path, env=env, capture_output=True, text=True
        )

    new = run("new", "all")
    assert new.returncode == 0, new.stderr
    assert "Created flows/page.flow" in new.stdout
    check = run("check", "--strict", "flows")
    assert check.returncode == 0, check.stdout + check.stderr
    tested = run("test", "flows")
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert tested.stdout.rstrip().endswith("20 tests: 20 passed")


@pytest.mark.parametrize("template", list(TEMPLATES))
def test_each_template_alone_checks_and_tests_clean(tmp_path: Path, template: str) -> None:
    folder = tmp_path / "bot"
    result = flowc("new", template, "--dir", str(folder))
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in folder.iterdir()) == sorted(TEMPLATES[template])
    assert_clean(folder)


@pytest.mark.parametrize(
    "templates", [*itertools.combinations(TEMPLATES, 2), tuple(TEMPLATES)], ids="+".join
)
def test_templates_written_one_after_another_work_together(
    tmp_path: Path, templates: tuple[str, ...]
) -> None:
    for template in templates:
        assert flowc("new", template, "--dir", str(tmp_path)).exit_code == 0
    assert_clean(tmp_path)


def test_a_template_alone_says_which_flows_its_buttons_wait_for(in_tmp: Path, snapshot) -> None:
    result = flowc("new", "welcome")
    assert result.exit_code == 0, result.output
    assert result.stdout == snapshot
    # Once customer_service is there, only lead_generation is still missing.
    assert flowc("new", "customer_service").exit_code == 0
    (in_tmp / "flows" / "welcome.flow").unlink()
    (in_tmp / "flows" / "welcome.transcript").unlink()
    again = flowc("new", "welcome")
    assert "  flowc new lead_generation --dir flows\n" in again.stdout
    assert "flowc new customer_service" not in again.stdout


# ----------------------------------------------------------------------------- overwriting


def test_existing_files_are_not_replaced_without_force(in_tmp: Path) -> None:
    assert flowc("new", "welcome").exit_code == 0
    mine = in_tmp / "flows" / "welcome.flow"
    mine.write_text("# my own welcome flow\n", encoding="utf-8")

    result = flowc("new", "welcome")

    assert result.exit_code == 1
    assert result.stderr == (
        "Error: flows/welcome.flow and flows/welcome.transcript already exist: nothing was "
        "written (add --force to replace them)\n"
    )
    assert result.stdout == ""
    assert mine.read_text(encoding="utf-8") == "# my own welcome flow\n"


def test_one_existing_file_stops_the_whole_template(in_tmp: Path) -> None:
    """`all` into a folder with a page.flow of its own: nothing is written at all."""
    folder = in_tmp / "flows"
    folder.mkdir()
    (folder / "page.flow").write_text("# mine\n", encoding="utf-8")

    result = flowc("new", "all")

    assert result.exit_code == 1
    assert result.stderr == (
        "Error: flows/page.flow already exists: nothing was written (add --force to replace them)\n"
    )
    assert [p.name for p in folder.iterdir()] == ["page.flow"]
    assert (folder / "page.flow").read_text(encoding="utf-8") == "# mine\n"


def test_force_replaces_existing_files(in_tmp: Path) -> None:
    assert flowc("new", "lead_generation").exit_code == 0
    mine = in_tmp / "flows" / "lead_generation.flow"
    mine.write_text("# changed\n", encoding="utf-8")
    (in_tmp / "flows" / "notes.txt").write_text("keep me\n", encoding="utf-8")

    result = flowc("new", "lead_generation", "--force")

    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(
        "Replaced flows/lead_generation.flow\nReplaced flows/lead_generation.transcript\n"
    )
    assert mine.read_text(encoding="utf-8") == scaffold_text("lead_generation.flow")
    assert (in_tmp / "flows" / "notes.txt").read_text(encoding="utf-8") == "keep me\n"
    assert sorted(p.name for p in (in_tmp / "flows").iterdir()) == [
        "lead_generation.flow",
        "lead_generation.transcript",
        "notes.txt",
    ]  # no temporary files left behind


def test_a_file_where_the_folder_should_be_is_a_usage_error(in_tmp: Path) -> None:
    (in_tmp / "flows").write_text("not a folder\n", encoding="utf-8")
    result = flowc("new", "welcome", "--force")
    assert result.exit_code == 2
    assert result.stderr.endswith(
        "Error: Invalid value for '--dir': Directory 'flows' is a file.\n"
    )
    assert (in_tmp / "flows").read_text(encoding="utf-8") == "not a folder\n"


def test_an_unknown_template_is_a_usage_error(in_tmp: Path) -> None:
    result = flowc("new", "shop")
    assert result.exit_code == 2
    assert "'shop' is not one of" in result.stderr
    assert not (in_tmp / "flows").exists()


# ----------------------------------------------------------------------------- packaging


def test_the_scaffolds_are_package_data() -> None:
    """Every file `flowc new` writes is declared in pyproject.toml, so it is installed."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    patterns = config["tool"]["setuptools"]["package-data"]["runtime"]
    names = set(template_files(ALL))
    assert names == {p.name for p in SCAFFOLDS.iterdir()}
    for name in names:
        assert any(fnmatch.fnmatch(f"scaffolds/{name}", p) for p in patterns), name


def test_every_scaffold_explains_itself_in_comments() -> None:
    for name in template_files(ALL):
        lines = scaffold_text(name).splitlines()
        comments = [line for line in lines if line.lstrip().startswith("#")]
        assert lines[0].startswith(f"# {name}:"), name
        assert len(comments) >= 8, name


def test_flowc_lists_the_new_command() -> None:
    result = flowc("--help")
    assert "  new " in result.stdout
    assert "flowc new all" in flowc("new", "--help").stdout


def test_the_examples_in_docs_testing_md_are_what_flowc_prints(in_tmp: Path) -> None:
    docs = (ROOT / "docs" / "testing.md").read_text(encoding="utf-8")
    written = flowc("new", "welcome")
    assert f"```\n{written.stdout}```\n" in docs
    refused = flowc("new", "welcome")
    assert f"```\n{refused.stderr}```\n" in docs
