"""The README's set-up section says what .ci/run does."""

import re
from pathlib import Path

ROOT = Path(__file__).parent.parent


def _apt_packages(text: str) -> set[str]:
    text = text.replace("\\\n", " ")
    lines = [ln for ln in text.splitlines() if "apt-get install" in ln]
    assert lines, "no apt-get install line"
    return {w for ln in lines for w in ln.split("install", 1)[1].split()
            if not w.startswith("-") and not w.startswith(">") and re.fullmatch(r"[a-z0-9][a-z0-9.+-]+", w)}


def test_readme_lists_the_apt_packages_ci_installs():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert _apt_packages(readme) == _apt_packages(ci)


def test_readme_test_command_is_the_one_ci_runs():
    readme = (ROOT / "README.md").read_text()
    command = 'pip install -e ".[testing]" && python -m pytest -q'
    assert command in readme and command in (ROOT / ".ci" / "run").read_text()
