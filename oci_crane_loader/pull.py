"""Resolve a reference, download what the cache lacks (several blobs at once, each verified), materialise.

Data flows one way: reference -> manifest (pinned digest) -> config -> Plan -> blobs -> model directory.
"""

from __future__ import annotations

import errno
import logging
import os
import posixpath
import shutil
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from . import errors
from .cache.store import Store, remove_tree
from .cached import MAX_DOCUMENT_SIZE, FetchResult, record_key, save_record
from .files import list_files
from .formats import Action, LayerPlan, Plan, recognise
from .formats.index import select_child
from .formats.plan import filter_key, filter_plan
from .materialize import extract_tar, materialize, tar_names
from .oci import Descriptor, Manifest, parse_manifest_or_index, sha256_digest
from .options import MAX_JOBS, FetchOptions, open_crane
from .progress import Progress, human
from .reference import Reference, parse_reference
from .registry import transfer
from .registry.crane import Crane
from .settings import settings

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class Resolved:
    reference: Reference
    digest: str  # the manifest's digest (after choosing from an index)
    manifest: Manifest
    index_digest: str | None = None

    @property
    def pinned(self) -> str:
        return f"{self.reference.repository_name}@{self.digest}"


@dataclass(frozen=True)
class InspectResult:
    reference: str
    digest: str
    pinned: str
    format: str
    media_type: str | None
    artifact_type: str | None
    files: list[dict[str, object]]
    bytes: int
    skipped: list[dict[str, object]] = field(default_factory=list)
    index_digest: str | None = None
    config: dict[str, object] = field(default_factory=dict)  # the config blob, read whole: its size is shown too

    def to_json(self) -> dict[str, object]:
        return dict(self.__dict__)


def open_puller(options: FetchOptions, progress: Progress | None = None, store: Store | None = None) -> Puller:
    """The Puller for ``options`` (see options.fetch_options): the command line, the Python API and the vLLM
    loader all get theirs here. ``store``: the cache already opened for ``options`` (fetching.fetch's)."""
    return Puller(store or Store(options.cache_dir), open_crane(options), jobs=options.jobs, progress=progress,
                  subpath=options.subpath, platform=options.platform, retries=options.retries, include=options.include,
                  exclude=options.exclude)


class Puller:
    def __init__(self, store: Store, crane: Crane, *, jobs: int = 4, progress: Progress | None = None,
                 subpath: str | None = None, platform: str | None = None, retries: int = 2,
                 include: tuple[str, ...] = (), exclude: tuple[str, ...] = ()) -> None:
        if not 1 <= jobs <= MAX_JOBS:
            raise errors.UsageError(f"jobs must be 1 to {MAX_JOBS}, not {jobs}", f"pass --jobs 1 to {MAX_JOBS}")
        self.subpath = subpath  # the model directory inside an image or artifact (normalised), when the user names it
        self.platform = platform  # the child to choose from an image index; None: the host's
        self.store = store
        self.crane = crane
        self.jobs = jobs
        self.progress = progress or Progress(enabled=False)
        # crane retries until response headers; a body that drops mid-stream is tried again here (crane blob
        # from zero, a ranged download from the bytes on disk)
        self.retries = retries
        self.include, self.exclude = include, exclude  # fetch only: which files (formats/plan.filter_plan)
        self.range_parts = settings().range_parts  # byte ranges per large blob; ensure_blobs shares out the slots

    # --- manifests ---------------------------------------------------------------------------------------------
    def _manifest_by_digest(self, reference: Reference, digest: str) -> bytes:
        cached = self.store.load_manifest(digest)
        if cached is not None:
            return cached
        raw = _bounded_document(self.crane.manifest(f"{reference.repository_name}@{digest}"), f"manifest {digest}")
        if sha256_digest(raw) != digest:
            raise errors.IntegrityError(f"manifest of {reference.repository_name}@{digest} has digest "
                                        f"{sha256_digest(raw)}")
        self.store.save_manifest(raw)
        return raw

    def resolve(self, reference: Reference, digest: str | None = None) -> Resolved:
        """``digest``: what the reference's tag named a moment ago (cached.fetch asked), its manifest cached."""
        if reference.digest or digest:
            digest = reference.digest or digest
            assert digest is not None
            raw = self._manifest_by_digest(reference, digest)
        elif self.crane.offline:
            cached = self.store.load_ref(reference)
            if cached is None:
                raise errors.OfflineError(f"{reference} is not in the cache at {self.store.root}")
            digest = cached
            raw = self._manifest_by_digest(reference, digest)
        else:  # the tag's ref moves only once the fetch succeeds (record()), never here
            raw = _bounded_document(self.crane.manifest(reference.name), f"manifest of {reference}")
            digest = self.store.save_manifest(raw)
        document = parse_manifest_or_index(raw, f"manifest of {reference}")
        if isinstance(document, Manifest):
            return Resolved(reference, digest, document)
        child = select_child(document, self.platform)
        _check_document_size(child.size, f"manifest {child.digest} of {reference}")
        child_raw = self._manifest_by_digest(reference, child.digest)
        child_document = parse_manifest_or_index(child_raw, f"manifest {child.digest} of {reference}")
        if not isinstance(child_document, Manifest):
            raise errors.UnsupportedFormatError(f"{reference}: nested image indexes are not supported")
        return Resolved(reference, child.digest, child_document, index_digest=digest)

    def record(self, resolved: Resolved) -> None:
        """After a successful fetch: the tag now names this digest, and a fetch by digest is kept by prune."""
        try:
            self.store.save_ref(resolved.reference, resolved.index_digest or resolved.digest)
        except OSError:
            if not self.crane.offline:
                raise
            log.warning("cannot record %s in the read-only cache %s", resolved.reference, self.store.root)

    # --- blobs -------------------------------------------------------------------------------------------------
    def ensure_blob(self, reference: Reference, descriptor: Descriptor,
                    cancel: threading.Event | None = None) -> Path:
        """The blob's cache path; downloaded (once, across threads and processes) if missing. Setting ``cancel``
        stops the download (crane is stopped, the temp file removed; a ranged download keeps its partial file
        under tmp/ for the next attempt) with CancelledError."""
        pinned = f"{reference.repository_name}@{descriptor.digest}"
        parts = self.range_parts
        ranged = not settings().no_ranges and descriptor.size >= settings().range_threshold and parts > 1

        def fetch_once(temp: Path, count: Callable[[int], None]) -> str:
            """One attempt; the digest of the bytes written (crane blob exits non-zero unless they match)."""
            nonlocal ranged
            if ranged:  # parallel byte ranges, resumed from the partial file a failed attempt left
                try:
                    return transfer.fetch_blob(self.crane, reference, descriptor,
                                               self.store.partial_paths(descriptor.digest), temp,
                                               parts=parts, progress=count, cancel=cancel)
                except transfer.Unsupported as exc:
                    log.info("ranged download of %s unavailable (%s): using crane blob", pinned, exc)
                    ranged = False
            self.crane.blob(pinned, temp, count, size=descriptor.size, cancel=cancel)
            return descriptor.digest

        def download(temp: Path) -> str:
            self.progress.begin(descriptor)
            for attempt in range(1, self.retries + 2):
                if cancel is not None and cancel.is_set():
                    raise errors.CancelledError(f"download of {pinned} was cancelled")
                received = 0

                def count(delta: int) -> None:
                    nonlocal received
                    received += delta
                    self.progress.advance(delta)

                try:
                    return fetch_once(temp, count)
                except errors.NetworkError as exc:  # includes stalls; auth, TLS and integrity are not retried
                    self.progress.advance(-received)
                    if attempt > self.retries:
                        raise
                    log.warning("download of %s failed (%s); retry %d of %d", pinned, exc.cause, attempt,
                                self.retries)
                    if cancel is not None:
                        cancel.wait(attempt)
                    else:
                        time.sleep(attempt)
                except errors.CraneError as exc:
                    if "no space left on device" in exc.stderr.lower():  # crane's write to our temp file failed
                        raise errors.cache_os_error(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)),
                                                    f"download {pinned}", self.store.root) from exc
                    raise
            raise AssertionError("unreachable: the last attempt returns or raises")

        if self.store.write_blob(descriptor, download, source=f"blob {pinned}"):
            self.progress.finished(descriptor)
        else:  # cached already, or another process finished it while we waited
            self.progress.skipped(descriptor.size)
        return self.store.blob_path(descriptor.digest)

    def ensure_blobs(self, reference: Reference, layers: Iterable[LayerPlan],
                     on_ready: Callable[[LayerPlan, Path], None] | None = None,
                     cancel: threading.Event | None = None) -> None:
        """Every layer's blob in the cache, several at once. Setting ``cancel`` (from another thread) stops them
        all, with CancelledError; it is also set here on the first failure."""
        layers = list(layers)
        self.progress.start(sum(layer.descriptor.size for layer in layers), len(layers),
                            {layer.descriptor.digest: layer.path for layer in layers if layer.path})
        # Storage hosts cap each connection, so the large blobs downloading at once (up to --jobs) share a budget
        # of connections (OCI_CRANE_RANGE_CONNECTIONS), at least 2 ranges each, at most OCI_CRANE_RANGE_PARTS: one
        # blob gets 8, four get 4 each. A registry that serves blobs itself gets crane blob anyway (transfer.py).
        large = sum(1 for layer in layers if layer.descriptor.size >= settings().range_threshold
                    and not self.store.has_blob(layer.descriptor))
        self.range_parts = self._range_parts(large)
        cancel = cancel or threading.Event()
        failures: list[BaseException] = []

        def fail_fast(future: Future[Path]) -> None:  # the first failure, whichever blob, stops the others
            if not future.cancelled() and future.exception() is not None:
                failures.append(future.exception())  # type: ignore[arg-type]
                cancel.set()

        pool = ThreadPoolExecutor(max_workers=self.jobs, thread_name_prefix="oci-crane-blob")
        try:
            futures = [pool.submit(self.ensure_blob, reference, layer.descriptor, cancel) for layer in layers]
            for future in futures:
                future.add_done_callback(fail_fast)
            for layer, future in zip(layers, futures, strict=True):
                path = future.result()
                if on_ready is not None:
                    on_ready(layer, path)
        except errors.CancelledError:
            first = next((exc for exc in failures if not isinstance(exc, errors.CancelledError)), None)
            if first is None:
                raise
            raise first from None
        except BaseException:
            # Promptly on Ctrl-C / SIGTERM too: queued downloads never start, running crane processes are
            # stopped and their temp files removed before this returns.
            cancel.set()
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
            self.progress.close()

    def config(self, resolved: Resolved) -> bytes:
        descriptor = resolved.manifest.config
        if descriptor.size <= 2 and descriptor.digest == sha256_digest(b"{}"):
            return b"{}"  # the OCI empty config: no request needed
        _check_document_size(descriptor.size, f"config blob {descriptor.digest} ({descriptor.media_type})")
        return self.ensure_blob(resolved.reference, descriptor).read_bytes()

    def _range_parts(self, large: int) -> int:
        """Byte ranges per large blob when ``large`` of them are missing: those downloading at once (up to --jobs)
        share OCI_CRANE_RANGE_CONNECTIONS, at least 2 each, at most OCI_CRANE_RANGE_PARTS (1: crane blob only)."""
        at_once = max(1, min(large, self.jobs))
        return min(settings().range_parts, max(2, settings().range_connections // at_once))

    @staticmethod
    def _ranges_on() -> bool:
        """Whether large blobs may come as byte ranges at all (OCI_CRANE_NO_RANGES, OCI_CRANE_RANGE_PARTS=1)."""
        return not settings().no_ranges and settings().range_parts > 1

    def check_free_space(self, layers: Iterable[LayerPlan]) -> None:
        """Refuse before downloading when the cache's disk cannot hold what is still to be written: the missing
        blobs, less the bytes a ranged download left in a partial file it resumes from; what the archives unpack to
        (at least their own size; the bounds on unpacking stop the rest, see materialize.py); and what other
        processes' ranged downloads still write into their preallocated (sparse) partial files."""
        layers = list(layers)
        missing = {layer.descriptor.digest: layer.descriptor for layer in layers
                   if not self.store.has_blob(layer.descriptor)}
        threshold = settings().range_threshold
        ranged = self._ranges_on()  # only a ranged download resumes from a partial file

        def unwritten(descriptor: Descriptor) -> int:
            resumes = ranged and descriptor.size >= threshold
            return descriptor.size - (self.store.partial_bytes(descriptor) if resumes else 0)

        needed = sum(map(unwritten, missing.values()))
        needed += sum(layer.descriptor.size for layer in layers if layer.action in (Action.TAR, Action.IMAGE))
        others = self.store.unwritten_partial_bytes(exclude=missing.keys())
        free = shutil.disk_usage(self.store.root).free
        if needed + others > free:
            running = f", and downloads running in other processes still write {human(others)}" if others else ""
            raise errors.CacheError(f"the model needs {human(needed)} in the cache at {self.store.root}{running} but "
                                    f"only {human(free)} is free",
                                    f"free disk space on the disk of {self.store.root}, or point --cache-dir "
                                    "(OCI_CRANE_LOADER_CACHE) at a larger disk")

    def plan(self, resolved: Resolved) -> Plan:
        plan = recognise(resolved.manifest, self.config(resolved))
        _check_subpath_exists(plan, self.subpath)
        return plan

    @property
    def cache_root(self) -> Path:
        return self.store.root

    def _check_subpath_in_archives(self, plan: Plan) -> None:
        """Once the small layers are cached, their archives' names are known too: check --subpath again."""
        _check_subpath_exists(plan, self.subpath,
                              lambda layer: tar_names(self.store.blob_path(layer.descriptor.digest)))

    def owns(self, path: str | Path) -> bool:
        """Whether ``path`` is in this Puller's cache (a model or config directory it made)."""
        return Path(path).is_relative_to(self.store.root)

    def materialize(self, resolved: Resolved, plan: Plan) -> Path:
        """The full model directory, once every weight blob is in the cache (see ``ensure_blobs``)."""
        return materialize(self.store, plan, resolved.digest, subpath=self.subpath)

    def _download_and_materialize(self, resolved: Resolved, plan: Plan, *, weights: bool,
                                  variant: str | None = None) -> Path:
        """Free space checked for the whole model, the small layers downloaded first (config, tokenizer: they name
        the shards and fail fast on a bad artifact), then with ``weights`` the weight layers; the directory made
        (``weights=False``: the config directory, weights to be streamed later)."""
        self.check_free_space(plan.layers)
        if weights and self._ranges_on() and any(
                layer.descriptor.size >= settings().range_threshold and not self.store.has_blob(layer.descriptor)
                for layer in plan.weight_layers):
            # Whether large blobs may come as ranges, asked with the smallest layer while the small ones download.
            transfer.probe_early(self.crane, resolved.reference, min(
                (layer.descriptor for layer in plan.layers), key=lambda descriptor: descriptor.size))
        if weights and self.subpath is None:  # one pool, small layers first: no wait between the two
            self.ensure_blobs(resolved.reference, [*plan.small_layers, *plan.weight_layers])
        else:
            self.ensure_blobs(resolved.reference, plan.small_layers)
            self._check_subpath_in_archives(plan)  # the archives' names, before any weight is downloaded
            if weights:
                self.ensure_blobs(resolved.reference, plan.weight_layers)
        return materialize(self.store, plan, resolved.digest, weights=weights, subpath=self.subpath,
                           variant=variant)

    # --- whole operations --------------------------------------------------------------------------------------
    def fetch(self, text: str, digest: str | None = None) -> FetchResult:
        """The model directory, downloaded and made if the cache lacks it. ``digest``: see ``resolve``."""
        reference = parse_reference(text)
        resolved = self.resolve(reference, digest)
        with self.store.fetching(resolved.index_digest or resolved.digest):
            plan = self.plan(resolved)
            variant = filter_key(self.include, self.exclude)
            if variant is not None:
                plan = filter_plan(plan, self.include, self.exclude)
            path = self.store.model_path(resolved.digest, self.subpath, variant)
            if path.is_dir():
                self.check_cached(resolved, plan)
            else:
                path = self._download_and_materialize(resolved, plan, weights=True, variant=variant)
            self.record(resolved)
        files = list_files(path)
        result = FetchResult(str(reference), resolved.digest, resolved.pinned, path, plan.format, files,
                             sum((path / name).stat().st_size for name in files), resolved.index_digest)
        # The next fetch of the same thing answers from this record (cached.py), without parsing anything.
        linked = [(layer.descriptor.digest, layer.descriptor.size) for layer in plan.layers
                  if layer.action in (Action.FILE, Action.SHARD)]
        save_record(self.store, record_key(resolved.index_digest or resolved.digest, self.platform, self.subpath,
                                           self.include, self.exclude), result, linked)
        return result

    def check_cached(self, resolved: Resolved, plan: Plan) -> None:
        """A cheap look (sizes, no hashing) at the blobs a cached model directory links: a truncated or deleted
        blob is reported, not served. A changed byte is found by `oci-crane cache verify`, which re-hashes."""
        for layer in plan.layers:
            if layer.action in (Action.FILE, Action.SHARD) and not self.store.has_blob(layer.descriptor):
                raise errors.IntegrityError(
                    f"cached blob {layer.descriptor.digest} of {resolved.reference} is damaged: its size is not "
                    f"{layer.descriptor.size} bytes", "run `oci-crane cache prune --damaged`, then fetch again")

    def prepare(self, text: str) -> tuple[Resolved, Plan, Path]:
        """Resolve, plan, and materialise only the small files (config, tokenizer): what vLLM needs as `model`
        before any weight is downloaded; weights follow through ``ensure_blobs``. Formats whose weights and
        config share archives (images, KitOps) cannot be split: the whole model directory is fetched here."""
        resolved = self.resolve(parse_reference(text))
        with self.store.fetching(resolved.index_digest or resolved.digest):
            plan = self.plan(resolved)
            if plan.streamable and not plan.weight_layers:
                raise errors.UnsupportedFormatError(f"{resolved.reference} holds no safetensors weights")
            # Archive formats hold weights and config together: the whole directory. materialize() then checks
            # that it holds safetensors weights.
            path = self._download_and_materialize(resolved, plan, weights=not plan.streamable)
            # Streamed weights are verified blob by blob as they arrive; the tag moves once the config files are.
            self.record(resolved)
        return resolved, plan, path

    def inspect(self, text: str) -> InspectResult:
        """Digest, format, files and sizes; downloads only the config and small non-weight layers."""
        reference = parse_reference(text)
        resolved = self.resolve(reference)
        plan = self.plan(resolved)
        archives = [layer for layer in plan.small_layers if layer.action is Action.TAR]
        self.check_free_space(archives)
        self.ensure_blobs(reference, archives)
        files: list[dict[str, object]] = []
        shard_number = 0
        for layer in plan.layers:
            entry = {"media_type": layer.descriptor.media_type, "digest": layer.descriptor.digest,
                     "size": layer.descriptor.size}
            if layer.action is Action.TAR and not layer.weights:
                scratch = self.store.new_model_dir(resolved.digest)
                try:
                    extracted = extract_tar(self.store.blob_path(layer.descriptor.digest), scratch, "inspect",
                                            into=layer.path)
                    files += [{**entry, "path": name, "size": (scratch / name).stat().st_size, "from_tar": True}
                              for name in extracted]
                finally:
                    remove_tree(scratch)
            elif layer.action is Action.TAR:  # a weight tar: its file names are known only once downloaded
                files.append({**entry, "path": layer.path, "archive": True})
            elif layer.action is Action.SHARD:
                shard_number += 1
                files.append({**entry, "path": None, "shard": shard_number})
            else:
                files.append({**entry, "path": layer.path})
        skipped = [{"media_type": d.media_type, "digest": d.digest, "size": d.size} for d in plan.skipped]
        config = resolved.manifest.config
        return InspectResult(str(reference), resolved.digest, resolved.pinned, plan.format,
                             resolved.manifest.media_type, resolved.manifest.artifact_type, files,
                             sum(layer.descriptor.size for layer in plan.layers), skipped, resolved.index_digest,
                             {"media_type": config.media_type, "digest": config.digest, "size": config.size})


def _check_subpath_exists(plan: Plan, subpath: str | None,
                          listed: Callable[[LayerPlan], list[str] | None] | None = None) -> None:
    """Before any weight is downloaded: where every file's name is known, a --subpath that names none of them
    nor a directory above one cannot be the model directory. File layers are named in the manifest; ``listed``
    gives the names inside a small archive once it is in the cache (None: not yet, or unreadable)."""
    if subpath is None:
        return
    names: list[str] = []
    for layer in plan.layers:
        inside = listed(layer) if listed is not None and layer.action is Action.TAR and not layer.weights else None
        if layer.action is Action.FILE:
            names.append(layer.path or "")
        elif inside is not None:
            names += [posixpath.join(layer.path, name) if layer.path else name for name in inside]
        elif layer.action is not Action.SHARD:  # unnamed shards land at the root, never under a subpath
            return  # names known only once unpacked (image layers, weight archives): materialize() checks then
    if not any(name == subpath or name.startswith(subpath + "/") for name in names):
        raise errors.InvalidModelError(f"--subpath {subpath!r} is not a directory in the artifact",
                                       "run `oci-crane inspect REF` to see its files")


def _check_document_size(size: int, what: str) -> None:
    if size > MAX_DOCUMENT_SIZE:
        raise errors.InvalidDocumentError(
            f"{what} is {human(size)}, over the {human(MAX_DOCUMENT_SIZE)} limit for a manifest or config "
            "(these are JSON documents of a few kilobytes; it is not read)",
            "check the reference: the registry or the artifact is broken or hostile")


def _bounded_document(raw: bytes, what: str) -> bytes:
    _check_document_size(len(raw), what)
    return raw
