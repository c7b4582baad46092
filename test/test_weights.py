"""talk2sam-weights against a real HTTP server on 127.0.0.1 serving small generated files.

The handler implements HTTP Range itself and can misbehave on purpose (truncate, ignore Range,
serve the wrong bytes). Every registry URL used here points at 127.0.0.1.
"""
from __future__ import annotations

import hashlib
import json
import os
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlparse

import pytest

from talk2sam_ros import weights as W
from talk2sam_ros.tools import weights as cli
from talk2sam_ros.weights import fetch

SIZE = 300_000  # > 1 pooch/requests chunk so truncation lands mid-transfer


def _blob(seed: int, size: int = SIZE) -> bytes:
    return bytes((i * 31 + seed * 7 + (i >> 8)) % 251 for i in range(size))


class _Server:
    """ThreadingHTTPServer with per-path behaviour and a log of (path, Range header)."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.mode: dict[str, str] = {}  # path -> ok | truncate_once | truncate_always | norange
        self.log: list[tuple[str, str | None]] = []
        self.hits: dict[str, int] = {}
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:  # keep test output clean
                pass

            def do_GET(self) -> None:  # noqa: N802 (http.server API)
                path = self.path
                rng = self.headers.get("Range")
                server.log.append((path, rng))
                n = server.hits[path] = server.hits.get(path, 0) + 1
                data = server.files.get(path)
                if data is None:
                    self.send_error(404)
                    return
                mode = server.mode.get(path, "ok")
                start = 0
                if rng and mode != "norange":
                    start = int(rng.split("=")[1].split("-")[0])
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range",
                                     f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Accept-Ranges", "bytes")
                self.end_headers()
                if mode == "truncate_always" or (mode == "truncate_once" and n == 1):
                    self.wfile.write(body[: len(body) // 3])  # then the connection closes
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


@pytest.fixture
def server():
    srv = _Server()
    try:
        yield srv
    finally:
        srv.close()


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Own cache dir, no registry from the environment, no proxies for loopback."""
    monkeypatch.setenv(W.ENV_DIR, str(tmp_path / "cache"))
    monkeypatch.delenv(W.ENV_REGISTRY, raising=False)
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")


def _registry(tmp_path: Path, entries: dict[str, dict], presets: dict | None = None) -> Path:
    for e in entries.values():  # the guarantee this file makes: nothing leaves loopback
        assert urlparse(e["url"]).hostname == "127.0.0.1", e["url"]
    path = tmp_path / "registry.json"
    path.write_text(json.dumps({"replace": True, "files": entries, "presets": presets or {}}))
    return path


def _entry(srv: _Server, path: str, data: bytes, *, serve: bytes | None = None,
           mode: str = "ok", size: bool = True, sha: bool = True, **extra) -> dict:
    srv.files[path] = data if serve is None else serve
    srv.mode[path] = mode
    entry = {"filename": path.strip("/"), "url": srv.url(path), "part": "sam_hq"}
    if size:
        entry["size"] = len(data)
    if sha:
        entry["sha256"] = hashlib.sha256(data).hexdigest()
    entry.update(extra)
    return entry


def _cache() -> Path:
    return Path(os.environ[W.ENV_DIR])


def test_good_file_downloads_and_verifies(server, tmp_path):
    data = _blob(1)
    reg = W.load_registry(_registry(tmp_path, {"good": _entry(server, "/good.pth", data)}))
    path = fetch.download_one(reg.get("good"), progress=False)
    assert path == _cache() / "good.pth" and path.read_bytes() == data
    assert not list(_cache().glob("*.part"))
    assert [r.status for r in fetch.verify(None, registry=reg)] == ["ok"]
    assert W.resolve("good", registry=reg) == path
    # A second call finds the valid file and sends nothing.
    hits = len(server.log)
    fetch.download_one(reg.get("good"), progress=False)
    assert len(server.log) == hits


def test_truncated_transfer_is_retried_and_resumed(server, tmp_path):
    data = _blob(2)
    reg = W.load_registry(_registry(tmp_path, {
        "t": _entry(server, "/t.pth", data, mode="truncate_once")}))
    path = fetch.download_one(reg.get("t"), retries=2, backoff=0.01, progress=False)
    assert path.read_bytes() == data
    ranges = [r for p, r in server.log if p == "/t.pth"]
    assert ranges[0] is None and ranges[1] is not None and ranges[1].startswith("bytes=")
    assert int(ranges[1].split("=")[1].rstrip("-")) > 0


def test_always_truncating_server_gives_clear_error(server, tmp_path):
    data = _blob(3)
    reg = W.load_registry(_registry(tmp_path, {
        "t": _entry(server, "/t.pth", data, mode="truncate_always")}))
    with pytest.raises(W.WeightsError, match="download failed after 3 attempts"):
        fetch.download_one(reg.get("t"), retries=2, backoff=0.01, progress=False)
    assert not (_cache() / "t.pth").exists()
    assert (_cache() / "t.pth.part").is_file()  # kept for the next run


def test_truncation_without_known_size_or_length(server, tmp_path):
    """No registry size: Content-Length alone must catch the short body."""
    data = _blob(4)
    reg = W.load_registry(_registry(tmp_path, {
        "t": _entry(server, "/t.pth", data, mode="truncate_once", size=False)}))
    assert fetch.download_one(reg.get("t"), retries=1, backoff=0.01,
                          progress=False).read_bytes() == data


def test_wrong_hash_deletes_and_fails_once(server, tmp_path):
    data = _blob(5)
    bad = bytearray(data)
    bad[1234] ^= 0xFF
    reg = W.load_registry(_registry(tmp_path, {
        "w": _entry(server, "/w.pth", data, serve=bytes(bad))}))
    with pytest.raises(W.WeightsError, match="hash check") as err:
        fetch.download_one(reg.get("w"), retries=3, backoff=0.01, progress=False)
    assert "\n" not in str(err.value)
    assert sorted(p.name for p in _cache().iterdir()) == []  # nothing bad left behind
    assert len(server.log) == 1  # a fresh (not resumed) bad download is not retried


def test_interrupted_then_resumed_in_a_later_run(server, tmp_path):
    data = _blob(6)
    reg_path = _registry(tmp_path, {"r": _entry(server, "/r.pth", data, mode="truncate_once")})
    reg = W.load_registry(reg_path)
    with pytest.raises(W.WeightsError, match="partial data kept"):
        fetch.download_one(reg.get("r"), retries=0, progress=False)
    part = _cache() / "r.pth.part"
    have = part.stat().st_size
    assert 0 < have < len(data)
    assert part.read_bytes() == data[:have]
    # Second run (through the CLI, as a user would): resumes with a Range request.
    rc = cli.main(["--registry", str(reg_path), "download", "r", "-q", "--backoff", "0"])
    assert rc == 0
    assert server.log[-1] == ("/r.pth", f"bytes={have}-")
    assert (_cache() / "r.pth").read_bytes() == data and not part.exists()


def test_stale_part_with_a_bad_hash_is_fetched_again_from_zero(server, tmp_path):
    """A .part left by an older upstream file resumes into a bad hash: deleted, and fetched
    once more from zero, even with no transient retries allowed."""
    data = _blob(12)
    reg = W.load_registry(_registry(tmp_path, {"s": _entry(server, "/s.pth", data)}))
    _cache().mkdir(parents=True)
    (_cache() / "s.pth.part").write_bytes(b"\x07" * 1000)  # not a prefix of `data`
    path = fetch.download_one(reg.get("s"), retries=0, progress=False)
    assert path.read_bytes() == data and not (_cache() / "s.pth.part").exists()
    assert server.log == [("/s.pth", "bytes=1000-"), ("/s.pth", None)]


def test_malformed_url_is_not_retried(tmp_path):
    reg = W.load_registry(_registry(tmp_path, {"u": {
        "filename": "u.pth", "part": "clip", "url": "ftp://127.0.0.1/u.pth"}}))
    with pytest.raises(W.WeightsError, match="cannot fetch 'ftp://127.0.0.1/u.pth'"):
        fetch.download_one(reg.get("u"), retries=3, backoff=30.0, progress=False)


def test_server_ignoring_range_restarts_from_zero(server, tmp_path):
    data = _blob(7)
    reg = W.load_registry(_registry(tmp_path, {
        "n": _entry(server, "/n.pth", data, mode="norange")}))
    _cache().mkdir(parents=True)
    (_cache() / "n.pth.part").write_bytes(b"\0" * 1000)  # a stale prefix that must not stay
    path = fetch.download_one(reg.get("n"), retries=0, progress=False)
    assert path.read_bytes() == data
    assert server.log == [("/n.pth", "bytes=1000-")]


def test_complete_part_file_is_finished_with_one_byte(server, tmp_path):
    data = _blob(8, 5000)
    reg = W.load_registry(_registry(tmp_path, {"c": _entry(server, "/c.pth", data)}))
    _cache().mkdir(parents=True)
    (_cache() / "c.pth.part").write_bytes(data)
    assert fetch.download_one(reg.get("c"), progress=False).read_bytes() == data
    assert server.log == [("/c.pth", f"bytes={len(data) - 1}-")]


def test_server_down_is_a_one_line_error(tmp_path, capsys):
    with socket.socket() as s:  # a port with nobody listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    reg_path = _registry(tmp_path, {"d": {"filename": "d.pth", "part": "clip",
                                          "url": f"http://127.0.0.1:{port}/d.pth"}})
    rc = cli.main(["--registry", str(reg_path), "download", "d", "--retries", "1",
                 "--backoff", "0.01", "-q"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1
    assert err[-1].startswith("talk2sam-weights: error: d: download failed after 2 attempts")
    assert "partial data kept" not in err[-1]  # nothing was received
    assert "Traceback" not in "\n".join(err)


def test_http_404_is_not_retried(server, tmp_path):
    reg = W.load_registry(_registry(tmp_path, {"m": {
        "filename": "m.pth", "part": "clip", "url": server.url("/missing.pth")}}))
    with pytest.raises(W.WeightsError, match="HTTP 404"):
        fetch.download_one(reg.get("m"), retries=3, backoff=0.01, progress=False)
    assert len(server.log) == 1


def test_disk_full_while_writing(server, tmp_path):
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full")
    data = _blob(9)
    reg = W.load_registry(_registry(tmp_path, {"f": _entry(server, "/f.pth", data)}))
    _cache().mkdir(parents=True)
    (_cache() / "f.pth.part").symlink_to("/dev/full")  # every write raises ENOSPC
    with pytest.raises(W.WeightsError, match="disk full"):
        fetch.download_one(reg.get("f"), retries=2, backoff=0.01, progress=False)
    assert not (_cache() / "f.pth").exists()


def test_not_enough_space_is_caught_before_downloading(server, tmp_path):
    entry = _entry(server, "/big.pth", b"x")
    entry["size"] = 1 << 60  # an exabyte
    reg = W.load_registry(_registry(tmp_path, {"big": entry}))
    with pytest.raises(W.WeightsError, match="not enough disk space"):
        fetch.download_one(reg.get("big"), progress=False)
    assert server.log == []


def test_unknown_hash_is_recorded_then_enforced(server, tmp_path, capsys):
    data = _blob(10)
    reg_path = _registry(tmp_path, {"u": _entry(server, "/u.pth", data, sha=False)})
    reg = W.load_registry(reg_path)
    path = fetch.download_one(reg.get("u"), progress=False)
    record = json.loads((_cache() / fetch.HASHES_FILE).read_text())["u.pth"]
    assert record["sha256"] == hashlib.sha256(data).hexdigest() and record["size"] == len(data)
    assert fetch.verify(["u"], registry=reg)[0].status == "ok"
    path.write_bytes(data[:-1] + b"?")  # same size, different content
    assert fetch.verify(["u"], registry=reg)[0].status == "mismatch"
    assert cli.main(["--registry", str(reg_path), "verify", "u"]) == 1
    assert "mismatch" in capsys.readouterr().out


def test_git_blob_id_is_checked(server, tmp_path):
    data = _blob(11)
    blob_id = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
    reg = W.load_registry(_registry(tmp_path, {
        "g": _entry(server, "/g.pth", data, sha=False, git_blob_sha1=blob_id),
        "h": _entry(server, "/h.pth", data, sha=False, git_blob_sha1="0" * 40)}))
    assert fetch.download_one(reg.get("g"), progress=False).read_bytes() == data
    assert fetch.verify(["g"], registry=reg)[0].status == "ok"
    with pytest.raises(W.WeightsError, match="git blob id mismatch"):
        fetch.download_one(reg.get("h"), progress=False)
    assert not (_cache() / "h.pth").exists() and not (_cache() / "h.pth.part").exists()


def test_preset_download_and_lookup(server, tmp_path, capsys, monkeypatch):
    files = {f"{p}_file": _entry(server, f"/{p}.bin", _blob(20 + i, 4000))
             for i, p in enumerate(("sam", "dino", "clip", "proj"))}
    for (name, entry), part in zip(files.items(), W.PARTS):
        entry["part"] = part
    preset = {part: name for name, part in zip(files, W.PARTS)}
    reg_path = _registry(tmp_path, files, {"p": preset, "none": {}})
    monkeypatch.setenv(W.ENV_REGISTRY, str(reg_path))
    with pytest.raises(W.MissingWeightsError, match="download --preset p"):
        W.resolve_checkpoints("p")
    assert cli.main(["download", "--preset", "p", "-q"]) == 0
    found = W.resolve_checkpoints("p")
    assert set(found) == set(W.PARTS)
    assert all(found[part] == _cache() / files[preset[part]]["filename"] for part in W.PARTS)
    assert W.resolve_checkpoints("none") == {}
    assert cli.main(["list"]) == 0
    out = capsys.readouterr().out
    assert "sam_file" in out and "present" in out
    assert all(urlparse(u).hostname == "127.0.0.1" for u in (f["url"] for f in files.values()))
    assert all(p.startswith("/") for p, _ in server.log)


def test_resolve_paths_and_errors(tmp_path):
    own = tmp_path / "mine.pth"
    own.write_bytes(b"1")
    assert W.resolve(own) == own
    with pytest.raises(W.MissingWeightsError, match="talk2sam-weights download sam_hq_vit_b"):
        W.resolve("sam_hq_vit_b")
    with pytest.raises(W.MissingWeightsError, match="neither a file nor a registry name"):
        W.resolve(tmp_path / "absent.pth")
    with pytest.raises(W.WeightsError, match="unknown preset"):
        W.resolve_checkpoints("xl")


def test_builtin_registry_is_consistent():
    reg = W.load_registry()
    assert set(reg.presets) >= {"tiny", "b", "l", "h"} and reg.presets["tiny"] == {}
    for preset in ("t", "b", "l", "h"):
        assert set(reg.presets[preset]) == set(W.PARTS)
    for e in reg.files.values():
        assert urlparse(e.url).scheme == "https"
        assert e.sha256 is None or len(e.sha256) == 64
        assert e.sha256 or e.git_blob_sha1 or "recorded on first download" in e.source
    assert W.trained_weights_path("tiny").name == "tiny_synthetic.pt"


def test_bad_registry_file_is_reported(tmp_path):
    bad = tmp_path / "r.json"
    bad.write_text(json.dumps({"files": {"x": {"filename": "x", "url": "http://127.0.0.1/x",
                                               "part": "nope"}}}))
    with pytest.raises(W.WeightsError, match="part 'nope'"):
        W.load_registry(bad)


def test_presets_match_the_model_configs():
    """Each model preset with official weights maps to files of the same architecture."""
    config = pytest.importorskip("talk2sam_ros.model.config")
    reg = W.load_registry()
    dino = {"vit_base_patch14_reg4_dinov2": ("dinov2_vitb14_reg4", "talk2dino_vitb"),
            "vit_large_patch14_reg4_dinov2": ("dinov2_vitl14_reg4", "talk2dino_vitl")}
    for name, cfg in config.PRESETS.items():
        if cfg.sam.variant == "custom":
            assert reg.presets[name] == {}
            continue
        files = reg.presets[name]
        assert files["sam_hq"] == f"sam_hq_{cfg.sam.variant}"
        assert (files["dinov2"], files["projection"]) == dino[cfg.dino.timm_name]
        assert files["clip"] == "clip_vit_b16_openai" and "ViT-B-16" in cfg.clip.open_clip_name
