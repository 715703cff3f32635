"""Downloads and the verified cache, for real over HTTP on 127.0.0.1 (files served from the shared mirror)."""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import os
import shutil
import tarfile
import threading
import time
from pathlib import Path

import pytest

import scfm
from scfm._io import download as dl
from scfm.models import ModelEntry, RemoteFile

pytestmark = pytest.mark.network

SMALL = "data/her2st/spots/C3_selection.tsv"  # 6.7 kB
BIG = "resources/geneformer/v1/token_dictionary_gc30M.pkl"  # 788 kB


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class _Server:
    """A bounded local HTTP server: ``/shared/<path>`` from the mirror, ``/extra/<path>`` from a temp folder.

    ``mode``: ``"ok"``; ``"truncate"`` (announces the full Content-Length, sends a third, closes); ``"altered"``
    (serves the file with its first byte changed).
    """

    def __init__(self, shared: Path, extra: Path) -> None:
        self.shared, self.extra = shared, extra
        self.mode = "ok"
        self.hits: list[str] = []
        srv = self

        class Handler(http.server.BaseHTTPRequestHandler):
            timeout = 10

            def log_message(self, *args) -> None:  # keep the test output clean
                pass

            def do_GET(self) -> None:
                srv.hits.append(self.path)
                root, _, rel = self.path.lstrip("/").partition("/")
                base = {"shared": srv.shared, "extra": srv.extra}.get(root)
                path = (base / rel) if base is not None else None
                if path is None or not path.is_file():
                    self.send_error(404, "Not Found")
                    return
                data = path.read_bytes()
                if srv.mode == "altered":
                    data = bytes([data[0] ^ 0xFF]) + data[1:]
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if srv.mode == "truncate":
                    self.wfile.write(data[: len(data) // 3])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(data)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()
        self.running = True

    def url(self, rel: str, root: str = "shared") -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/{root}/{rel}"

    def stop(self) -> None:
        if self.running:
            self.httpd.shutdown()
            self.httpd.server_close()
            self.thread.join(timeout=5)
            self.running = False


@pytest.fixture
def server(shared: Path, tmp_path: Path):
    extra = tmp_path / "served"
    extra.mkdir()
    srv = _Server(shared, extra)
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def online(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Online, empty cache, no mirror, fast retries."""
    cache = tmp_path / "cache"
    monkeypatch.setattr(scfm.settings, "offline", False)
    monkeypatch.setattr(scfm.settings, "cachedir", cache)
    monkeypatch.setattr(scfm.settings, "mirror", None)
    monkeypatch.setattr(dl, "BACKOFF_S", 0.01)
    monkeypatch.setattr(dl, "TIMEOUT_S", 10.0)
    return cache


def _leftovers(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.name.endswith(dl._PART_SUFFIX)] if folder.exists() else []


def test_download_verifies_sha256_and_caches(server: _Server, online: Path, shared: Path) -> None:
    f = RemoteFile("tokens.pkl", url=server.url(BIG), sha256=_sha(shared / BIG), size=(shared / BIG).stat().st_size)
    folder = online / "t"
    p = dl.fetch(f, folder)
    assert p == folder / "tokens.pkl"
    assert p.read_bytes() == (shared / BIG).read_bytes()
    assert json.loads((folder / ".tokens.pkl.scfm.json").read_text())["sha256"] == f.sha256
    assert dl.recorded_sha256(p) == f.sha256
    assert _leftovers(folder) == []
    assert len(server.hits) == 1
    assert dl.fetch(f, folder) == p  # from the cache: no second request
    assert len(server.hits) == 1


def test_checksum_mismatch_leaves_nothing(server: _Server, online: Path, shared: Path) -> None:
    wrong = "0" * 64
    f = RemoteFile("spots.tsv", url=server.url(SMALL), sha256=wrong)
    folder = online / "t"
    with pytest.raises(dl.ChecksumError) as e:
        dl.fetch(f, folder)
    msg = str(e.value)
    assert wrong in msg and _sha(shared / SMALL) in msg  # expected vs got
    assert not (folder / "spots.tsv").exists()
    assert [p for p in folder.iterdir()] == []  # no partial file, no sidecar
    assert len(server.hits) == 1  # a checksum error is not retried


def test_interrupted_transfer_then_retry(server: _Server, online: Path, shared: Path) -> None:
    f = RemoteFile("tokens.pkl", url=server.url(BIG), sha256=_sha(shared / BIG))
    folder = online / "t"
    server.mode = "truncate"
    with pytest.raises(dl.DownloadError) as e:
        dl.fetch(f, folder)
    assert not isinstance(e.value, dl.ChecksumError)
    assert "after 3 attempts" in str(e.value)
    assert len(server.hits) == dl.RETRIES
    assert not (folder / "tokens.pkl").exists()
    assert _leftovers(folder) == []
    server.mode = "ok"
    p = dl.fetch(f, folder)
    assert _sha(p) == f.sha256


def test_corrupt_cached_file_is_replaced(server: _Server, online: Path, shared: Path) -> None:
    f = RemoteFile("spots.tsv", url=server.url(SMALL), sha256=_sha(shared / SMALL))
    p = dl.fetch(f, online / "t")
    data = bytearray(p.read_bytes())
    data[10] ^= 0x01  # one flipped bit, same size
    p.write_bytes(bytes(data))
    assert dl.fetch(f, online / "t") == p
    assert _sha(p) == f.sha256
    assert len(server.hits) == 2


def test_offline_error_names_every_missing_file(server: _Server, online: Path, monkeypatch) -> None:
    monkeypatch.setattr(scfm.settings, "offline", True)
    entry = ModelEntry(
        name="test-offline-model",
        family="none",
        version="0",
        checkpoint=(RemoteFile("weights.bin", url=server.url("nowhere/weights.bin"), mirror_path="models/x/w.bin"),),
        resources=(RemoteFile("vocab.json", hf_repo="someone/model", hf_filename="sub/vocab.json"),),
    )
    with pytest.raises(dl.OfflineError) as e:
        dl.fetch_entry(entry)
    msg = str(e.value)
    for needle in (
        "weights.bin",
        server.url("nowhere/weights.bin"),
        "models/x/w.bin",
        "vocab.json",
        "https://huggingface.co/someone/model/resolve/main/sub/vocab.json",
        "scfm.models.download('test-offline-model')",
        "SCFM_MIRROR",
        "SCFM_HOME",
    ):
        assert needle in msg
    assert server.hits == []


def test_prepopulated_cache_used_without_network(server: _Server, online: Path, shared: Path, monkeypatch) -> None:
    f = RemoteFile("spots.tsv", url=server.url(SMALL), sha256=_sha(shared / SMALL))
    p = dl.fetch(f, online / "t")
    server.stop()  # no network from here on
    assert dl.fetch(f, online / "t") == p
    monkeypatch.setattr(scfm.settings, "offline", True)
    assert dl.fetch(f, online / "t") == p
    # a file that is not cached really needs the network: the stopped server gives a clear error
    monkeypatch.setattr(scfm.settings, "offline", False)
    with pytest.raises(dl.DownloadError, match="could not download"):
        dl.fetch(RemoteFile("other.tsv", url=server.url(SMALL)), online / "t")


def test_unknown_sha256_recorded_then_enforced(server: _Server, online: Path, shared: Path) -> None:
    f = RemoteFile("spots.tsv", url=server.url(SMALL))  # no published checksum
    folder = online / "t"
    p = dl.fetch(f, folder)
    truth = _sha(shared / SMALL)
    rec = json.loads((folder / ".spots.tsv.scfm.json").read_text())
    assert rec["sha256"] == truth and rec["sha256_from"] == "first fetch"
    # tampering with the cached copy is detected against the recorded hash; the file is fetched again
    p.write_bytes(b"tampered" + p.read_bytes()[8:])
    assert _sha(dl.fetch(f, folder)) == truth
    assert len(server.hits) == 2
    # the upstream file changing is detected too: the new download does not match the recorded hash
    p.unlink()
    server.mode = "altered"
    with pytest.raises(dl.ChecksumError, match=truth):
        dl.fetch(f, folder)
    assert not p.exists()
    assert json.loads((folder / ".spots.tsv.scfm.json").read_text())["sha256"] == truth


def test_mirror_used_instead_of_download(server: _Server, online: Path, shared: Path, monkeypatch) -> None:
    monkeypatch.setattr(scfm.settings, "mirror", shared)
    f = RemoteFile("spots.tsv", url=server.url(SMALL), sha256=_sha(shared / SMALL), mirror_path=SMALL)
    p = dl.fetch(f)  # default folder: the mirror layout inside the cache
    assert p == online / SMALL.replace("C3_selection.tsv", "spots.tsv")
    assert _sha(p) == f.sha256
    assert server.hits == []
    # a mirror copy that does not match is not used: the file is downloaded instead
    bad_mirror = online.parent / "bad_mirror"
    (bad_mirror / Path(SMALL).parent).mkdir(parents=True)
    (bad_mirror / SMALL).write_bytes(b"not the file")
    monkeypatch.setattr(scfm.settings, "mirror", bad_mirror)
    q = dl.fetch(f, online / "other")
    assert _sha(q) == f.sha256
    assert len(server.hits) == 1


def test_stale_temp_files_are_ignored_and_cleaned(server: _Server, online: Path, shared: Path) -> None:
    folder = online / "t"
    folder.mkdir(parents=True)
    stale = folder / f".spots.tsv.crashed{dl._PART_SUFFIX}"
    stale.write_bytes(b"half a file")
    old = time.time() - 2 * dl.STALE_PART_S
    os.utime(stale, (old, old))
    fresh = folder / f".spots.tsv.running{dl._PART_SUFFIX}"
    fresh.write_bytes(b"another process may be writing this")
    f = RemoteFile("spots.tsv", url=server.url(SMALL), sha256=_sha(shared / SMALL))
    p = dl.fetch(f, folder)
    assert _sha(p) == f.sha256
    assert not stale.exists()
    assert fresh.exists()  # too recent to be called left over


def test_http_404_is_clear_and_not_retried(server: _Server, online: Path) -> None:
    with pytest.raises(dl.DownloadError, match="HTTP error 404"):
        dl.fetch(RemoteFile("x.bin", url=server.url("missing.bin")), online / "t")
    assert len(server.hits) == 1


def test_no_source_is_a_manual_download(online: Path) -> None:
    with pytest.raises(dl.ManualDownloadError, match="SCFM_MIRROR"):
        dl.fetch(RemoteFile("w.bin", mirror_path="models/x/w.bin"), online / "t")


def _tar(path: Path, members: dict[str, bytes], *, link: str | None = None) -> None:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        if link is not None:
            info = tarfile.TarInfo("protein_embeddings/evil")
            info.type = tarfile.SYMTYPE
            info.linkname = link
            tar.addfile(info)


def test_entry_folders_official_layout_with_archive(server: _Server, online: Path, shared: Path) -> None:
    _tar(server.extra / "pe.tar.gz", {"protein_embeddings/a.pt": b"A", "protein_embeddings/b.pt": b"BB"})
    entry = ModelEntry(
        name="test-layout",
        family="none",
        version="0",
        checkpoint=(RemoteFile("model.pkl", url=server.url(BIG), sha256=_sha(shared / BIG)),),
        resources=(
            RemoteFile("protein_embeddings.tar.gz", url=server.url("pe.tar.gz", root="extra")),
            RemoteFile("sub/spots.tsv", url=server.url(SMALL), sha256=_sha(shared / SMALL)),
        ),
    )
    ckpt, res = dl.fetch_entry_folders(entry)
    assert ckpt == online / "models" / "test-layout" / "checkpoint"
    assert (ckpt / "model.pkl").is_file()
    assert (res / "sub" / "spots.tsv").is_file()
    assert (res / "protein_embeddings" / "b.pt").read_bytes() == b"BB"
    paths = dl.fetch_entry(entry)
    assert set(paths) == {"model.pkl", "protein_embeddings.tar.gz", "sub/spots.tsv"}


def test_archive_with_link_is_refused(server: _Server, online: Path) -> None:
    _tar(server.extra / "evil.tar.gz", {"protein_embeddings/a.pt": b"A"}, link="/etc/passwd")
    entry = ModelEntry(
        name="test-evil",
        family="none",
        version="0",
        resources=(RemoteFile("evil.tar.gz", url=server.url("evil.tar.gz", root="extra")),),
    )
    with pytest.raises(dl.DownloadError, match="refusing to extract"):
        dl.fetch_entry_folders(entry)
    assert not (online / "models" / "test-evil" / "resources" / "protein_embeddings").exists()


def _fake_hub(content: bytes, commit: str = "0123abcd" * 5):
    """A stand-in for hf_hub_download with the hub cache layout (snapshot symlink -> blob)."""

    def fake(*, repo_id, filename, revision=None, cache_dir=None):
        root = Path(cache_dir) / f"models--{repo_id.replace('/', '--')}"
        blob = root / "blobs" / hashlib.sha256(content).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(content)
        snap = root / "snapshots" / commit / filename
        snap.parent.mkdir(parents=True, exist_ok=True)
        if not snap.exists():
            snap.symlink_to(blob)
        return str(snap)

    return fake


def test_hub_file_verified_and_revision_recorded(online: Path, monkeypatch) -> None:
    import huggingface_hub

    content = b"weights" * 100
    monkeypatch.setattr(dl, "_check_hub_reachable", lambda what: None)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", _fake_hub(content))
    f = RemoteFile("w.bin", hf_repo="org/model", hf_filename="sub/w.bin")
    p = dl.fetch(f, online / "t")
    assert p.read_bytes() == content
    rec = json.loads((online / "t" / ".w.bin.scfm.json").read_text())
    assert rec["revision"] == "0123abcd" * 5 and rec["sha256"] == hashlib.sha256(content).hexdigest()
    bad = RemoteFile("v.bin", hf_repo="org/model", sha256="f" * 64)
    with pytest.raises(dl.ChecksumError, match="f" * 64):
        dl.fetch(bad, online / "t")
    assert not (online / "t" / "v.bin").exists()


def test_gated_repo_error_says_what_to_do(online: Path, monkeypatch) -> None:
    import huggingface_hub
    from huggingface_hub import errors

    url = "https://huggingface.co/MahmoodLab/UNI/resolve/main/pytorch_model.bin"
    try:
        import httpx

        response = httpx.Response(403, request=httpx.Request("GET", url))
    except ImportError:  # huggingface_hub < 1.0 uses requests
        import requests

        response = requests.Response()
        response.status_code, response.url = 403, url

    def gated(**kw):
        raise errors.GatedRepoError("403 Client Error: access to model MahmoodLab/UNI is restricted", response=response)

    monkeypatch.setattr(dl, "_check_hub_reachable", lambda what: None)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", gated)
    with pytest.raises(dl.GatedRepoError) as e:
        dl.fetch(RemoteFile("pytorch_model.bin", hf_repo="MahmoodLab/UNI"), online / "t")
    msg = str(e.value)
    assert "huggingface-cli login" in msg and "https://huggingface.co/MahmoodLab/UNI" in msg and "accept" in msg


def test_cache_can_move_to_another_machine(server: _Server, online: Path, shared: Path, monkeypatch) -> None:
    """download() on one machine, copy the cache, use it offline elsewhere (no server)."""
    f = RemoteFile("spots.tsv", url=server.url(SMALL), mirror_path=SMALL)  # sha256 recorded at first download
    dl.fetch(f)
    server.stop()
    moved = online.parent / "moved_cache"
    shutil.copytree(online, moved)
    monkeypatch.setattr(scfm.settings, "cachedir", moved)
    monkeypatch.setattr(scfm.settings, "offline", True)
    p = dl.fetch(f)
    assert p.is_relative_to(moved) and _sha(p) == _sha(shared / SMALL)


def test_unreachable_hub_fails_fast_with_advice(online: Path, monkeypatch) -> None:
    import socket
    import time

    from huggingface_hub import constants

    with socket.socket() as sock:  # a port on loopback that nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.setattr(dl, "_HUB_PROBE", {})
    t0 = time.perf_counter()
    with pytest.raises(dl.DownloadError, match="cannot reach the Hugging Face hub") as e:
        dl.fetch(RemoteFile("config.json", hf_repo="org/model"), online / "t")
    assert time.perf_counter() - t0 < 10
    assert "SCFM_MIRROR" in str(e.value) or "cache" in str(e.value)
    assert not (online / "t" / "config.json").exists()


def test_hub_connection_error_is_not_reported_as_missing_file(online: Path, monkeypatch) -> None:
    import huggingface_hub
    from huggingface_hub import errors

    def no_network(**kw):
        raise errors.LocalEntryNotFoundError("connection error and the file is not in the local cache")

    monkeypatch.setattr(dl, "_check_hub_reachable", lambda what: None)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", no_network)
    with pytest.raises(dl.DownloadError, match="could not reach the Hugging Face hub"):
        dl.fetch(RemoteFile("config.json", hf_repo="org/model"), online / "t")
