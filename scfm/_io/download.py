"""Verified downloads into the scfm cache.

Every file scfm reads from the outside world (weights, dictionaries, data sets) is described by a
:class:`~scfm.models.RemoteFile` and resolved by :func:`fetch` in this order:

1. **Cache** (``scfm.settings.cachedir``): used when its full sha256 matches the registry's (or, when the registry
   cannot know it, the hash recorded at the first download). A file that does not match is discarded and fetched
   again.
2. **Mirror** (``scfm.settings.mirror`` / ``$SCFM_MIRROR``, laid out like the public sources): the file at
   ``mirror / file.mirror_path`` is verified the same way, then hard-linked (or copied) into the cache.
3. **Download**, unless ``scfm.settings.offline``: Hugging Face files through :func:`huggingface_hub.hf_hub_download`
   (its own cache lives in ``<cachedir>/huggingface``), direct URLs with :mod:`urllib`. Direct URLs do not go
   through pooch because the cache guarantees below need the open file handle (fsync before the rename) and a
   strict ``Content-Length`` check, and because the error messages must say what to do next.

Guarantees: a download goes to a temporary file in the destination folder, is fsynced, its sha256 (computed
while streaming) and size are checked, and only then is it renamed into place with :func:`os.replace`. The cache
therefore never holds a half-written file, also after a crash; leftover temporary files are never read and are
removed on a later call. When the sha256 is unknown, the hash seen first is written to a JSON sidecar
(``.<name>.scfm.json`` beside the file) and every later use is checked against it.

The cache mirrors the layout of the sources (``<cachedir>/data/...``, ``<cachedir>/resources/...``;
``<cachedir>/models/<release>/{checkpoint,resources}/`` for model releases), so a cache copied to another machine
works as a cache there (``SCFM_HOME``) and as a mirror (``SCFM_MIRROR``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tarfile
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from scfm import logging as logg
from scfm._settings import settings

if TYPE_CHECKING:
    from scfm.models._registry import ModelEntry, RemoteFile

__all__ = [
    "DownloadError",
    "ChecksumError",
    "OfflineError",
    "GatedRepoError",
    "ManualDownloadError",
    "fetch",
    "fetch_entry",
    "fetch_entry_folders",
    "default_folder",
    "recorded_sha256",
    "source_url",
]

#: Attempts per download (network errors and truncated transfers are retried; HTTP 4xx and checksum errors not).
RETRIES = 3
#: Seconds to wait before the n-th retry (multiplied by n).
BACKOFF_S = 1.0
#: Socket timeout of a direct download, in seconds.
TIMEOUT_S = 60.0
#: Temporary files older than this (seconds since their last write) are considered left over from a crash.
STALE_PART_S = 600.0

_PART_SUFFIX = ".scfm-part"
_CHUNK = 1 << 20


class DownloadError(OSError):
    """A file could not be fetched (network, HTTP, hub access)."""


class ChecksumError(DownloadError):
    """A file's sha256 (or size) differs from the expected one."""


class OfflineError(DownloadError):
    """Offline mode, and the file is neither in the cache nor in the mirror."""


class GatedRepoError(DownloadError):
    """The Hugging Face repository is gated and this account has no access (yet)."""


class ManualDownloadError(DownloadError):
    """The file has no automatic download source; it must be obtained by hand."""


# --------------------------------------------------------------------------------------------------------------
# small helpers


def _sidecar(path: Path) -> Path:
    return path.with_name(f".{path.name}.scfm.json")


def _read_sidecar(path: Path) -> dict[str, Any]:
    sc = _sidecar(path)
    try:
        return json.loads(sc.read_text())
    except (OSError, ValueError):
        return {}


def _write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=_PART_SUFFIX)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError, AttributeError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


# Hashes verified in this process, keyed by (path, size, mtime_ns, inode): a file loaded twice in one session is
# hashed once. A change of the file (size, mtime or inode) invalidates the entry.
_VERIFIED: dict[tuple[str, int, int, int], str] = {}


def _stat_key(path: Path) -> tuple[str, int, int, int]:
    st = os.stat(path)
    return str(path.resolve()), st.st_size, st.st_mtime_ns, st.st_ino


def _sha256(path: Path) -> str:
    key = _stat_key(path)
    if key in _VERIFIED:
        return _VERIFIED[key]
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_CHUNK):
            h.update(block)
    digest = h.hexdigest()
    _VERIFIED[key] = digest
    return digest


def recorded_sha256(path: str | os.PathLike) -> str | None:
    """Return the sha256 of a file fetched by scfm, as verified or recorded (``None`` if scfm did not fetch it).

    Used for provenance: it avoids hashing a large checkpoint a second time.
    """
    path = Path(path)
    if not path.is_file():
        return None
    key = _stat_key(path)
    if key in _VERIFIED:
        return _VERIFIED[key]
    rec = _read_sidecar(path).get("sha256")
    return rec if isinstance(rec, str) else None


def _clean_stale_parts(dest: Path) -> None:
    """Remove temporary files of ``dest`` left over by an interrupted run (never read, only removed)."""
    if not dest.parent.is_dir():
        return
    now = time.time()
    for p in dest.parent.glob(f".{dest.name}.*{_PART_SUFFIX}"):
        with contextlib.suppress(OSError):
            if now - p.stat().st_mtime > STALE_PART_S:
                p.unlink()


def _describe(file: RemoteFile) -> str:
    return f"{file.filename!r} ({file.source})"


def _how_to_fetch_elsewhere(names: list[str] | None = None) -> str:
    what = f"scfm.models.download({names[0]!r})" if names else "the same scfm call"
    return (
        f"To fetch on a machine with internet access: run `{what}` there, copy its cache folder "
        "(scfm.settings.cachedir, `$SCFM_HOME`) to this machine and point `SCFM_HOME` at the copy; or put the files "
        "into a folder laid out like the sources, at the mirror paths listed, and set `SCFM_MIRROR` to it. "
        "Or switch offline mode off (`scfm.settings.offline = False`, unset `SCFM_OFFLINE`)."
    )


def source_url(file: RemoteFile) -> str:
    """Return the download URL of a file (for Hugging Face files, the hub's ``resolve`` URL)."""
    if file.hf_repo:
        name = urllib.parse.quote(file.hf_filename or file.filename)
        return f"https://huggingface.co/{file.hf_repo}/resolve/{file.revision or 'main'}/{name}"
    return file.url or "(no download source)"


def _where(file: RemoteFile) -> str:
    mirror = f"; mirror path: {file.mirror_path}" if file.mirror_path else ""
    return f"{source_url(file)}{mirror}"


def default_folder(file: RemoteFile) -> Path:
    """Cache folder of a file fetched on its own: the layout of the mirror (``<cachedir>/<mirror_path parent>``)."""
    if file.mirror_path:
        rel = Path(file.mirror_path).parent
        if rel.is_absolute() or ".." in rel.parts:
            raise ValueError(f"mirror_path must be a relative path inside the mirror, got {file.mirror_path!r}.")
        return settings.cachedir / rel
    if file.hf_repo:
        return settings.cachedir / "files" / file.hf_repo.replace("/", "--")
    if file.url:
        host = urllib.parse.urlsplit(file.url).netloc or "local"
        return settings.cachedir / "files" / host
    return settings.cachedir / "files" / "local"


def _expected(file: RemoteFile, dest: Path) -> tuple[str | None, str]:
    """Return the expected sha256 of ``dest`` and where it comes from (``"registry"``, ``"recorded"`` or ``"none"``)."""
    if file.sha256:
        return file.sha256.lower(), "registry"
    rec = _read_sidecar(dest).get("sha256")
    if isinstance(rec, str) and rec:
        return rec.lower(), "recorded"
    return None, "none"


def _check_cached(file: RemoteFile, dest: Path) -> bool:
    """Whether ``dest`` is a verified copy of ``file``; a mismatching copy is removed."""
    if not dest.is_file():
        return False
    expected, origin = _expected(file, dest)
    got = _sha256(dest)
    if expected is None:
        # In the cache without a record (e.g. placed there by hand): record what is there from now on.
        _write_record(dest, file, got, size=dest.stat().st_size, origin="found in cache")
        logg.info(f"recorded sha256 {got} of {dest} (no checksum is published for {file.source})")
        return True
    if got == expected:
        return True
    size_hint = ""
    if file.size is not None and dest.stat().st_size != file.size:
        size_hint = f", {dest.stat().st_size} bytes instead of {file.size}"
    logg.warning(
        f"cached {dest} is corrupt or was changed (sha256 {got}, expected {expected} from the {origin} "
        f"checksum{size_hint}); discarding it and fetching it again"
    )
    dest.unlink()
    return False


def _place(src: Path, dest: Path, *, link: bool) -> None:
    """Put ``src`` at ``dest`` atomically: hard link (same file system) or copy to a temp file, fsync, rename."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=_PART_SUFFIX)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        linked = False
        if link:
            try:
                tmp_path.unlink()
                os.link(src, tmp_path)
                linked = True
            except OSError:
                linked = False
        if not linked:
            with open(src, "rb") as fi, open(tmp_path, "wb") as fo:
                shutil.copyfileobj(fi, fo, _CHUNK)
                fo.flush()
                os.fsync(fo.fileno())
        os.replace(tmp_path, dest)
        _fsync_dir(dest.parent)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp_path.unlink()
        raise


# --------------------------------------------------------------------------------------------------------------
# sources


def _from_mirror(file: RemoteFile, dest: Path, notes: list[str]) -> bool:
    if settings.mirror is None or not file.mirror_path:
        return False
    src = settings.mirror / file.mirror_path
    if not src.is_file():
        notes.append(f"not in the mirror ({src})")
        return False
    expected, origin = _expected(file, dest)
    got = _sha256(src)
    if expected is not None and got != expected:
        msg = f"the mirror's copy {src} has sha256 {got}, expected {expected} ({origin}); not used"
        logg.warning(msg)
        notes.append(msg)
        return False
    _place(src, dest, link=True)
    _VERIFIED[_stat_key(dest)] = got
    _write_record(dest, file, got, size=dest.stat().st_size, origin=f"mirror {src}")
    logg.debug(f"{dest.name}: from the mirror {src}")
    return True


def _download_url(file: RemoteFile, dest: Path) -> None:
    """Download a direct URL to ``dest`` (temp file, streaming sha256, size check, fsync, rename)."""
    import http.client

    from tqdm.auto import tqdm

    from scfm import __version__

    assert file.url is not None
    expected, origin = _expected(file, dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    last_err: BaseException | None = None
    for attempt in range(1, RETRIES + 1):
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=_PART_SUFFIX)
        tmp_path = Path(tmp)
        try:
            req = urllib.request.Request(file.url, headers={"User-Agent": f"scfm/{__version__} (python-urllib)"})
            h = hashlib.sha256()
            n = 0
            with os.fdopen(fd, "wb") as out:
                with urllib.request.urlopen(req, timeout=TIMEOUT_S) as resp:
                    length = resp.headers.get("Content-Length")
                    total = int(length) if length and length.isdigit() else None
                    with tqdm(
                        total=total,
                        unit="B",
                        unit_scale=True,
                        unit_divisor=1024,
                        desc=f"downloading {dest.name}",
                        disable=settings.verbosity < 2,
                        leave=False,
                    ) as bar:
                        while block := resp.read(_CHUNK):
                            out.write(block)
                            h.update(block)
                            n += len(block)
                            bar.update(len(block))
                out.flush()
                os.fsync(out.fileno())
            if total is not None and n != total:
                raise DownloadError(f"the transfer was interrupted: received {n} of {total} bytes (Content-Length)")
            if file.size is not None and n != file.size:
                raise ChecksumError(
                    f"size mismatch for {file.url}: the registry says {file.size} bytes, the download has {n} bytes. "
                    "The download was discarded and nothing was added to the cache; the upstream file may have "
                    "changed."
                )
            got = h.hexdigest()
            if expected is not None and got != expected:
                raise ChecksumError(
                    f"checksum mismatch for {file.url}: expected sha256 {expected} ({origin} checksum), got {got}. "
                    "The download was discarded and nothing was added to the cache. The upstream file may have "
                    "changed or the transfer was altered; retry, or report it if it persists."
                )
            _write_record(dest, file, got, size=n, origin=f"download {file.url}")
            os.replace(tmp_path, dest)
            _fsync_dir(dest.parent)
            _VERIFIED[_stat_key(dest)] = got
            if expected is None:
                logg.info(f"recorded sha256 {got} of {dest.name} at its first download (none is published)")
            return
        except urllib.error.HTTPError as e:
            hint = ""
            if e.code in (401, 403):
                hint = " The server refused access; the file may need a login or may have moved."
            elif e.code == 404:
                hint = " The file is not at this address (any more); please report it to scfm."
            err = DownloadError(f"HTTP error {e.code} ({e.reason}) while downloading {_describe(file)}.{hint}")
            if not (500 <= e.code < 600) or attempt == RETRIES:
                raise err from e
            last_err = err
        except ChecksumError:
            raise
        except (OSError, http.client.HTTPException, DownloadError) as e:  # network errors, truncated transfers
            last_err = e
        finally:
            with contextlib.suppress(OSError):
                tmp_path.unlink()
        if attempt < RETRIES:
            logg.warning(f"download of {dest.name} failed ({last_err}); retrying ({attempt}/{RETRIES - 1})")
            time.sleep(BACKOFF_S * attempt)
    raise DownloadError(
        f"could not download {_describe(file)} after {RETRIES} attempts: {last_err}. Nothing was added to the "
        "cache; check the network connection and call again."
    ) from last_err


def _write_record(
    dest: Path, file: RemoteFile, sha: str, *, size: int | None, origin: str, revision: str | None = None
) -> None:
    """Write the sidecar of a verified file (before it is renamed into place: a crash leaves no unrecorded file)."""
    data: dict[str, Any] = {
        "sha256": sha,
        "size": size,
        "source": file.source,
        "origin": origin,
        "sha256_from": "registry" if file.sha256 else "first fetch",
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    if revision:
        data["revision"] = revision
    _write_json_atomic(_sidecar(dest), data)


_HUB_PROBE: dict[str, tuple[float, str | None]] = {}


def _check_hub_reachable(what: str) -> None:
    """Fail fast (one TCP connect, 5 s) when the hub's host cannot be reached.

    Without this, ``hf_hub_download`` retries with back-off for ~30 s per file before it gives up, which makes an
    offline machine look hung. The result is remembered for a minute.
    """
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants

    url = urlparse(constants.ENDPOINT)
    host, port = url.hostname or "huggingface.co", url.port or (443 if url.scheme == "https" else 80)
    key = f"{host}:{port}"
    now = time.monotonic()
    if key not in _HUB_PROBE or now - _HUB_PROBE[key][0] > 60:
        try:
            socket.create_connection((host, port), timeout=5).close()
            _HUB_PROBE[key] = (now, None)
        except OSError as e:
            _HUB_PROBE[key] = (now, str(e))
    err = _HUB_PROBE[key][1]
    if err is not None:
        raise DownloadError(
            f"cannot reach the Hugging Face hub ({key}: {err}) to download {what}. Check the network connection, "
            "set HF_ENDPOINT for a hub mirror, or fetch the files on another machine: "
            + _how_to_fetch_elsewhere()
        )


def _download_hf(file: RemoteFile, dest: Path) -> None:
    """Fetch a Hugging Face file into scfm's hub cache, verify it, and link it into ``dest``."""
    try:
        from huggingface_hub import errors as hf_errors
        from huggingface_hub import hf_hub_download
    except ImportError as e:  # pragma: no cover - a core dependency
        raise ImportError("Downloading from the Hugging Face hub needs `pip install huggingface_hub`.") from e

    assert file.hf_repo is not None
    filename = file.hf_filename or file.filename
    page = f"https://huggingface.co/{file.hf_repo}"
    _check_hub_reachable(f"{file.hf_repo}/{filename}")
    try:
        local = hf_hub_download(
            repo_id=file.hf_repo,
            filename=filename,
            revision=file.revision,
            cache_dir=settings.cachedir / "huggingface",
        )
    except hf_errors.GatedRepoError as e:
        raise GatedRepoError(
            f"{file.hf_repo} is a gated repository and this machine has no access to it. Open {page}, log in, "
            "accept the licence / terms of use (some repositories also need the authors' approval), then run "
            "`huggingface-cli login` (or set the HF_TOKEN environment variable) here and call again."
        ) from e
    except hf_errors.RepositoryNotFoundError as e:
        raise DownloadError(
            f"the Hugging Face repository {file.hf_repo} was not found (or is private): {page}. If it is private or "
            "gated, log in with `huggingface-cli login` after you were granted access."
        ) from e
    except hf_errors.RevisionNotFoundError as e:
        raise DownloadError(f"revision {file.revision!r} of {file.hf_repo} does not exist ({page}).") from e
    except hf_errors.LocalEntryNotFoundError as e:
        raise DownloadError(
            f"could not reach the Hugging Face hub for {file.hf_repo}/{filename} and it is not in the hub cache: "
            f"{e}. Check the network connection (or set HF_ENDPOINT for a hub mirror)."
        ) from e
    except hf_errors.EntryNotFoundError as e:
        raise DownloadError(f"{filename!r} is not in {file.hf_repo}@{file.revision or 'main'} ({page}/tree).") from e
    except hf_errors.HfHubHTTPError as e:
        raise DownloadError(f"HTTP error from the Hugging Face hub for {file.hf_repo}/{filename}: {e}") from e

    local_path = Path(local)
    blob = local_path.resolve()
    revision = None
    parts = local_path.parts
    if "snapshots" in parts:
        i = parts.index("snapshots")
        if i + 1 < len(parts):
            revision = parts[i + 1]
    expected, origin = _expected(file, dest)
    got = _sha256(blob)
    if expected is not None and got != expected:
        for p in (local_path, blob):  # do not let the hub cache serve the bad copy again
            with contextlib.suppress(OSError):
                p.unlink()
        raise ChecksumError(
            f"checksum mismatch for hf://{file.hf_repo}/{filename}@{revision}: expected sha256 {expected} "
            f"({origin} checksum), got {got}. The download was discarded. The file was probably changed upstream; "
            "pin `revision=` to the commit the checksum belongs to, or report it to scfm."
        )
    if file.size is not None and blob.stat().st_size != file.size:
        raise ChecksumError(
            f"hf://{file.hf_repo}/{filename}: {blob.stat().st_size} bytes, expected {file.size} bytes; discarded."
        )
    _write_record(dest, file, got, size=blob.stat().st_size, origin=f"hub {file.hf_repo}", revision=revision)
    _place(blob, dest, link=True)
    _VERIFIED[_stat_key(dest)] = got
    if expected is None:
        logg.info(f"recorded sha256 {got} of {dest.name} (revision {revision}) at its first download")


# --------------------------------------------------------------------------------------------------------------
# public API


def fetch(file: RemoteFile, folder: str | os.PathLike | None = None, *, force: bool = False) -> Path:
    """Local, verified path of ``file``: from the cache, the mirror or a download (in that order).

    Parameters
    ----------
    file
        The file (a :class:`~scfm.models.RemoteFile`).
    folder
        Folder it is stored in (it lands at ``folder / file.filename``). Default: :func:`default_folder`, i.e. the
        mirror layout inside ``scfm.settings.cachedir``.
    force
        Discard a cached copy and fetch the file again. A hash recorded at the first download (files without a
        published sha256) is kept and still enforced; delete the ``.<name>.scfm.json`` sidecar to accept a file
        that changed upstream.

    Returns
    -------
    Path of the verified file in the cache.

    Raises
    ------
    OfflineError
        Offline mode and the file is in neither the cache nor the mirror (the message says how to get it).
    ChecksumError
        The downloaded file's sha256 differs from the expected one (expected and actual hash in the message).
    GatedRepoError
        A gated Hugging Face repository without access.
    ManualDownloadError
        The file has no download source (the message names where to get it).
    DownloadError
        Any other network or HTTP failure.
    """
    folder = Path(folder) if folder is not None else default_folder(file)
    rel = Path(file.filename)
    if rel.is_absolute() or ".." in rel.parts:
        raise ValueError(f"RemoteFile.filename must be a relative path, got {file.filename!r}.")
    dest = folder / rel
    _clean_stale_parts(dest)
    if force and dest.exists():
        dest.unlink()
    if _check_cached(file, dest):
        return dest
    notes: list[str] = []
    dest.parent.mkdir(parents=True, exist_ok=True)
    if _from_mirror(file, dest, notes):
        return dest
    if settings.offline:
        where = f" ({'; '.join(notes)})" if notes else ""
        raise OfflineError(
            f"scfm is offline (scfm.settings.offline / SCFM_OFFLINE) and {file.filename!r} is not in the cache "
            f"({dest}) or the mirror{where}. Source: {_where(file)}. " + _how_to_fetch_elsewhere()
        )
    if file.hf_repo:
        _download_hf(file, dest)
    elif file.url:
        _download_url(file, dest)
    else:
        mirror_hint = f" or place it in a mirror at <SCFM_MIRROR>/{file.mirror_path}" if file.mirror_path else ""
        raise ManualDownloadError(
            f"{file.filename!r} has no automatic download source. Obtain it by hand and put it at {dest}{mirror_hint}."
        )
    return dest


def _entry_root(entry: ModelEntry) -> Path:
    return settings.cachedir / "models" / entry.name


_PARTS = ("checkpoint", "resources")


def _iter_entry_files(entry: ModelEntry, parts: tuple[str, ...] = _PARTS) -> Iterator[tuple[str, RemoteFile]]:
    if "checkpoint" in parts:
        for f in entry.checkpoint:
            yield "checkpoint", f
    if "resources" in parts:
        for f in entry.resources:
            yield "resources", f


def fetch_entry(entry: ModelEntry, *, force: bool = False, parts: tuple[str, ...] = _PARTS) -> dict[str, Path]:
    """Fetch every file of a release into ``<cachedir>/models/<name>/{checkpoint,resources}/``.

    In offline mode, one error names every file that is missing, with its source.

    Parameters
    ----------
    entry
        The release.
    force
        Download again even when a verified copy is cached.
    parts
        Which of the release's file groups to fetch (``"checkpoint"``, ``"resources"``): a caller that has the
        checkpoint locally fetches only the resources.

    Returns
    -------
    Local path of each file, keyed by its name in the model folder (resource files whose name clashes with a
    checkpoint file are keyed ``resources/<name>``).
    """
    root = _entry_root(entry)
    paths: dict[str, Path] = {}
    missing: list[str] = []
    manual: list[str] = []
    for kind, f in _iter_entry_files(entry, parts):
        try:
            p = fetch(f, root / kind, force=force)
        except OfflineError:
            missing.append(f"  - {kind}/{f.filename}: {_where(f)}")
            continue
        except ManualDownloadError:
            manual.append(f"  - {kind}/{f.filename} -> {root / kind / f.filename}")
            continue
        except GatedRepoError as e:
            raise GatedRepoError(f"{entry.name}: {e}") from e
        key = f.filename if f.filename not in paths else f"{kind}/{f.filename}"
        paths[key] = p
    if missing:
        raise OfflineError(
            f"scfm is offline and {len(missing)} file(s) of {entry.name!r} are neither in the cache ({root}) nor in "
            "the mirror:\n" + "\n".join(missing) + "\n" + _how_to_fetch_elsewhere([entry.name])
        )
    if manual:
        raise ManualDownloadError(
            f"{len(manual)} file(s) of {entry.name!r} cannot be downloaded automatically. Get them from "
            f"{entry.source or 'the authors'} and place them here (the official layout):\n"
            + "\n".join(manual)
            + "\nor pass `checkpoint=` / `resources=` folders to scfm.models.load."
        )
    return paths


_ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar")


def _is_archive(name: str) -> bool:
    return name.endswith(_ARCHIVE_SUFFIXES)


def _safe_extract(archive: Path, folder: Path) -> None:
    """Extract a tar archive into ``folder`` atomically; refuse links, devices and paths leaving the folder."""
    marker = folder / f".{archive.name}.extracted"
    sha = _sha256(archive)
    if marker.is_file() and marker.read_text().strip() == sha:
        return
    tmpdir = Path(tempfile.mkdtemp(dir=folder, prefix=f".{archive.name}.", suffix=".extract"))
    try:
        with tarfile.open(archive) as tar:
            members = tar.getmembers()
            for m in members:
                target = (tmpdir / m.name).resolve()
                if not (m.isfile() or m.isdir()) or not str(target).startswith(str(tmpdir.resolve()) + os.sep):
                    raise DownloadError(
                        f"{archive} contains {m.name!r}, which is not a plain file inside the archive folder; "
                        "refusing to extract it."
                    )
            if hasattr(tarfile, "data_filter"):
                tar.extractall(tmpdir, members=members, filter="data")
            else:  # pragma: no cover - Python < 3.11.4; members were checked above
                tar.extractall(tmpdir, members=members)
        for child in tmpdir.iterdir():
            target = folder / child.name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
            os.replace(child, target)
        marker.write_text(sha)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)


def fetch_entry_folders(entry: ModelEntry, parts: tuple[str, ...] = _PARTS) -> tuple[Path | None, Path | None]:
    """Folders holding a release's files in the official layout, for the family loaders.

    Files are fetched with :func:`fetch_entry`; tar archives among them (e.g. UCE's protein embeddings) are
    extracted next to themselves, as the official code does.

    Returns
    -------
    ``(checkpoint_dir, resources_dir)``: ``<cachedir>/models/<name>/checkpoint`` and ``.../resources``, or ``None``
    for a release without checkpoint or resource files, or for a part not in ``parts``.
    """
    fetch_entry(entry, parts=parts)
    root = _entry_root(entry)
    out: list[Path | None] = []
    for kind, files in (("checkpoint", entry.checkpoint), ("resources", entry.resources)):
        if not files or kind not in parts:
            out.append(None)
            continue
        folder = root / kind
        for f in files:
            if _is_archive(f.filename):
                archive = folder / f.filename
                _safe_extract(archive, archive.parent)
        out.append(folder)
    return out[0], out[1]
