"""What every console tool shares: logging set-up, one-line errors, signals, sizes for humans.

A tool's main() is ``return run_cli(prog, lambda: body(argv), errors)`` with its argparse
parser a :class:`CliParser`: bad options, the tool's expected failures and interrupts each end
with one stderr line and a fixed exit code (docs/tools.md).
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any, NoReturn

EXIT_ERROR = 1
EXIT_USAGE = 2  # argparse's code for bad options
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what shells report for Ctrl-C


class UsageError(ValueError):
    """A bad command line (unknown option, bad value): one line, exit 2."""


class CliParser(argparse.ArgumentParser):
    """argparse that raises UsageError instead of printing the usage block and exiting, so
    run_cli reports a bad option in one line like any other error (--help still prints)."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def human_size(n: int | None) -> str:
    """1536 -> '1.5 KiB' (None -> '?')."""
    if n is None:
        return "?"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def one_line(exc: BaseException, limit: int | None = None) -> str:
    """An exception's message folded into one line (cut to `limit` characters if given)."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if limit is None or len(text) <= limit else text[:limit - 3] + "..."


@contextlib.contextmanager
def cli_logging(level: int = logging.INFO) -> Iterator[None]:
    """Root logging to the current stderr for one CLI call, removed afterwards (so that calling
    main() in-process, e.g. from tests, leaves no handler on a closed stream behind)."""
    root = logging.getLogger()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(level)
    try:
        yield
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)


@contextlib.contextmanager
def interrupt_on_termination() -> Iterator[None]:
    """SIGTERM / SIGHUP (kill, a closing terminal, a supervisor) act like Ctrl-C while the
    block runs: KeyboardInterrupt unwinds the `with` blocks, so child processes (the node) are
    stopped and partial files kept as after Ctrl-C. Main thread only (signal API)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    old = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


def _say(line: str) -> None:
    """`line` and its newline in one write: processes sharing a stderr (torchrun's ranks) then
    cannot splice their lines together, as print's two writes can when stderr is unbuffered."""
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def run_cli(prog: str, body: Callable[[], int], errors: tuple[type[BaseException], ...],
            level: int = logging.INFO, interrupted: str = "interrupted") -> int:
    """Run a console tool's `body` with cli_logging and interrupt_on_termination.

    One of `errors` (the tool's expected failures: bad input, missing or refused files)
    becomes exactly one stderr line ``<prog>: error: <one-line message>`` and exit code 1; a
    UsageError (CliParser) the same line and code 2; Ctrl-C, SIGTERM or SIGHUP ``<prog>:
    <interrupted>`` and 130. Anything else is a bug and keeps its traceback.
    """
    try:
        with cli_logging(level), interrupt_on_termination():
            return body()
    except UsageError as exc:
        _say(f"{prog}: error: {one_line(exc)}")
        return EXIT_USAGE
    except errors as exc:
        _say(f"{prog}: error: {one_line(exc)}")
        return EXIT_ERROR
    except KeyboardInterrupt:
        _say(f"{prog}: {interrupted}")
        return EXIT_INTERRUPTED
