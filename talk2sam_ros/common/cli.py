"""What every console tool shares: logging set-up, one-line errors, sizes for humans."""
from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Callable, Iterator


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


def run_cli(prog: str, body: Callable[[], int], errors: tuple[type[BaseException], ...],
            level: int = logging.INFO, interrupted: str = "interrupted") -> int:
    """Run a console tool's `body` with cli_logging: one of `errors` (the tool's expected
    failures: bad input, missing or refused files) becomes exactly one stderr line
    ``<prog>: error: <one-line message>`` and exit code 1; Ctrl-C gives ``<prog>:
    <interrupted>`` and 130. Anything else is a bug and keeps its traceback."""
    try:
        with cli_logging(level):
            return body()
    except errors as exc:
        print(f"{prog}: error: {one_line(exc)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{prog}: {interrupted}", file=sys.stderr)
        return 130
