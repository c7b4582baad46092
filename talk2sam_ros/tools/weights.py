"""``talk2sam-weights list | download [NAMES] [--preset P] [--dir D] | verify`` (docs/tools.md).

Fetches and checks the official checkpoint files of the presets into the cache that the node,
training, evaluation, the benchmark and the demo search by registry name.
"""
from __future__ import annotations

import argparse
import logging
import sys

from talk2sam_ros.common.cli import CliParser, human_size, run_cli
from talk2sam_ros.weights.fetch import download, read_records, verify
from talk2sam_ros.weights.registry import (ENV_DIR, ENV_REGISTRY, Registry, WeightsError,
                                           cache_dir_path, load_registry)


PROG = "talk2sam-weights"


def _presets_of(registry: Registry, name: str) -> str:
    return ",".join(p for p, parts in registry.presets.items() if name in parts.values()) or "-"


def _cmd_list(args: argparse.Namespace, registry: Registry) -> int:
    cache = cache_dir_path(args.dir)
    print(f"cache: {cache}")
    rows = [("name", "part", "presets", "size", "sha256", "state")]
    records = read_records(cache)
    for e in registry.files.values():
        path = cache / e.filename
        state = "present" if path.is_file() else (
            "partial" if path.with_name(path.name + ".part").is_file() else "-")
        sha = e.sha256 or records.get(e.filename, {}).get("sha256")
        sha_txt = (sha[:16] + ("" if e.sha256 else " (recorded)")) if sha else (
            "git blob only" if e.git_blob_sha1 else "unknown")
        rows.append((e.name, e.part, _presets_of(registry, e.name), human_size(e.size), sha_txt,
                     state))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    return 0


def _cmd_download(args: argparse.Namespace, registry: Registry) -> int:
    names = list(args.names)
    if args.preset:
        if args.preset not in registry.presets:
            raise WeightsError(f"unknown preset {args.preset!r}; known: "
                               f"{', '.join(registry.presets)}")
        names += list(registry.presets[args.preset].values())
    if names == ["all"]:
        names = list(registry.files)
    if not names:
        raise WeightsError("name the files to download (see `talk2sam-weights list`), "
                           "--preset P, or `all`")
    paths = download(names, args.dir, registry, retries=args.retries, backoff=args.backoff,
                     progress=not args.quiet)
    for name, path in paths.items():
        print(f"{name}: {path}")
    return 0


def _cmd_verify(args: argparse.Namespace, registry: Registry) -> int:
    results = verify(args.names or None, args.dir, registry)
    bad = 0
    for r in results:
        if r.status == "mismatch" or (args.names and r.status in ("missing", "partial")):
            bad += 1
        print(f"{r.name:22s} {r.status:9s} {r.detail}".rstrip())
    return 1 if bad else 0


def build_parser() -> argparse.ArgumentParser:
    p = CliParser(prog=PROG, description=(
        "Fetch and check the official checkpoint files of the Talk2SAM presets. Cache: "
        f"${ENV_DIR} or ~/.cache/talk2sam_ros/weights."))
    p.add_argument("--registry", help=f"JSON registry overrides (default ${ENV_REGISTRY})")
    sub = p.add_subparsers(dest="command", required=True)
    for name, helptext in (("list", "show the registry and what is in the cache"),
                           ("download", "download files (resumable, hash-checked)"),
                           ("verify", "re-hash cached files")):
        s = sub.add_parser(name, help=helptext)
        s.add_argument("--dir", help="cache directory (overrides $TALK2SAM_WEIGHTS_DIR)")
        if name != "list":
            s.add_argument("names", nargs="*", help="registry names or filenames ('all')")
    d = sub.choices["download"]
    d.add_argument("--preset", help="add every file this preset needs (t, b, l, h)")
    d.add_argument("--retries", type=int, default=4, help="retries per file (default 4)")
    d.add_argument("--backoff", type=float, default=1.0, help="first retry wait, s (doubles)")
    d.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    return p


def _weights(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    registry = load_registry(args.registry)
    handler = {"list": _cmd_list, "download": _cmd_download, "verify": _cmd_verify}
    return handler[args.command](args, registry)


def main(argv: list[str] | None = None) -> int:
    # OSError: a cache folder that cannot be created or written (disk full is a WeightsError)
    return run_cli(PROG, lambda: _weights(argv), (WeightsError, OSError), logging.INFO,
                   interrupted="interrupted; rerun to resume partial downloads")


if __name__ == "__main__":
    sys.exit(main())
