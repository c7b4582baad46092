"""The console tools' shared ending (common.cli.run_cli): one stderr line per expected failure,
exit 1; bad options one line, exit 2; Ctrl-C / SIGTERM 130. Checked on run_cli itself and on
each tool's real main() with a bad option value and a missing or refused weights file (the
demo's node-level failure is in test_demo.py)."""
from __future__ import annotations

import os
import signal
import sys

import pytest
from rosutil import in_own_process

from talk2sam_ros.common.cli import CliParser, UsageError, run_cli


def one_error_line(err: str, prog: str) -> str:
    """The only stderr line, which must be `<prog>: error: ...`."""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"{prog}: error: "), err
    return lines[0]


def test_expected_errors_are_one_line_and_exit_1(capsys):
    def body() -> int:
        raise FileNotFoundError("weights.pt:\n  no such file")

    assert run_cli("tool", body, (OSError,)) == 1
    assert one_error_line(capsys.readouterr().err, "tool") == \
        "tool: error: weights.pt: no such file"


def test_bad_options_are_one_line_and_exit_2(capsys):
    parser = CliParser(prog="tool")
    parser.add_argument("--mode", choices=("a", "b"))
    assert run_cli("tool", lambda: parser.parse_args(["--mode", "c"]) and 0, ()) == 2
    line = one_error_line(capsys.readouterr().err, "tool")
    assert "--mode" in line and "'c'" in line
    with pytest.raises(SystemExit) as done:  # --help still prints and exits 0
        parser.parse_args(["--help"])
    assert done.value.code == 0 and "--mode" in capsys.readouterr().out


@in_own_process
def test_interrupts_and_sigterm_exit_130_and_restore_the_handlers(capsys):
    before = signal.getsignal(signal.SIGTERM)

    def terminated() -> int:
        os.kill(os.getpid(), signal.SIGTERM)  # delivered to this (main) thread at once
        return 0

    assert run_cli("tool", terminated, ()) == 130
    assert capsys.readouterr().err.strip() == "tool: interrupted"
    assert signal.getsignal(signal.SIGTERM) is before


def test_other_exceptions_are_bugs_and_keep_their_traceback():
    def body() -> int:
        raise KeyError("bug")

    with pytest.raises(KeyError):
        run_cli("tool", body, (OSError, UsageError))


# ----------------------------------------------------------------------------- every tool
def test_weights_cli_bad_option_and_unknown_file(tmp_path, capsys, monkeypatch):
    from talk2sam_ros.tools import weights

    monkeypatch.setenv("TALK2SAM_WEIGHTS_DIR", str(tmp_path))
    assert weights.main(["download", "--retries", "many"]) == 2
    assert "--retries" in one_error_line(capsys.readouterr().err, "talk2sam-weights")
    assert weights.main(["download", "no_such_file", "-q"]) == 1
    assert "no_such_file" in one_error_line(capsys.readouterr().err, "talk2sam-weights")


def test_bench_bad_options_and_missing_weights(tmp_path, capsys, monkeypatch):
    from talk2sam_ros.tools import bench

    for argv, named in ((["--dtype", "fp8"], "--dtype"), (["--image-size", "640"], "WxH"),
                        (["--preset", "xl"], "--preset"), (["--runs", "0"], "--runs")):
        assert bench.main([*argv, "--out", str(tmp_path)]) == 2, argv
        assert named in one_error_line(capsys.readouterr().err, "talk2sam-bench")
    monkeypatch.setenv("TALK2SAM_WEIGHTS_DIR", str(tmp_path / "empty"))
    rc = bench.main(["--preset", "b", "--checkpoints-from-cache", "--no-node",
                     "--out", str(tmp_path)])
    line = one_error_line(capsys.readouterr().err, "talk2sam-bench")
    assert rc == 1 and "talk2sam-weights download --preset b" in line


def test_demo_bad_options(tmp_path, capsys):
    from talk2sam_ros.tools import demo

    for argv, named in ((["--checkpoint", "head=/w.pt"], "head"),
                        (["--checkpoint", "talk2sam"], "PART=PATH"),
                        (["--rate", "0"], "--rate"), (["--preset", "xl"], "--preset")):
        assert demo.main([*argv, "--out", str(tmp_path)]) == 2, argv
        assert named in one_error_line(capsys.readouterr().err, "talk2sam-demo")
    assert not any(tmp_path.iterdir())  # refused before anything was written


def test_say_to_prompt_bad_option_and_missing_or_broken_files(tmp_path, capsys):
    pytest.importorskip("pocketsphinx", reason="pocketsphinx (the `speech` extra) not installed")
    from talk2sam_ros.speech import cli

    prog = "talk2sam-say-to-prompt"
    assert cli.main([]) == 2
    assert "WAV" in one_error_line(capsys.readouterr().err, prog)
    assert cli.main(["--mode", "bogus", "x.wav"]) == 2
    assert "--mode" in one_error_line(capsys.readouterr().err, prog)
    assert cli.main([str(tmp_path / "missing.wav")]) == 1
    assert "missing.wav" in one_error_line(capsys.readouterr().err, prog)
    not_wav = tmp_path / "notes.wav"
    not_wav.write_text("not audio")
    assert cli.main([str(not_wav)]) == 1
    assert "notes.wav" in one_error_line(capsys.readouterr().err, prog)


class _Writes:
    """A stderr that keeps each write call (the unit that another process cannot split)."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def write(self, text: str) -> int:
        self.calls.append(text)
        return len(text)

    def flush(self) -> None:
        pass


def test_the_error_line_is_one_write(monkeypatch):
    """torchrun's ranks share one stderr: a line written in two parts (text, newline) was
    spliced with the other rank's line in CI."""
    writes = _Writes()
    monkeypatch.setattr(sys, "stderr", writes)

    def body() -> int:
        raise OSError("disk full")

    assert run_cli("tool", body, (OSError,)) == 1
    assert writes.calls == ["tool: error: disk full\n"]
