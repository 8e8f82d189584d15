"""The command line: exit codes, one-line errors, no tracebacks, nothing written on failure."""
from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys

import onnx
import pytest

from fc2conv_onnx.cli import main

from equivalence import assert_equivalent

ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}


def cli(*args):
    """Run the program's `main` in this process: (exit code, standard output, standard error). An exception
    that escapes main (which would be a traceback) fails the test; tests of the process itself (signals,
    closed streams, standard input, start-up) use `cli_process`."""
    out, err = _Captured(), _Captured()
    package = logging.getLogger("fc2conv_onnx")
    kept = package.handlers, package.propagate, package.level
    streams = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = out, err
    try:
        code = main(list(map(str, args)))
    except SystemExit as done:  # argparse: --help, --version and usage errors
        code = done.code if isinstance(done.code, int) else 0 if done.code is None else 2
    finally:
        sys.stdout, sys.stderr = streams
        package.handlers, package.propagate = kept[0], kept[1]
        package.setLevel(kept[2])
    return code, out.text(), err.text()


class _Captured(io.TextIOWrapper):
    """A text stream with a binary `buffer`, as the process's own standard streams are."""

    def __init__(self) -> None:
        super().__init__(io.BytesIO(), encoding="utf-8", errors="replace", write_through=True)

    def text(self) -> str:
        self.flush()
        return self.buffer.getvalue().decode("utf-8", errors="replace")


def cli_process(*args):
    """Run the real program (python -m fc2conv_onnx) in a process of its own."""
    done = subprocess.run([sys.executable, "-m", "fc2conv_onnx", *map(str, args)], capture_output=True,
                          text=True, env=ENV, timeout=120)
    return done.returncode, done.stdout, done.stderr


def test_convert_writes_an_equivalent_model_and_says_what_it_did(fixture_path, tmp_path):
    out = tmp_path / "dress_fcn.onnx"
    code, stdout, stderr = cli("convert", fixture_path("dress_detector"), "-o", out)
    assert (code, stderr) == (0, "")
    assert "Conv 4x2 kernel [4, 32, 4, 2]" in stdout and "windows" in stdout and f"written: {out}" in stdout
    assert_equivalent(onnx.load(str(fixture_path("dress_detector"))), onnx.load(str(out)), sizes=[(1, 3, 160, 96)])
    assert [p.name for p in tmp_path.iterdir()] == ["dress_fcn.onnx"]  # no temporary file left


def test_json_report_parses(fixture_path, tmp_path, capsys):
    assert main(["convert", str(fixture_path("two_heads")), "-o", str(tmp_path / "o.onnx"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert [h["outputs"] for h in report["heads"]] == [["logits", "probabilities"], ["box"]]
    assert report["validated"] and all(c["passed"] for c in report["checks"])


def test_inspect_is_a_dry_run(fixture_path, tmp_path, capsys):
    assert main(["inspect", str(fixture_path("pass_through_chain"))]) == 0
    out = capsys.readouterr().out
    assert "PRelu with slope shape [6, 1, 1]" in out and "Dropout 'Dropout_27' -> removed" in out


def test_no_validate_says_the_result_is_unproven(fixture_path, tmp_path, capsys):
    assert main(["convert", str(fixture_path("matmul_add")), "-o", str(tmp_path / "o.onnx"), "--no-validate"]) == 0
    assert "unproven" in capsys.readouterr().out


def bad_inputs(tmp_path, fixture_path):
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(fixture_path("dress_detector").read_bytes()[:3000])
    text = tmp_path / "notes.onnx"
    text.write_text("this is not a model\n")
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    return {
        "missing": (tmp_path / "nope.onnx", 3, "does not exist"),
        "directory": (tmp_path, 3, "is a directory"),
        "not onnx": (text, 3, "not"),
        "empty": (empty, 3, "not an ONNX model"),
        "truncated": (truncated, 3, "not"),
        "no head": (fixture_path("no_fc_head"), 4, "no fully connected head"),
        "no spatial head": (fixture_path("mlp_on_vector"), 4, "not a flattened spatial tensor"),
    }


@pytest.mark.parametrize("case", ["missing", "directory", "not onnx", "empty", "truncated", "no head",
                                  "no spatial head"])
def test_bad_input_gives_one_line_and_its_exit_code(case, tmp_path, fixture_path):
    path, expected_code, words = bad_inputs(tmp_path, fixture_path)[case]
    out = tmp_path / "out" / "model.onnx"
    out.parent.mkdir()
    code, stdout, stderr = cli("convert", path, "-o", out)
    assert code == expected_code, stderr
    assert stderr.startswith("fc2conv-onnx: error: ") and words in stderr
    assert stderr.count("\n") == 1 and "Traceback" not in stderr
    assert list(out.parent.iterdir()) == []


def test_output_equal_to_input_is_refused_and_the_input_is_untouched(fixture_path, tmp_path):
    model = tmp_path / "model.onnx"
    model.write_bytes(fixture_path("dress_detector").read_bytes())
    before = model.read_bytes()
    code, _, stderr = cli("convert", model, "-o", tmp_path / "." / "model.onnx")
    assert code == 3 and "is the model, which the command reads" in stderr and "--in-place" in stderr
    assert stderr.count("\n") == 1
    assert model.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["model.onnx"]


def test_failed_validation_exits_5_and_keeps_the_previous_output(fixture_path, tmp_path, monkeypatch, capsys):
    from fc2conv_onnx.rewrite import rewrite
    monkeypatch.setattr(rewrite, "first_layer_kernel", lambda w, f: -w.reshape((w.shape[0],) + f.source_shape))
    out = tmp_path / "out.onnx"
    out.write_bytes(b"previous result")
    assert main(["convert", str(fixture_path("dress_detector")), "-o", str(out)]) == 5
    assert "output 'score'" in capsys.readouterr().err
    assert out.read_bytes() == b"previous result" and [p.name for p in tmp_path.iterdir()] == ["out.onnx"]


def test_converting_a_converted_model_is_a_no_op_that_says_so(fixture_path, tmp_path):
    once = tmp_path / "once.onnx"
    assert cli("convert", fixture_path("matmul_add"), "-o", once)[0] == 0
    code, _, stderr = cli("convert", once, "-o", tmp_path / "twice.onnx")
    assert code == 4 and "already converted" in stderr and not (tmp_path / "twice.onnx").exists()


def test_inspect_exits_4_when_there_is_nothing_to_convert(fixture_path, capsys):
    assert main(["inspect", str(fixture_path("mlp_on_vector"))]) == 4
    captured = capsys.readouterr()
    assert "not a flattened spatial tensor" in captured.out and "error:" in captured.err


def test_help_answers_and_usage_errors_exit_2():
    code, stdout, _ = cli("convert", "--help")
    assert code == 0 and "--no-validate" in stdout and "exit codes" in stdout
    code, _, stderr = cli("convert")
    assert code == 2 and "Traceback" not in stderr


def test_each_commands_help_lists_the_exit_codes_it_can_end_with(fixture_path, capsys):
    """inspect exits 4 on a readable model without a head, and its help says so; heatmap never validates."""
    helps = {}
    for command in ("convert", "validate", "inspect", "heatmap", "detect"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        helps[command] = capsys.readouterr().out.split("exit codes:")[1]
    assert "0  at least one head would be converted" in helps["inspect"] and "4  no head" in helps["inspect"]
    assert "  5  " not in helps["heatmap"] and "  4  " not in helps["heatmap"]
    assert "  5  " not in helps["detect"] and "  4  " not in helps["detect"]
    assert "0  the detections were written" in helps["detect"] and "--emit-detections" in helps["convert"]
    assert "  5  " not in helps["inspect"] and "  5  not equivalent" in helps["validate"]
    assert main(["inspect", str(fixture_path("no_fc_head"))]) == 4


def test_console_script_is_installed():
    bin_dir = os.path.dirname(sys.executable)
    script = os.path.join(bin_dir, "fc2conv-onnx")
    if not os.path.exists(script):
        pytest.skip("package not installed with its console script (pip install .)")
    done = subprocess.run([script, "--version"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.startswith("fc2conv-onnx ")


def test_validate_command_accepts_a_good_pair_and_refuses_a_bad_one(fixture_path, tmp_path):
    from test_any_size import with_transposed_output  # the same wrong model the API tests use

    original = fixture_path("softmax_opset13")
    good, bad = tmp_path / "good.onnx", tmp_path / "bad.onnx"
    assert cli("convert", original, "-o", good)[0] == 0
    onnx.save(with_transposed_output(onnx.load(str(good)), "probabilities", (0, 1, 3, 2)), str(bad))
    before = {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()}
    code, stdout, stderr = cli("validate", original, good, "--size", "32x40")
    assert (code, stderr) == (0, "")
    assert "probabilities: windows, 35 location(s), input [1, 3, 32, 40]" in stdout
    assert "converted model: " in stdout and "stride 4x4, window 16x16" in stdout
    code, stdout, stderr = cli("validate", original, bad, "--size", "32")
    assert code == 5 and stderr.count("\n") == 1 and "Traceback" not in stderr
    assert "output 'probabilities'" in stderr and "windows" in stderr
    assert cli("validate", fixture_path("no_fc_head"), good)[0] == 4
    assert cli("validate", original, good, "--size", "8x8")[0] == 3
    assert {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()} == before  # validate writes nothing


def test_validate_size_flag(fixture_path, tmp_path, capsys):
    out = tmp_path / "o.onnx"
    assert main(["convert", str(fixture_path("trunk_1d")), "-o", str(out), "--validate-size", "100", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    windows = [c for c in report["checks"] if c["check"] == "windows"]
    assert windows[0]["input_shape"] == [1, 2, 100] and windows[0]["locations"] == 10  # (100 - 64) // 4 + 1
    assert report["geometry"][0]["stride"] == [4]
    assert main(["convert", str(fixture_path("trunk_1d")), "-o", str(out), "--validate-size", "off"]) == 0
    assert "window check: off" in capsys.readouterr().out


def test_progress_bar_draws_on_long_runs_only(capsys, monkeypatch):
    from fc2conv_onnx.commands import running

    quick = running.ProgressBar()
    quick(1, 2), quick(2, 2)
    assert capsys.readouterr().err == ""  # done within the delay: nothing drawn
    monkeypatch.setattr(running.ProgressBar, "DELAY", 0.0)
    slow = running.ProgressBar()
    slow(1, 4), slow(4, 4)
    err = capsys.readouterr().err
    assert "\r" in err and "1/4" in err and err.endswith("4/4\n")
    assert running.progress() is None  # stderr is not a terminal under pytest


def stream(*args, stdin: bytes = b""):
    done = subprocess.run([sys.executable, "-m", "fc2conv_onnx", *map(str, args)], input=stdin, capture_output=True,
                          env=ENV, timeout=120)
    return done.returncode, done.stdout, done.stderr.decode()


def test_models_stream_through_standard_input_and_output(fixture_path, tmp_path):
    original = fixture_path("dress_detector")
    data = original.read_bytes()
    code, out, err = stream("convert", "-", "-o", "-", stdin=data)
    assert code == 0, err
    converted = onnx.ModelProto.FromString(out)  # stdout is the model, whole; the report went to stderr
    assert "written: standard output" in err
    assert_equivalent(onnx.load(str(original)), converted, sizes=[(1, 3, 160, 96)])
    code, out, err = stream("inspect", "-", stdin=data)
    assert code == 0 and b"Conv 4x2 kernel" in out
    code, out, err = stream("validate", original, "-", stdin=converted.SerializeToString())
    assert code == 0 and b"windows" in out, err
    assert stream("convert", original, "-o", "-", "--external-data")[0] == 2
    assert stream("validate", "-", "-", stdin=data)[0] == 2


def test_quiet_and_verbose_go_before_or_after_the_command(fixture_path, tmp_path):
    model = fixture_path("dress_detector")
    for args in (["-q", "convert", model, "-o", tmp_path / "a.onnx"], ["convert", model, "-o", tmp_path / "b.onnx",
                                                                           "-q"]):
        code, stdout, stderr = cli(*args)
        assert (code, stdout, stderr) == (0, "", "")
    for args in (["-v", "convert", model, "-o", tmp_path / "c.onnx"], ["convert", model, "-o", tmp_path / "d.onnx",
                                                                       "-v"]):
        code, stdout, stderr = cli(*args)
        assert code == 0 and "written:" in stdout and "fc2conv-onnx: score: windows" in stderr, stderr
    assert cli("-v", "inspect", model, "-q")[0] == 2


@pytest.mark.parametrize("stem", ["torch_dynamo_static", "tf_keras_same_padding_branches", "timm_same_padding_ts"])
def test_onnxruntime_logs_nothing_during_a_successful_conversion(fixture_path, tmp_path, stem):
    """onnxruntime's own log lines (coloured, on stderr) once appeared while converting these."""
    code, stdout, stderr = cli("convert", fixture_path(f"exported/{stem}"), "-o", tmp_path / "out.onnx")
    assert (code, stderr) == (0, ""), stderr
