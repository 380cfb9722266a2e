"""`gfm4d models fetch`: download a catalogue model, check it, and install it atomically.

An interrupted fetch never leaves a half model: downloads go to a partial file in the models
directory's hidden `.fetch/` folder (kept, so the next fetch resumes it with an HTTP Range
request), are verified against the published or pinned checksum, then unpacked and imported
through `importing.import_model`, which stages the model in a hidden folder and renames it into
place. Before any byte is downloaded the free disk space is checked against the download plus
its unpacked copy.

Network: requests (archives, URLs) and huggingface_hub (Hub repositories) both read the usual
proxy settings from the environment (HTTPS_PROXY, HTTP_PROXY, NO_PROXY, ALL_PROXY) and custom CA
bundles (REQUESTS_CA_BUNDLE, SSL_CERT_FILE); the Hub's token comes from HF_TOKEN or `hf auth login`
and its address from HF_ENDPOINT. Dropped connections and 5xx/429 answers are retried with
exponential back-off; when the source stays unreachable the error says which URL to download by
hand and which command installs the file.

Stable Diffusion 2.1's frozen components (vae/, text_encoder/, tokenizer/, scheduler/: what the
released DiffusionSat runs lack) are installed once as `<models>/_sd21`, which the registry uses
when no SD-2.1 folder is configured. Their source is a Hugging Face repo id, a URL of a zip, or a
local folder: the `sd21_source` argument, else GFM4D_SD21_SOURCE, else the catalogue's repo.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
import zipfile
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath
from typing import Callable

import requests
from filelock import FileLock, Timeout

from engine import __version__
from engine.errors import Cancelled, ModelError

from .catalogue import Entry, get_entry, load_catalogue
from .importing import STAGING_PREFIX, import_model
from .layout import COMPONENTS, FETCHED_SD21_FOLDER, find_components, inspect_model_folder

log = logging.getLogger(__name__)

FETCH_FOLDER = ".fetch"  # hidden: partial downloads kept for resuming
SD21_SOURCE_ENV_VAR = "GFM4D_SD21_SOURCE"
RETRIES = 5  # attempts in a row that move no byte before giving up
BACKOFF_S = 1.0  # first pause between attempts; doubles each time
CHUNK_BYTES = 1 << 20
TIMEOUT_S = (15, 60)  # connect, read
SPACE_MARGIN_BYTES = 100 * 2**20
_RETRY_STATUSES = {408, 425, 429, 500, 502, 503, 504}
# A component's files: its configs and tokenizer files, and one weights file.
_CONFIG_SUFFIXES = (".json", ".txt", ".model")
_WEIGHT_SUFFIXES = (".safetensors", ".bin")

ProgressCallback = Callable[[int, int, str], None]  # (bytes done, bytes total, what)


class FetchError(ModelError):
    """A model could not be fetched; the message says what to do (often: fetch it by hand)."""


@dataclass(frozen=True)
class Fetched:
    """One folder a fetch installed (or found already installed)."""

    name: str
    path: Path
    installed: bool  # False: it was there already
    note: str = ""  # e.g. why an installed backbone is not ready yet


@dataclass
class Fetcher:
    """Fetches catalogue entries into `models_dir`.

    `sd21_dir` is the configured SD-2.1 folder (components are then not fetched); `progress`
    receives (bytes done, bytes total, what) and `cancel` is polled between chunks.
    """

    models_dir: Path
    sd21_dir: Path | None = None
    sd21_source: str | None = None
    progress: ProgressCallback | None = None
    cancel: Callable[[], bool] | None = None
    retries: int = RETRIES
    backoff_s: float = BACKOFF_S
    catalogue: dict[str, Entry] | None = None

    def __post_init__(self) -> None:
        self.models_dir = Path(self.models_dir)
        self.catalogue = load_catalogue() if self.catalogue is None else self.catalogue
        self.session = requests.Session()  # trust_env: proxies and CA bundles from the environment
        self.session.headers["User-Agent"] = f"gfm4d/{__version__}"

    # --- entry points ---------------------------------------------------------------------------

    def fetch(self, name: str, with_components: bool = True, archive: Path | None = None) -> list[Fetched]:
        """Install catalogue entry `name` (its `requires` first, SD-2.1 components after); what was done.

        `archive` is a zip downloaded by hand: verified and installed as if it had been downloaded.
        """
        entry = get_entry(name, self.catalogue)
        if archive is not None and entry.kind != "archive":
            raise FetchError(
                f"{name} is not fetched as one zip; for files downloaded by hand use "
                + ("--sd21-source FOLDER" if entry.kind == "components" else f"gfm4d models import FOLDER --name {name}")
            )
        done: list[Fetched] = []
        for required in entry.requires:
            if not (self.models_dir / required).is_dir():
                done += self.fetch(required, with_components=False)
        if entry.kind == "archive":
            done.append(self._install_archive(entry, archive))
        elif entry.kind == "components":
            done.append(self._install_components(entry))
        else:
            done.append(self._install_snapshot(entry))
        if with_components and any(self.catalogue[d.name].needs_sd21 for d in done if d.name in self.catalogue):
            components = self._components_needed(done)
            if components is not None:
                done.append(self._install_components(components))
        return done

    def _components_needed(self, done: list[Fetched]) -> Entry | None:
        """The SD-2.1 components entry when an installed run lacks a component found nowhere."""
        sd21 = self.sd21_dir or (self.models_dir / FETCHED_SD21_FOLDER)
        for item in done:
            _, missing = find_components(item.path, sd21 if sd21.is_dir() else None)
            if missing:
                return next(e for e in self.catalogue.values() if e.kind == "components")
        return None

    # --- archives (released DiffusionSat runs) -----------------------------------------------------

    def _install_archive(self, entry: Entry, archive: Path | None) -> Fetched:
        target = self.models_dir / entry.name
        if target.exists():
            return Fetched(entry.name, target, installed=False)
        work = self._work_folder()
        with self._lock(entry.name):
            if target.exists():  # another fetch finished in between
                return Fetched(entry.name, target, installed=False)
            if archive is not None:
                zip_path = Path(archive)
                if not zip_path.is_file():
                    raise FetchError(f"{zip_path} does not exist; give the .zip you downloaded from {entry.url}")
                try:
                    size, checksum = self._published(entry)
                except FetchError as exc:  # offline: the pinned checksum, else the zip's own CRCs on unpacking
                    log.warning("cannot read the published checksum (%s); checking the zip's own CRCs only", exc)
                    size, checksum = None, entry.checksum
                self._verify(zip_path, size, checksum, entry)
                self._check_space(entry.name, zip_path.stat().st_size)  # its unpacked copy
            else:
                zip_path = work / f"{entry.name}.zip.part"
                size, checksum = self._published(entry)
                if checksum is None:
                    raise FetchError(
                        f"no checksum for {entry.name}: neither {entry.record_url or 'a record'} publishes one nor "
                        "does the catalogue pin one (sha256 or md5); add one to the catalogue entry"
                    )
                have = zip_path.stat().st_size if zip_path.exists() else 0
                self._check_space(entry.name, max(size - have, 0) + size)  # the download, then its unpacked copy
                self._download(entry.url, zip_path, size, entry)
                try:
                    self._verify(zip_path, size, checksum, entry)
                except FetchError:
                    zip_path.unlink(missing_ok=True)  # a corrupt file cannot be resumed
                    raise
            size = zip_path.stat().st_size
            self._report(size, size, f"unpacking {entry.name}")
            try:
                import_model(zip_path, self.models_dir, entry.name, settings=entry.settings or None)
            except ModelError as exc:
                raise FetchError(f"{entry.url} does not hold a model GFM4D can install as {entry.name}: {exc}") from exc
            if archive is None:
                zip_path.unlink(missing_ok=True)
        return Fetched(entry.name, target, installed=True)

    def _published(self, entry: Entry) -> tuple[int, tuple[str, str] | None]:
        """(size, checksum) of the archive: the record's figures, a pinned checksum winning."""
        size, checksum = None, None
        if entry.record_url:
            size, checksum = self._record_file(entry)
        if entry.checksum is not None:
            checksum = entry.checksum
        if size is None:
            size = self._content_length(entry)
        return size, checksum

    def _record_file(self, entry: Entry) -> tuple[int | None, tuple[str, str] | None]:
        """Size and checksum of the archive in a Zenodo-style record ({"files": [{key, size, checksum}]})."""
        response = self._request(entry.record_url, entry)
        try:
            record = response.json()
        except ValueError as exc:
            raise FetchError(f"{entry.record_url} did not answer with JSON ({exc}); try again later") from None
        files = record.get("files") if isinstance(record, dict) else None
        if isinstance(files, dict):  # InvenioRDM's /files answer
            files = files.get("entries")
        wanted = PurePosixPath(requests.utils.urlparse(entry.url).path).name
        for item in files if isinstance(files, list) else []:
            if isinstance(item, dict) and item.get("key") == wanted:
                checksum = None
                algorithm, _, digest = str(item.get("checksum", "")).partition(":")
                if digest and algorithm in hashlib.algorithms_available:
                    checksum = (algorithm, digest.lower())
                size = item.get("size")
                return (size if isinstance(size, int) else None), checksum
        raise FetchError(f"the record {entry.record_url} lists no file {wanted!r}; the catalogue entry {entry.name} is out of date")

    def _content_length(self, entry: Entry) -> int:
        response = self._request(entry.url, entry, method="HEAD")
        length = response.headers.get("Content-Length")
        return int(length) if length and length.isdigit() else entry.size_bytes

    def _request(self, url: str, entry: Entry, method: str = "GET") -> requests.Response:
        """A small request (record, HEAD) with the same retries and by-hand advice as downloads."""
        attempt = 0
        while True:
            try:
                response = self.session.request(method, url, timeout=TIMEOUT_S, allow_redirects=True)
                if response.status_code in _RETRY_STATUSES:
                    raise _Retryable(f"HTTP {response.status_code} {response.reason}")
                if response.status_code >= 400:
                    raise FetchError(self._by_hand(entry, url, f"HTTP {response.status_code} {response.reason}"))
                return response
            except _NETWORK_ERRORS as exc:
                attempt += 1
                if attempt >= self.retries:
                    raise FetchError(self._by_hand(entry, url, _reason(exc))) from None
                self._pause(attempt)

    def _download(self, url: str, part: Path, size: int, entry: Entry) -> None:
        """Download `url` into `part`, resuming what is there; retried while bytes keep coming."""
        attempt = 0
        while True:
            have = part.stat().st_size if part.exists() else 0
            if have > size:
                part.unlink()
                have = 0
            if have == size:
                return
            before = have
            try:
                self._download_once(url, part, have, size, entry)
            except _NETWORK_ERRORS as exc:
                moved = (part.stat().st_size if part.exists() else 0) > before
                attempt = 1 if moved else attempt + 1
                if attempt >= self.retries:
                    raise FetchError(self._by_hand(entry, url, _reason(exc))) from None
                log.info("download of %s interrupted (%s); resuming", url, _reason(exc))
                self._pause(attempt)

    def _download_once(self, url: str, part: Path, have: int, size: int, entry: Entry) -> None:
        headers = {"Range": f"bytes={have}-"} if have else {}
        with self.session.get(url, headers=headers, stream=True, timeout=TIMEOUT_S) as response:
            if response.status_code == 416 and have:
                part.unlink()  # the server disowns what we have: start again
                raise _Retryable("the server refused to resume; starting again")
            if response.status_code in _RETRY_STATUSES:
                raise _Retryable(f"HTTP {response.status_code} {response.reason}")
            if response.status_code not in (200, 206):
                raise FetchError(self._by_hand(entry, url, f"HTTP {response.status_code} {response.reason}"))
            if response.status_code == 200:
                have = 0  # the server ignored the Range header: the body is the whole file
            with open(part, "ab" if have else "wb") as out:
                for chunk in response.iter_content(CHUNK_BYTES):
                    if self.cancel is not None and self.cancel():
                        raise Cancelled(f"fetch of {entry.name} cancelled; {part} is kept and the next fetch resumes it")
                    out.write(chunk)
                    have += len(chunk)
                    self._report(have, size, f"downloading {entry.name}")
        if have < size:
            raise _Retryable(f"the connection closed after {have} of {size} bytes")

    def _verify(self, path: Path, size: int | None, checksum: tuple[str, str] | None, entry: Entry) -> None:
        actual_size = path.stat().st_size
        if size is not None and actual_size != size:
            raise FetchError(f"{path.name} has {actual_size} bytes, but {entry.name} has {size}; it was refused and nothing was installed")
        if checksum is None:
            return
        algorithm, expected = checksum
        digest = hashlib.new(algorithm)
        done = 0
        with open(path, "rb") as source:
            while block := source.read(CHUNK_BYTES * 8):
                digest.update(block)
                done += len(block)
                self._report(done, actual_size, f"verifying {entry.name}")
        if digest.hexdigest() != expected:
            raise FetchError(
                f"the download of {entry.name} has {algorithm} {digest.hexdigest()}, not the published {expected}: "
                "it was refused and nothing was installed; fetch again (the file is downloaded anew)"
            )

    # --- Stable Diffusion 2.1 components -----------------------------------------------------------

    def _install_components(self, entry: Entry) -> Fetched:
        target = self.models_dir / FETCHED_SD21_FOLDER
        if target.is_dir():
            return Fetched(entry.name, target, installed=False)
        source = self.sd21_source or os.environ.get(SD21_SOURCE_ENV_VAR) or entry.repo_id
        components = entry.components or COMPONENTS
        with self._lock(entry.name):
            if target.is_dir():
                return Fetched(entry.name, target, installed=False)
            staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=self._work_folder().parent))
            try:
                if source.startswith(("http://", "https://")):
                    self._components_from_url(entry, source, components, staging)
                elif Path(source).expanduser().is_dir():
                    self._components_from_folder(entry, Path(source).expanduser(), components, staging)
                elif "://" in source or source.startswith((".", "/", "~")) or source.count("/") != 1:
                    raise FetchError(
                        f"the SD-2.1 source {source!r} is neither a folder, an http(s) URL nor a Hugging Face repo id "
                        "(owner/name)"
                    )
                else:
                    self._components_from_hub(entry, source, components, staging)
                _, missing = find_components(staging, None)
                if missing:
                    raise FetchError(f"{source} has no Stable Diffusion {', '.join(missing)} (expected {', '.join(components)}/ folders)")
                staging.rename(target)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
        return Fetched(entry.name, target, installed=True)

    def _components_from_folder(self, entry: Entry, folder: Path, components, staging: Path) -> None:
        files = [p.relative_to(folder).as_posix() for c in components if (folder / c).is_dir() for p in (folder / c).iterdir()
                 if p.is_file()]
        chosen = select_component_files(files, components)
        total = sum((folder / f).stat().st_size for f in chosen)
        self._check_space(entry.name, total)
        done = 0
        for name in chosen:
            (staging / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(folder / name, staging / name)
            done += (folder / name).stat().st_size
            self._report(done, total, f"copying {entry.name}")
            self._check_cancel(entry)

    def _components_from_url(self, entry: Entry, url: str, components, staging: Path) -> None:
        part = self._work_folder() / f"{entry.name}.zip.part"
        url_entry = replace(entry, url=url, kind="archive")
        size = self._content_length(url_entry)
        have = part.stat().st_size if part.exists() else 0
        self._check_space(entry.name, max(size - have, 0) + size)
        self._download(url, part, size, url_entry)
        try:
            with zipfile.ZipFile(part) as archive:
                if archive.testzip() is not None:
                    raise zipfile.BadZipFile("a member fails its CRC check")
                members = archive.namelist()
                root = _components_root(members, components)
                chosen = select_component_files([m[len(root):] for m in members if m.startswith(root)], components)
                for name in chosen:
                    destination = staging / name
                    destination.parent.mkdir(parents=True, exist_ok=True)
                    with archive.open(root + name) as src, open(destination, "wb") as dst:
                        shutil.copyfileobj(src, dst, CHUNK_BYTES)
        except (zipfile.BadZipFile, OSError) as exc:
            part.unlink(missing_ok=True)
            raise FetchError(f"{url} is not a usable zip of a Stable Diffusion 2.1 folder ({exc}); nothing was installed") from None
        part.unlink(missing_ok=True)

    def _components_from_hub(self, entry: Entry, repo_id: str, components, staging: Path) -> None:
        listing = self._hub_listing(entry, repo_id)
        chosen = select_component_files(list(listing), components)
        self._hub_download(entry, repo_id, {name: listing[name] for name in chosen}, staging)

    # --- Hugging Face snapshots (SDXL, SD3, FLUX.1) --------------------------------------------------

    def _install_snapshot(self, entry: Entry) -> Fetched:
        target = self.models_dir / entry.name
        if target.exists():
            return Fetched(entry.name, target, installed=False)
        with self._lock(entry.name):
            if target.exists():
                return Fetched(entry.name, target, installed=False)
            listing = self._hub_listing(entry, entry.repo_id)
            if "model_index.json" not in listing:
                raise FetchError(f"{entry.repo_id} has no model_index.json: it is not a diffusers pipeline repository")
            staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=self.models_dir))
            try:
                self._hub_download(entry, entry.repo_id, {"model_index.json": listing["model_index.json"]}, staging, report=False)
                folders = _pipeline_folders(staging / "model_index.json")
                chosen = select_component_files(list(listing), folders)
                self._hub_download(entry, entry.repo_id, {name: listing[name] for name in chosen}, staging)
                staging.rename(target)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
        try:
            inspect_model_folder(target, models_dir=self.models_dir)
            note = ""
        except ModelError as exc:
            note = f"installed, but not usable by this version of GFM4D: {exc}"
        return Fetched(entry.name, target, installed=True, note=note)

    def _hub_listing(self, entry: Entry, repo_id: str) -> dict[str, tuple[int, str | None]]:
        """rfilename -> (size, sha256 of LFS files) of a Hub repository."""
        from huggingface_hub import HfApi

        try:
            info = HfApi(endpoint=_hub_endpoint()).model_info(repo_id, files_metadata=True)
        except Exception as exc:  # noqa: BLE001 - the Hub client raises many kinds; all mean "cannot list it"
            raise FetchError(self._hub_advice(entry, repo_id, exc)) from None
        return {s.rfilename: (int(s.size or 0), s.lfs.sha256 if s.lfs else None) for s in info.siblings or []}

    def _hub_download(self, entry: Entry, repo_id: str, files: dict[str, tuple[int, str | None]], staging: Path,
                      report: bool = True) -> None:
        """Download `files` into `staging`, verifying LFS files' sha256.

        Files collect in a stable folder under `.fetch/` and move into `staging` once all are there, so
        a failed or cancelled fetch keeps what it verified (and the Hub client's partial file) for the next.
        """
        from huggingface_hub import hf_hub_download

        total = sum(size for size, _ in files.values())
        if report:
            self._check_space(entry.name, total)
        cache = self._work_folder() / f"{entry.name}.hub"
        done = 0
        for name, (size, sha256) in sorted(files.items()):
            self._check_cancel(entry)
            attempt = 0
            while True:
                try:
                    path = Path(hf_hub_download(repo_id, name, local_dir=cache, endpoint=_hub_endpoint()))
                    break
                except Exception as exc:  # noqa: BLE001 - see _hub_listing
                    attempt += 1
                    if attempt >= self.retries or not _is_transient(exc):
                        raise FetchError(self._hub_advice(entry, repo_id, exc)) from None
                    self._pause(attempt)
            if sha256 and _sha256(path) != sha256:
                path.unlink(missing_ok=True)
                raise FetchError(f"{repo_id}/{name} does not match its published sha256; it was refused and nothing was installed")
            done += size
            if report:
                self._report(done, total, f"downloading {entry.name}")
        # Every file is there and verified: only now move them into the staged model.
        for name in files:
            destination = staging / name
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(cache / name, destination)
        shutil.rmtree(cache, ignore_errors=True)

    def _hub_advice(self, entry: Entry, repo_id: str, exc: Exception) -> str:
        from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

        page = f"https://huggingface.co/{repo_id}"
        if isinstance(exc, GatedRepoError):
            return (f"{repo_id} is gated: accept its licence at {page} while logged in, then log in here "
                    f"(`hf auth login`, or set HF_TOKEN) and fetch {entry.name} again")
        if isinstance(exc, RepositoryNotFoundError):
            return f"the Hugging Face Hub has no repository {repo_id} (or it needs a login: set HF_TOKEN)"
        if entry.kind == "components":
            return (f"cannot reach the Hugging Face Hub for {repo_id} ({_reason(exc)}). Download {page} by hand "
                    f"(its vae/, text_encoder/, tokenizer/ and scheduler/ folders) and run: "
                    f"gfm4d models fetch {entry.name} --sd21-source FOLDER")
        return (f"cannot reach the Hugging Face Hub for {repo_id} ({_reason(exc)}). Download {page} by hand "
                f"(e.g. `hf download {repo_id} --local-dir FOLDER` on a connected machine) and run: "
                f"gfm4d models import FOLDER --name {entry.name}")

    # --- shared --------------------------------------------------------------------------------------

    def _by_hand(self, entry: Entry, url: str, reason: str) -> str:
        return (f"cannot download {entry.name} from {url} ({reason}). Download {entry.url or url} by hand, then run: "
                f"gfm4d models fetch {entry.name} --archive FILE.zip  (or: gfm4d models import FILE.zip --name {entry.name})")

    def _check_space(self, name: str, needed: int) -> None:
        self.models_dir.mkdir(parents=True, exist_ok=True)
        free = free_bytes(self.models_dir)
        if free < needed + SPACE_MARGIN_BYTES:
            raise FetchError(
                f"not enough free disk space for {name} in {self.models_dir}: it needs {_gb(needed + SPACE_MARGIN_BYTES)} "
                f"(download and unpacked copy), {_gb(free)} are free; free some space or point GFM4D_MODELS at a larger disk"
            )

    def _work_folder(self) -> Path:
        folder = self.models_dir / FETCH_FOLDER
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    @contextmanager
    def _lock(self, name: str):
        """One fetch of `name` at a time into this models directory (CLI and engine alike)."""
        lock = FileLock(str(self._work_folder() / f"{name}.lock"), timeout=0)
        try:
            lock.acquire()
        except Timeout:
            raise FetchError(f"another fetch of {name} into {self.models_dir} is running; wait for it to finish") from None
        try:
            yield
        finally:
            lock.release()

    def _report(self, done: int, total: int, what: str) -> None:
        if self.progress is not None:
            self.progress(done, total, what)

    def _check_cancel(self, entry: Entry) -> None:
        if self.cancel is not None and self.cancel():
            raise Cancelled(f"fetch of {entry.name} cancelled; nothing was installed")

    def _pause(self, attempt: int) -> None:
        deadline = time.monotonic() + self.backoff_s * 2 ** (attempt - 1)
        while time.monotonic() < deadline:
            if self.cancel is not None and self.cancel():
                raise Cancelled("fetch cancelled while waiting to retry; nothing was installed")
            time.sleep(min(0.2, max(deadline - time.monotonic(), 0)))


class _Retryable(Exception):
    """A failure worth another attempt (a dropped connection, a 5xx or 429 answer)."""


# A connection that drops mid-body surfaces as ChunkedEncodingError (not a ConnectionError).
_NETWORK_ERRORS = (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError, _Retryable)


def fetch_model(name: str, models_dir: Path, **options) -> list[Fetched]:
    """Fetch catalogue entry `name` into `models_dir` (options: Fetcher's fields and fetch's arguments)."""
    fetch_args = {key: options.pop(key) for key in ("with_components", "archive") if key in options}
    return Fetcher(Path(models_dir), **options).fetch(name, **fetch_args)


def free_bytes(path: Path) -> int:
    """Free space on the disk holding `path`."""
    return shutil.disk_usage(path).free


def select_component_files(files: list[str], folders) -> list[str]:
    """The files of pipeline `folders` worth downloading: configs and tokenizer files, and per folder
    the full-precision safetensors weights (shards and index included), else the `.bin` ones.

    Variants (`*.fp16.safetensors`), Flax/ONNX exports and files outside `folders` are left out.
    """
    chosen = []
    for folder in folders:
        inside = [f for f in files if PurePosixPath(f).parent.as_posix() == folder]
        chosen += [f for f in inside if f.endswith(_CONFIG_SUFFIXES) and not _is_variant_index(f)]
        for suffix in _WEIGHT_SUFFIXES:
            weights = [f for f in inside if f.endswith(suffix) and not _is_variant(f, suffix)]
            if weights:
                chosen += weights
                break
    return sorted(set(chosen) - _unused_indexes(chosen))


def _is_variant(name: str, suffix: str) -> bool:
    """`diffusion_pytorch_model.fp16.safetensors`, `model-00001-of-00002.fp16.safetensors`: a variant."""
    stem = PurePosixPath(name).name[: -len(suffix)]
    return "." in stem


def _is_variant_index(name: str) -> bool:
    """`model.safetensors.index.fp16.json`: the index of a variant's shards."""
    base = PurePosixPath(name).name
    return ".index." in base and not base.endswith(".index.json")


def _unused_indexes(chosen: list[str]) -> set[str]:
    """Shard indexes whose weights were not chosen (a `.bin` index beside chosen safetensors)."""
    unused = set()
    for name in chosen:
        if name.endswith(".index.json"):
            weights_suffix = "." + PurePosixPath(name).name.split(".")[-3]
            folder = PurePosixPath(name).parent.as_posix()
            if not any(f.endswith(weights_suffix) and PurePosixPath(f).parent.as_posix() == folder for f in chosen):
                unused.add(name)
    return unused


def _components_root(members: list[str], components) -> str:
    """The prefix inside a zip under which `vae/`, `text_encoder/`, ... sit ('' or 'some-folder/')."""
    for member in sorted(members, key=len):
        parts = PurePosixPath(member).parts
        for index, part in enumerate(parts[:-1]):
            if part == components[0]:
                return "".join(p + "/" for p in parts[:index])
    raise zipfile.BadZipFile(f"no {components[0]}/ folder inside")


def _pipeline_folders(model_index: Path) -> list[str]:
    """The component folders a diffusers model_index.json names (entries like ["diffusers", "Class"])."""
    try:
        index = json.loads(model_index.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise FetchError(f"cannot read {model_index.name} of the repository: {exc}") from None
    return sorted(key for key, value in index.items()
                  if not key.startswith("_") and isinstance(value, list) and len(value) == 2 and value[1])


def _hub_endpoint() -> str | None:
    """HF_ENDPOINT as it is now (huggingface_hub reads it once, when imported); None: the Hub's own."""
    return os.environ.get("HF_ENDPOINT") or None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as source:
        while block := source.read(CHUNK_BYTES * 8):
            digest.update(block)
    return digest.hexdigest()


def _is_transient(exc: Exception) -> bool:
    from huggingface_hub.errors import EntryNotFoundError, GatedRepoError, RepositoryNotFoundError

    return not isinstance(exc, (GatedRepoError, RepositoryNotFoundError, EntryNotFoundError))


def _reason(exc: Exception) -> str:
    """A short why. requests and httpx (the Hub client) nest the cause several exceptions deep."""
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    try:
        url = str(exc.request.url)  # httpx raises RuntimeError when an error has no request
    except (AttributeError, RuntimeError):
        url = ""
    host = requests.utils.urlparse(url).hostname if url else None
    host = host or "the server"
    if isinstance(exc, requests.exceptions.ProxyError):
        return f"the proxy did not let the request through: {text[:120]}"
    lowered = text.lower()
    if any(s in lowered for s in ("resolve", "name or service not known", "getaddrinfo", "nodename nor servname")):
        return f"cannot resolve {host}: offline, or DNS blocked"
    if "refused" in lowered:
        return f"{host} refused the connection"
    if isinstance(exc, requests.Timeout) or "timed out" in lowered or "timeout" in type(exc).__name__.lower():
        return f"{host} did not answer in time"
    if isinstance(exc, requests.ConnectionError) or "connect" in type(exc).__name__.lower():
        return f"no connection to {host}"
    return text[:200]


def _gb(size: int) -> str:
    return f"{size / 1e9:.2f} GB"
