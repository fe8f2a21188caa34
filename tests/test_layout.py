"""The source tree's shape, and the README's layout section generated from it.

The section lists each package of ``src/zotune/`` with the summary line of its
``__init__.py`` and each top-level module with its own, so a newcomer can tell from it where a
new metric, scheme, model source or optimizer goes. It is not edited by hand:

    python tests/test_layout.py    # rewrites the section of README.md from the tree

and the test below fails when the tree and the section disagree.
"""

from __future__ import annotations

import ast
import os
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "zotune"
README = ROOT / "README.md"
BEGIN = "<!-- layout: generated from the tree by `python tests/test_layout.py`; do not edit -->"
END = "<!-- layout: end -->"
# Beyond a handful of entry points (the package, the CLI, the config), code lives in packages.
MAX_TOP_LEVEL_MODULES = 10
MAX_SUMMARY = 92
# The folders beside src/ that the section also names; they hold no docstrings to read.
OTHER_FOLDERS = (
    ("tests/", "pytest files: tiny random models from configs, no network."),
    ("benchmarks/", "Stand-alone measurement scripts."),
    ("docs/results/", "Published results, each page with the command that made it."),
)
# reST markup of docstrings, as Markdown shows it.
MARKUP = ((":mod:`", "`"), (":func:`", "`"), (":class:`", "`"), (":data:`", "`"), ("``", "`"))


def packages() -> list[Path]:
    """The top-level packages of zotune: the folders with an ``__init__.py``."""
    return sorted(p for p in PACKAGE.iterdir() if (p / "__init__.py").is_file())


def top_level_modules() -> list[Path]:
    return sorted(PACKAGE.glob("*.py"))


def docstring(path: Path) -> str | None:
    """A source file's docstring, read without importing it."""
    return ast.get_docstring(ast.parse(path.read_text(encoding="utf-8")))


def summary(path: Path) -> str:
    """The first line of ``path``'s docstring, which must say alone what the file holds: one
    line, followed by nothing or by a blank line before the rest."""
    text = docstring(path)
    if not text:
        raise ValueError(f"{path.relative_to(ROOT)} has no docstring")
    lines = text.splitlines()
    if len(lines) > 1 and lines[1].strip():
        raise ValueError(f"{path.relative_to(ROOT)}: the docstring's summary runs past one line")
    return lines[0].strip()


def entries() -> list[tuple[str, str]]:
    """(name as the section shows it, summary line): packages, then top-level modules."""
    return ([(p.name + "/", summary(p / "__init__.py")) for p in packages()]
            + [(m.name, summary(m)) for m in top_level_modules()])


def markdown(text: str) -> str:
    for rst, md in MARKUP:
        text = text.replace(rst, md)
    return text


def section() -> str:
    """The README's layout section: a list of the tree, one entry a line."""
    lines = ["- `src/zotune/`"]
    lines += [f"  - `{name}` — {markdown(text)}" for name, text in entries()]
    lines += [f"- `{name}` — {text}" for name, text in OTHER_FOLDERS]
    return "\n".join(lines)


def readme_section(readme: str) -> str:
    """The text between the section's markers in ``readme``."""
    if readme.count(BEGIN) != 1 or readme.count(END) != 1:
        raise ValueError("README.md should hold the layout markers once each")
    return readme.split(BEGIN, 1)[1].split(END, 1)[0].strip("\n")


def with_section(readme: str, body: str) -> str:
    before, rest = readme.split(BEGIN, 1)
    after = rest.split(END, 1)[1]
    return f"{before}{BEGIN}\n{body}\n{END}{after}"


def test_few_top_level_modules():
    names = [m.name for m in top_level_modules()]
    assert len(names) <= MAX_TOP_LEVEL_MODULES, (
        f"src/zotune/ holds {len(names)} modules ({', '.join(names)}): move code into a package"
    )


@pytest.mark.parametrize("path", [p / "__init__.py" for p in packages()] + top_level_modules(),
                         ids=lambda p: str(p.relative_to(PACKAGE)))
def test_each_file_says_in_one_line_what_it_holds(path):
    line = summary(path)
    assert len(line) <= MAX_SUMMARY, f"{len(line)} characters: {line}"
    assert line.endswith("."), line


@pytest.mark.parametrize("package", packages(), ids=lambda p: p.name)
def test_a_package_docstring_names_only_modules_it_holds(package):
    """A module moved or split away takes its mention in the package's docstring with it."""
    text = docstring(package / "__init__.py") or ""
    for name in re.findall(r":mod:`\.(\w+)", text):
        assert (package / f"{name}.py").is_file() or (package / name / "__init__.py").is_file(), (
            f"{package.name}/__init__.py names :mod:`.{name}`, which it does not hold")


def test_readme_layout_matches_the_tree():
    shown = readme_section(README.read_text(encoding="utf-8"))
    assert shown == section(), "README.md's layout section is stale: python tests/test_layout.py"


def test_section_names_every_package_and_module():
    """The generator itself: every package and top-level module appears, each with its line."""
    text = section()
    for name, line in entries():
        assert f"  - `{name}` — {markdown(line)}" in text.splitlines()


def test_summary_rejects_a_two_line_summary(tmp_path, monkeypatch):
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    cases = {
        '"""Holds one thing."""\n': "Holds one thing.",
        '"""Holds one thing.\n\nMore about it.\n"""\n': "Holds one thing.",
        '"""Holds one thing\nthat runs on."""\n': ValueError,
        'x = 1\n': ValueError,
    }
    for source, expected in cases.items():
        path = tmp_path / "m.py"
        path.write_text(source, encoding="utf-8")
        if expected is ValueError:
            with pytest.raises(ValueError):
                summary(path)
        else:
            assert summary(path) == expected


if __name__ == "__main__":
    text = README.read_text(encoding="utf-8")
    staged = README.with_suffix(".md.tmp")
    staged.write_text(with_section(text, section()), encoding="utf-8")
    os.replace(staged, README)
    print(f"{README.relative_to(ROOT)}: layout section rewritten")


READERS = ["compare", "findings", "html_report", "index", "intervals", "plots", "recipes",
           "report", "section", "selection", "step_profile", "store", "suite",
           "time_to_accuracy"]


def test_the_modules_that_read_results_load_without_torch():
    """`zotune report`, the findings and the index run where no model does (bench/__init__):
    importing them must not load torch."""
    import subprocess
    import sys

    code = ("import importlib, sys\n"
            f"for name in {READERS!r}: importlib.import_module('zotune.bench.' + name)\n"
            "print(sorted(m for m in sys.modules if m == 'torch'))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"
