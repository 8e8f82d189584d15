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


def test_python_examples_run(tmp_path, monkeypatch, capsys):
    """Every ```python block, in order, in one namespace; the values in their comments are checked."""
    examples = re.findall(r"```python\n(.*?)```", README, re.S)
    assert len(examples) == 3
    (tmp_path / "fixtures").symlink_to(FIXTURES)
    monkeypatch.chdir(tmp_path)
    namespace = {}
    for example in examples:
        exec(compile(example, "README.md", "exec"), namespace)
    assert (tmp_path / "dress_detector_fcn.onnx").exists()
    assert "Conv 4x2 kernel" in capsys.readouterr().out
    assert repr(namespace["box"]) == "Box(start=(384, 960), stop=(512, 1024))"
    assert namespace["geometry"].grid((512, 1024)) == (13, 31)
    assert namespace["geometry"].grid((500, 1000)) == (12, 30)  # the README's example of another size
    best = namespace["best"]
    assert (best.box, round(best.score, 2), best.klass, best.scale, best.cell) == ((336.0, 32.0, 368.0, 64.0), 0.93,
                                                                                     0, 1.0, (8, 84))
    assert (tmp_path / "disks.csv").read_text().count("\n") == 7
    assert [o.name for o in namespace["in_graph"].graph.output][-4:] == ["boxes", "scores", "classes", "batch_index"]
    columns = namespace["columns"]
    assert list(columns["path"]) == ["fixtures/disks.png"] * len(namespace["found"].records) and \
        sorted(columns["score"].tolist(), reverse=True) == [r.score for r in namespace["found"].records]


def test_the_sample_output_is_what_the_first_command_prints(tmp_path, monkeypatch):
    """The README's sample is the first command's output, line for line (error figures aside: they are float
    rounding, which differs between CPUs)."""
    from test_cli import cli

    (tmp_path / "fixtures").symlink_to(FIXTURES)
    monkeypatch.chdir(tmp_path)
    code, stdout, _ = cli("convert", "fixtures/dress_detector.onnx", "-o", "dress_detector_fcn.onnx")
    sample = README[README.index("model: fixtures/dress_detector.onnx"):]
    sample = sample[:sample.index("```")]
    figures = r"max abs error \S+, relative \S+"
    assert code == 0 and re.sub(figures, "", stdout) == re.sub(figures, "", sample)


def test_readme_exit_codes_match_the_errors():
    from fc2conv_onnx import InputError, NothingToConvertError, ResourceError, ValidationError
    from fc2conv_onnx.errors import UsageError
    for error, words in ((UsageError, "usage error"), (InputError, "bad input"),
                         (NothingToConvertError, "nothing to convert"), (ValidationError, "validation failed"),
                         (ResourceError, "out of resources")):
        assert re.search(rf"\| {error.exit_code} \| {words}", README), error
