"""The README stays true: its Python example runs, and CI runs its test command."""
from __future__ import annotations

import re

from conftest import FIXTURES, ROOT

README = (ROOT / "README.md").read_text()


def test_ci_runs_the_readme_test_command():
    commands = [line for line in README.splitlines() if line.startswith("python3 -m venv")]
    assert len(commands) == 2, "the README opens with two commands"
    assert commands[1] in (ROOT / ".ci" / "run").read_text()
    assert "fc2conv-onnx convert fixtures/dress_detector.onnx" in commands[0]


def test_python_example_runs(tmp_path, monkeypatch, capsys):
    (example,) = re.findall(r"```python\n(.*?)```", README, re.S)
    (tmp_path / "fixtures").symlink_to(FIXTURES)
    monkeypatch.chdir(tmp_path)
    exec(compile(example, "README.md", "exec"), {})
    assert (tmp_path / "dress_detector_fcn.onnx").exists()
    assert "Conv 4x2 kernel" in capsys.readouterr().out


def test_readme_exit_codes_match_the_errors():
    from fc2conv_onnx import InputError, NothingToConvertError, ValidationError
    for error, words in ((InputError, "bad input"), (NothingToConvertError, "nothing to convert"),
                         (ValidationError, "validation failed")):
        assert re.search(rf"\| {error.exit_code} \| {words}", README), error
