"""Official checkpoint files for the Talk2SAM presets: registry, offline cache and downloader.

``talk2sam-weights list | download [NAMES] [--preset P] [--dir D] | verify`` (see docs/tools.md).

The node, training and the demo find files by registry name through :func:`resolve` and
:func:`checkpoints_for_preset`; nothing here downloads implicitly. Downloads go through
``pooch.retrieve`` (hash check, move into place only when the hash matches) with
:class:`ResumableDownloader`, which streams into ``<file>.part`` with HTTP Range resume, checks the
size and shows a tqdm bar. Cache directory: ``$TALK2SAM_WEIGHTS_DIR`` or
``~/.cache/talk2sam_ros/weights``. Extra or replacement registry entries (e.g. a mirror, or a local
test server) come from a JSON file given by ``$TALK2SAM_WEIGHTS_REGISTRY`` or ``--registry``.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as _dt
import errno
import hashlib
import json
import logging
import os
import shutil
import sys
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

LOG = logging.getLogger(__name__)

ENV_DIR = "TALK2SAM_WEIGHTS_DIR"
ENV_REGISTRY = "TALK2SAM_WEIGHTS_REGISTRY"
HASHES_FILE = "hashes.json"  # first-download hashes of files without a published one
PARTS = ("sam_hq", "dinov2", "clip", "projection")
CHUNK = 1 << 20  # hashing
NET_CHUNK = 1 << 16  # small: bytes read before a broken connection are kept
USER_AGENT = "talk2sam-weights/0.1 (+requests)"


class WeightsError(RuntimeError):
    """A download or lookup problem, with a one-line message meant for the user."""


class MissingWeightsError(WeightsError, FileNotFoundError):
    """A registry file is not in the cache (the message says which command fetches it)."""


class _Retryable(Exception):
    """Transient transfer failure (truncated body, range trouble): the next try resumes."""


@dataclass(frozen=True)
class WeightFile:
    """One official file. `size`/`sha256`/`md5`/`git_blob_sha1` are None where unpublished."""

    name: str
    filename: str  # name in the cache directory
    url: str
    part: str  # one of PARTS
    size: int | None = None
    sha256: str | None = None
    md5: str | None = None
    git_blob_sha1: str | None = None  # git object id of the blob (GitHub-hosted files)
    source: str = ""  # where the size/hash facts were read

    def pooch_hash(self) -> str | None:
        """The strongest published hash in pooch's ``alg:hex`` form (None: unknown)."""
        if self.sha256:
            return f"sha256:{self.sha256}"
        if self.md5:
            return f"md5:{self.md5}"
        return None


@dataclass(frozen=True)
class Registry:
    files: Mapping[str, WeightFile]
    presets: Mapping[str, Mapping[str, str]]  # preset -> part -> file name

    def get(self, name: str) -> WeightFile:
        """Entry by registry name or by cache filename."""
        if name in self.files:
            return self.files[name]
        for entry in self.files.values():
            if entry.filename == name:
                return entry
        raise WeightsError(f"unknown weights name {name!r}; known: {', '.join(self.files)}")


_HQ = "https://huggingface.co/lkeab/hq-sam/resolve/main/"
_HQ_SRC = "LFS pointers in huggingface.co/lkeab/hq-sam commits 8a94b5e/519b37f/67ab824/a3a77cd"
_T2D = ("https://raw.githubusercontent.com/lorebianchi98/Talk2DINO/"
        "4918c2df1d00c644ecc7f34de070694af1a8bc69/weights/")

DEFAULT_FILES: tuple[WeightFile, ...] = (
    WeightFile("sam_hq_vit_tiny", "sam_hq_vit_tiny.pth", _HQ + "sam_hq_vit_tiny.pth", "sam_hq",
               42526881, "0f32c075ccdd870ae54db2f7630e7a0878ede5a2b06d05d6fe02c65a82fb7196",
               source=_HQ_SRC),
    WeightFile("sam_hq_vit_b", "sam_hq_vit_b.pth", _HQ + "sam_hq_vit_b.pth", "sam_hq",
               379335069, "14a9d662cd6f5a9c2dba6d40ab0058d88d287e4a18fd6fdc6ad5fb1a3fdeaa57",
               md5="c6b8953247bcfdc8bb8ef91e36a6cacc", source=_HQ_SRC),
    WeightFile("sam_hq_vit_l", "sam_hq_vit_l.pth", _HQ + "sam_hq_vit_l.pth", "sam_hq",
               1254865805, "e1a6c385d62bf005ded91a54d5ec55c985cfc4103ef89c08d90f39f04934c343",
               md5="08947267966e4264fb39523eccc33f86", source=_HQ_SRC),
    WeightFile("sam_hq_vit_h", "sam_hq_vit_h.pth", _HQ + "sam_hq_vit_h.pth", "sam_hq",
               2570940653, "a7ac14a085326d9fa6199c8c698c4f0e7280afdbb974d2c4660ec60877b45e35",
               md5="3560f6b6a5a6edacd814a1325c39640a", source=_HQ_SRC),
    WeightFile("dinov2_vitb14_reg4", "dinov2_vitb14_reg4_pretrain.pth",
               "https://dl.fbaipublicfiles.com/dinov2/dinov2_vitb14/"
               "dinov2_vitb14_reg4_pretrain.pth", "dinov2",
               346393545, "73182a088cf94833c94b1666d1c99e02fe87e2007bff57b564fb6206e25dba71",
               source="LFS pointer of a mirror: huggingface.co/msdkhairi/vit_sam commit 0bcb635"),
    WeightFile("dinov2_vitl14_reg4", "dinov2_vitl14_reg4_pretrain.pth",
               "https://dl.fbaipublicfiles.com/dinov2/dinov2_vitl14/"
               "dinov2_vitl14_reg4_pretrain.pth", "dinov2",
               source="not published (about 1.2 GB): hash recorded on first download"),
    # open_clip's hf_hub file for ('ViT-B-16-quickgelu', 'openai'): a plain state dict that
    # loads with weights_only; OpenAI's ViT-B-16.pt is TorchScript, refused by torch>=2.6.
    WeightFile("clip_vit_b16_openai", "clip_vit_b16_openai.safetensors",
               "https://huggingface.co/timm/vit_base_patch16_clip_224.openai/resolve/main/"
               "open_clip_model.safetensors", "clip",
               source="not published (about 599 MB): hash recorded on first download"),
    WeightFile("talk2dino_vitb", "vitb_mlp_infonce.pth", _T2D + "vitb_mlp_infonce.pth",
               "projection", 3940664,
               "5f6efcc520f22916ecf3dfdfb01d6f57e701c1c2e1feda71a80d89e3cd752f0f",
               git_blob_sha1="2e8fd64706f39b247c71a0b10a46c3d98cff440e",
               source="blob in github.com/lorebianchi98/Talk2DINO @4918c2d"),
    WeightFile("talk2dino_vitl", "vitl_mlp_infonce.pth", _T2D + "vitl_mlp_infonce.pth",
               "projection", git_blob_sha1="21a0038cc793403648264fe9c90a29c9533770a3",
               source="git tree of github.com/lorebianchi98/Talk2DINO @4918c2d (blob id only)"),
)

# Preset -> part -> registry name ("tiny" uses random frozen encoders and needs no files).
DEFAULT_PRESETS: dict[str, dict[str, str]] = {
    "tiny": {},
    "t": {"sam_hq": "sam_hq_vit_tiny", "dinov2": "dinov2_vitb14_reg4",
          "clip": "clip_vit_b16_openai", "projection": "talk2dino_vitb"},
    "b": {"sam_hq": "sam_hq_vit_b", "dinov2": "dinov2_vitb14_reg4",
          "clip": "clip_vit_b16_openai", "projection": "talk2dino_vitb"},
    "l": {"sam_hq": "sam_hq_vit_l", "dinov2": "dinov2_vitl14_reg4",
          "clip": "clip_vit_b16_openai", "projection": "talk2dino_vitl"},
    "h": {"sam_hq": "sam_hq_vit_h", "dinov2": "dinov2_vitl14_reg4",
          "clip": "clip_vit_b16_openai", "projection": "talk2dino_vitl"},
}

_FIELDS = {f.name for f in dataclasses.fields(WeightFile)}


def load_registry(path: str | os.PathLike | None = None) -> Registry:
    """Built-in registry, updated from a JSON file (`path`, else ``$TALK2SAM_WEIGHTS_REGISTRY``).

    JSON: ``{"files": {name: {filename, url, part, size?, sha256?, md5?, git_blob_sha1?}},
    "presets": {preset: {part: name}}, "replace": false}``; ``replace: true`` drops the built-in
    entries. Entries with an existing name replace it (e.g. to point at a mirror).
    """
    files = {f.name: f for f in DEFAULT_FILES}
    presets = {k: dict(v) for k, v in DEFAULT_PRESETS.items()}
    path = path or os.environ.get(ENV_REGISTRY) or None
    if path:
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise WeightsError(f"cannot read registry {path}: {exc}") from None
        if data.get("replace"):
            files, presets = {}, {}
        for name, raw in data.get("files", {}).items():
            unknown = set(raw) - _FIELDS
            if unknown:
                raise WeightsError(f"registry {path}: {name}: unknown keys {sorted(unknown)}")
            try:
                files[name] = WeightFile(**{"name": name, **raw})
            except TypeError as exc:
                raise WeightsError(f"registry {path}: {name}: {exc}") from None
        for preset, parts in data.get("presets", {}).items():
            presets[preset] = dict(parts)
    for entry in files.values():
        if entry.part not in PARTS:
            raise WeightsError(f"registry entry {entry.name}: part {entry.part!r} not in {PARTS}")
    for preset, parts in presets.items():
        for part, name in parts.items():
            if name not in files:
                raise WeightsError(f"preset {preset!r} part {part!r} names unknown file {name!r}")
    return Registry(files, presets)


def default_cache_dir() -> Path:
    """``$TALK2SAM_WEIGHTS_DIR`` or ``~/.cache/talk2sam_ros/weights``."""
    env = os.environ.get(ENV_DIR)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "talk2sam_ros" / "weights"


def _cache(cache_dir: str | os.PathLike | None) -> Path:
    return Path(cache_dir).expanduser() if cache_dir else default_cache_dir()


def trained_weights_path(preset: str, tag: str = "synthetic",
                         cache_dir: str | os.PathLike | None = None) -> Path:
    """Where our own trained head for `preset` lives: ``<cache>/trained/<preset>_<tag>.pt``."""
    return _cache(cache_dir) / "trained" / f"{preset}_{tag}.pt"


def resolve(name_or_path: str | os.PathLike, cache_dir: str | os.PathLike | None = None,
            registry: Registry | None = None) -> Path:
    """An existing file path as is, or a registry name/filename -> its file in the cache.

    Raises MissingWeightsError (naming the download command) when the file is not there.
    """
    candidate = Path(name_or_path).expanduser()
    if candidate.is_file():
        return candidate
    registry = registry or load_registry()
    try:
        entry = registry.get(str(name_or_path))
    except WeightsError:
        raise MissingWeightsError(f"{name_or_path} is neither a file nor a registry name "
                                  f"({', '.join(registry.files)})") from None
    path = _cache(cache_dir) / entry.filename
    if not path.is_file():
        raise MissingWeightsError(
            f"{entry.name} is not in {path.parent}; run: talk2sam-weights download {entry.name}"
            f" --dir {path.parent}")
    return path


def checkpoints_for_preset(preset: str, cache_dir: str | os.PathLike | None = None,
                           registry: Registry | None = None) -> dict[str, Path]:
    """part -> cached file for every official file `preset` needs ({} for "tiny").

    Raises MissingWeightsError listing all missing files and the command that fetches them.
    """
    registry = registry or load_registry()
    if preset not in registry.presets:
        raise WeightsError(f"unknown preset {preset!r}; known: {', '.join(registry.presets)}")
    cache = _cache(cache_dir)
    out, missing = {}, []
    for part, name in registry.presets[preset].items():
        path = cache / registry.files[name].filename
        if path.is_file():
            out[part] = path
        else:
            missing.append(name)
    if missing:
        raise MissingWeightsError(
            f"preset {preset!r} needs {', '.join(missing)} in {cache}; run: talk2sam-weights "
            f"download --preset {preset} --dir {cache}")
    return out


# ----------------------------------------------------------------------------- hashing


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


def _read_records(cache: Path) -> dict[str, dict[str, Any]]:
    try:
        return json.loads((cache / HASHES_FILE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except ValueError:
        LOG.warning("ignoring unreadable %s", cache / HASHES_FILE)
        return {}


def _write_record(cache: Path, entry: WeightFile, sha256: str, size: int) -> None:
    records = _read_records(cache)
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
                           f"{_human(need)}, {_human(free)} free")


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
    cache = _cache(cache_dir)
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise WeightsError(f"cannot create cache directory {cache}: {exc.strerror}") from None
    final = cache / entry.filename
    recorded = _read_records(cache).get(entry.filename, {}).get("sha256")
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
            last = _one_line(exc)
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
                               f"deleted ({_one_line(exc)})") from None
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
    cache = _cache(cache_dir)
    records = _read_records(cache)
    selected = [registry.get(n) for n in names] if names else list(registry.files.values())
    results = []
    for e in selected:
        path = cache / e.filename
        if not path.is_file():
            part = path.with_name(path.name + ".part")
            status = "partial" if part.is_file() else "missing"
            detail = f"{_human(part.stat().st_size)} downloaded" if part.is_file() else ""
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


# ----------------------------------------------------------------------------- CLI


def _human(n: int | None) -> str:
    if n is None:
        return "?"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) < 300 else text[:297] + "..."


def _presets_of(registry: Registry, name: str) -> str:
    return ",".join(p for p, parts in registry.presets.items() if name in parts.values()) or "-"


def _cmd_list(args: argparse.Namespace, registry: Registry) -> int:
    cache = _cache(args.dir)
    print(f"cache: {cache}")
    rows = [("name", "part", "presets", "size", "sha256", "state")]
    records = _read_records(cache)
    for e in registry.files.values():
        path = cache / e.filename
        state = "present" if path.is_file() else (
            "partial" if path.with_name(path.name + ".part").is_file() else "-")
        sha = e.sha256 or records.get(e.filename, {}).get("sha256")
        sha_txt = (sha[:16] + ("" if e.sha256 else " (recorded)")) if sha else (
            "git blob only" if e.git_blob_sha1 else "unknown")
        rows.append((e.name, e.part, _presets_of(registry, e.name), _human(e.size), sha_txt,
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
    p = argparse.ArgumentParser(prog="talk2sam-weights", description=(
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


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        with cli_logging(logging.INFO):
            registry = load_registry(args.registry)
            handler = {"list": _cmd_list, "download": _cmd_download, "verify": _cmd_verify}
            return handler[args.command](args, registry)
    except WeightsError as exc:
        print(f"talk2sam-weights: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("talk2sam-weights: interrupted; rerun to resume partial downloads", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
