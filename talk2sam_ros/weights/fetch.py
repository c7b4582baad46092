"""Downloading and checking registry files (the only code here that touches the network).

Downloads go through ``pooch.retrieve`` (hash check, move into place only when the hash
matches) with :class:`ResumableDownloader`, which streams into ``<file>.part`` with HTTP Range
resume, checks the size and shows a tqdm bar. Files without a published hash get their sha256
recorded in the cache on first download, and are checked against it afterwards.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import hashlib
import json
import logging
import os
import shutil
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from talk2sam_ros.common.cli import human_size, one_line
from talk2sam_ros.weights.registry import (HASHES_FILE, Registry, WeightFile, WeightsError,
                                           cache_dir_path, load_registry)

LOG = logging.getLogger(__name__)

CHUNK = 1 << 20  # hashing
NET_CHUNK = 1 << 16  # small: bytes read before a broken connection are kept
USER_AGENT = "talk2sam-weights/0.1 (+requests)"


class _Retryable(Exception):
    """Transient transfer failure (truncated body, range trouble): the next try resumes."""


def file_digests(path: Path, algorithms: Iterable[str] = ("sha256",)) -> dict[str, str]:
    """Hex digests of `path`; "git_blob_sha1" is git's object id (sha1 of "blob <n>\\0" + data)."""
    hashers: dict[str, Any] = {}
    for alg in algorithms:
        if alg == "git_blob_sha1":
            hashers[alg] = hashlib.sha1(f"blob {path.stat().st_size}\0".encode())
        else:
            hashers[alg] = hashlib.new(alg)
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            for h in hashers.values():
                h.update(chunk)
    return {alg: h.hexdigest() for alg, h in hashers.items()}


def read_records(cache: Path) -> dict[str, dict[str, Any]]:
    try:
        return json.loads((cache / HASHES_FILE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except ValueError:
        LOG.warning("ignoring unreadable %s", cache / HASHES_FILE)
        return {}


def _write_record(cache: Path, entry: WeightFile, sha256: str, size: int) -> None:
    records = read_records(cache)
    records[entry.filename] = {"name": entry.name, "url": entry.url, "sha256": sha256,
                               "size": size, "recorded": _dt.datetime.now(_dt.timezone.utc)
                               .isoformat(timespec="seconds")}
    tmp = cache / (HASHES_FILE + ".tmp")
    tmp.write_text(json.dumps(records, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, cache / HASHES_FILE)


# ----------------------------------------------------------------------------- downloading


@dataclass
class ResumableDownloader:
    """pooch downloader: stream `url` into `part` with HTTP Range resume, then hand it to pooch.

    pooch passes a fresh temporary name per call, so the partial data lives under a stable
    ``<file>.part`` and is moved onto pooch's temporary file only once complete (size checked).
    A server that ignores Range (200 instead of 206) or rejects it (416) restarts from zero.
    """

    part: Path
    expected_size: int | None = None
    progress: bool = True
    timeout: tuple[float, float] = (15.0, 60.0)
    git_blob_sha1: str | None = None  # checked here: pooch knows no git object ids
    requests_made: list[dict[str, Any]] = field(default_factory=list)

    def __call__(self, url: str, output_file: Any, pooch: Any, check_only: bool = False) -> Any:
        import requests
        from tqdm.auto import tqdm

        if check_only:
            resp = requests.head(url, allow_redirects=True, timeout=self.timeout)
            return resp.status_code == 200
        offset = self._usable_offset()
        headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
        if offset:
            headers["Range"] = f"bytes={offset}-"
        with requests.get(url, headers=headers, stream=True, timeout=self.timeout) as resp:
            self.requests_made.append({"url": url, "range": headers.get("Range"),
                                       "status": resp.status_code})
            if resp.status_code == 416:  # our offset is past the end: stale or bigger file
                self.part.unlink(missing_ok=True)
                raise _Retryable(f"server rejected resume at byte {offset}; restarting")
            resp.raise_for_status()
            total = self._total(resp, offset)
            if offset and resp.status_code != 206:
                LOG.info("server ignored the Range request; restarting %s from zero", url)
                offset = 0
            mode = "ab" if offset else "wb"
            with open(self.part, mode) as fh, tqdm(
                    total=total, initial=offset, unit="B", unit_scale=True, unit_divisor=1024,
                    desc=self.part.name[:-5], disable=not self.progress, leave=False,
                    file=sys.stderr) as bar:
                for chunk in resp.iter_content(chunk_size=NET_CHUNK):
                    fh.write(chunk)
                    bar.update(len(chunk))
        size = self.part.stat().st_size
        if total is not None and size != total:
            raise _Retryable(f"transfer ended at {size} of {total} bytes")
        if self.git_blob_sha1:
            got = file_digests(self.part, ("git_blob_sha1",))["git_blob_sha1"]
            if got != self.git_blob_sha1:
                self.part.unlink()
                raise ValueError(f"git blob id mismatch for {self.part.name[:-5]}: expected "
                                 f"{self.git_blob_sha1}, got {got}")
        os.replace(self.part, output_file)
        return None

    def _usable_offset(self) -> int:
        try:
            size = self.part.stat().st_size
        except FileNotFoundError:
            return 0
        if self.expected_size is not None and size > self.expected_size:
            self.part.unlink()  # cannot be a prefix of the right file
            return 0
        if size and size == self.expected_size:
            # Complete but not yet checked: drop the last byte and fetch it again, which also
            # proves the server still has this file.
            with open(self.part, "r+b") as fh:
                fh.truncate(size - 1)
            return size - 1
        return size

    def _total(self, resp: Any, offset: int) -> int | None:
        """Full file size from the response; checked against the registry size."""
        total = None
        if resp.status_code == 206:
            crange = resp.headers.get("Content-Range", "")  # "bytes 100-199/200"
            try:
                span, _, whole = crange.partition(" ")[2].partition("/")
                start = int(span.split("-")[0])
                total = int(whole) if whole != "*" else None
            except ValueError:
                raise _Retryable(f"bad Content-Range {crange!r}") from None
            if start != offset:
                self.part.unlink(missing_ok=True)
                raise _Retryable(f"server resumed at byte {start}, asked {offset}")
        elif "Content-Length" in resp.headers:
            total = int(resp.headers["Content-Length"])
        if total is not None and self.expected_size is not None and total != self.expected_size:
            raise WeightsError(f"{resp.url} has {total} bytes, the registry expects "
                               f"{self.expected_size} (file changed upstream?)")
        return total if total is not None else self.expected_size


def _check_space(cache: Path, entry: WeightFile) -> None:
    if entry.size is None:
        return
    part = cache / (entry.filename + ".part")
    have = part.stat().st_size if part.is_file() else 0
    free = shutil.disk_usage(cache).free
    need = entry.size - have
    if need > free:
        raise WeightsError(f"not enough disk space for {entry.name} in {cache}: need "
                           f"{human_size(need)}, {human_size(free)} free")


@contextlib.contextmanager
def _quiet_pooch() -> Iterator[None]:
    """pooch's own logger prints "Downloading ..." through a handler bound at import time;
    our tqdm bar and log lines say the same, so keep it to warnings for the call."""
    import pooch

    logger = pooch.get_logger()
    old = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(old)


def download_one(entry: WeightFile, cache_dir: str | os.PathLike | None = None, *,
                 retries: int = 4, backoff: float = 1.0, progress: bool = True) -> Path:
    """Fetch `entry` into the cache (no-op if present and valid) and return its path.

    Transient failures (connection errors, truncated bodies, 5xx) are retried `retries` times
    with exponential backoff (backoff * 2**i s, capped at 60 s); the partial ``.part`` file is
    kept and resumed, also across runs. A hash mismatch deletes the downloaded data: it is
    retried once from zero when the bad file had been resumed, otherwise it fails at once.
    """
    import pooch
    import requests

    bad_url = (requests.exceptions.InvalidURL, requests.exceptions.MissingSchema,
                requests.exceptions.InvalidSchema)
    cache = cache_dir_path(cache_dir)
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise WeightsError(f"cannot create cache directory {cache}: {exc.strerror}") from None
    final = cache / entry.filename
    recorded = read_records(cache).get(entry.filename, {}).get("sha256")
    known = entry.pooch_hash() or (f"sha256:{recorded}" if recorded else None)
    if final.is_file() and (known is None or pooch.file_hash(str(final), known.split(":")[0])
                            == known.split(":")[1]):
        if entry.size is not None and final.stat().st_size != entry.size:
            raise WeightsError(f"{final} has the wrong size; delete it and download again")
        return final
    _check_space(cache, entry)
    part = cache / (entry.filename + ".part")
    downloader = ResumableDownloader(part, entry.size, progress, git_blob_sha1=entry.git_blob_sha1)
    hash_retry_used = False
    last = "no attempt made"
    failures = 0  # transient failures so far; the one hash retry below does not count
    while True:
        resumed = part.is_file() and part.stat().st_size > 0
        try:
            with _quiet_pooch():
                pooch.retrieve(entry.url, known_hash=known, fname=entry.filename, path=cache,
                               downloader=downloader, progressbar=False)
            break
        except (requests.exceptions.RequestException, _Retryable) as exc:
            last = one_line(exc, 300)
            if isinstance(exc, bad_url):  # a registry mistake, not a network problem
                raise WeightsError(f"{entry.name}: cannot fetch {entry.url!r}: {last}") from None
            status = getattr(getattr(exc, "response", None), "status_code", None)
            if status is not None and 400 <= status < 500 and status not in (408, 429):
                raise WeightsError(f"{entry.name}: {entry.url} answered HTTP {status}") from None
        except ValueError as exc:  # hash mismatch: pooch already deleted its temporary file
            part.unlink(missing_ok=True)
            if resumed and not hash_retry_used:
                # The bad bytes may be a stale prefix from an older run: once more from zero.
                hash_retry_used = True
                LOG.warning("%s: resumed file failed its hash check; downloading it again "
                            "from zero", entry.name)
                continue
            raise WeightsError(f"{entry.name}: downloaded file failed its hash check and was "
                               f"deleted ({one_line(exc, 300)})") from None
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                raise WeightsError(f"disk full while writing {entry.name} to {cache}; free "
                                   f"space and rerun to resume from {part.name}") from None
            raise WeightsError(f"{entry.name}: cannot write {cache}: {exc}") from None
        if failures >= retries:
            kept = (f" (partial data kept in {part} for the next run)"
                    if part.is_file() and part.stat().st_size else "")
            raise WeightsError(f"{entry.name}: download failed after {failures + 1} attempts: "
                               f"{last}{kept}")
        wait = min(backoff * 2 ** failures, 60.0)
        failures += 1
        LOG.warning("%s: %s; retrying in %.1f s (%d left)", entry.name, last, wait,
                    retries - failures + 1)
        time.sleep(wait)
    if known is None:
        digest = file_digests(final)["sha256"]
        _write_record(cache, entry, digest, final.stat().st_size)
        LOG.info("%s: no published hash; recorded sha256 %s", entry.name, digest)
    return final


def download(names: Iterable[str], cache_dir: str | os.PathLike | None = None,
             registry: Registry | None = None, **kwargs: Any) -> dict[str, Path]:
    """download_one for each registry name (duplicates collapse); returns name -> path."""
    registry = registry or load_registry()
    entries = {registry.get(n).name: registry.get(n) for n in names}
    return {name: download_one(e, cache_dir, **kwargs) for name, e in entries.items()}


@dataclass(frozen=True)
class VerifyResult:
    name: str
    path: Path
    status: str  # ok | recorded | missing | mismatch | partial
    detail: str = ""


def verify(names: Iterable[str] | None = None, cache_dir: str | os.PathLike | None = None,
           registry: Registry | None = None) -> list[VerifyResult]:
    """Check cached files against published hashes/sizes, else against the first-download record.

    A present file with neither gets its sha256 recorded now (status "recorded").
    """
    registry = registry or load_registry()
    cache = cache_dir_path(cache_dir)
    records = read_records(cache)
    selected = [registry.get(n) for n in names] if names else list(registry.files.values())
    results = []
    for e in selected:
        path = cache / e.filename
        if not path.is_file():
            part = path.with_name(path.name + ".part")
            status = "partial" if part.is_file() else "missing"
            detail = f"{human_size(part.stat().st_size)} downloaded" if part.is_file() else ""
            results.append(VerifyResult(e.name, path, status, detail))
            continue
        size = path.stat().st_size
        algs = ["sha256"] + (["git_blob_sha1"] if e.git_blob_sha1 else [])
        got = file_digests(path, algs)
        rec = records.get(e.filename, {})
        problems = []
        if e.size is not None and size != e.size:
            problems.append(f"size {size} != {e.size}")
        expected = e.sha256 or rec.get("sha256")
        if expected and got["sha256"] != expected:
            problems.append(f"sha256 {got['sha256'][:12]}... != {expected[:12]}...")
        if e.git_blob_sha1 and got["git_blob_sha1"] != e.git_blob_sha1:
            problems.append("git blob id differs")
        if problems:
            results.append(VerifyResult(e.name, path, "mismatch", "; ".join(problems)))
        elif e.sha256 or e.git_blob_sha1:
            results.append(VerifyResult(e.name, path, "ok", "published hash"))
        elif rec:
            results.append(VerifyResult(e.name, path, "ok", f"recorded {rec.get('recorded')}"))
        else:
            _write_record(cache, e, got["sha256"], size)
            results.append(VerifyResult(e.name, path, "recorded", got["sha256"]))
    return results
