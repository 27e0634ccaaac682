"""Project files agree with each other: README's commands, CI, version."""

import pathlib
import re

import arrseg

ROOT = pathlib.Path(__file__).resolve().parents[1]


def readme_commands():
    text = (ROOT / "README.md").read_text()
    block = re.search(r"```bash\n(.*?)```", text, re.S).group(1)
    return [line for line in block.splitlines() if line.strip()]


def test_readme_opens_with_two_setup_commands():
    text = (ROOT / "README.md").read_text()
    assert text.index("```bash") < 20  # right under the title
    install_and_demo, install_and_test = readme_commands()
    assert "arrseg demo" in install_and_demo
    assert "[test,reference,cli]" in install_and_test and "pytest" in install_and_test


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert readme_commands()[1] in ci


def test_changelog_has_the_current_version():
    assert f"## [{arrseg.__version__}]" in (ROOT / "CHANGELOG.md").read_text()
