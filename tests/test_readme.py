"""The README's Python examples run as written."""

from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"


def python_examples() -> list[str]:
    blocks, inside, lines = [], False, []
    for line in README.read_text(encoding="utf-8").splitlines():
        if line.strip() == "```python":
            inside, lines = True, []
        elif inside and line.strip() == "```":
            inside = False
            blocks.append("\n".join(lines) + "\n")
        elif inside:
            lines.append(line)
    return blocks


def test_the_readme_has_python_examples():
    assert python_examples()


@pytest.mark.parametrize("index", range(len(python_examples())))
def test_readme_example_runs(index, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    exec(compile(python_examples()[index], f"README.md example {index + 1}", "exec"), {"__name__": "__readme__"})
