"""Resolve a reference, download what the cache lacks (several blobs at once, each verified), materialise.

Data flows one way: reference -> manifest (pinned digest) -> config -> Plan -> blobs -> model directory.
"""

from __future__ import annotations

import errno
import logging
import os
import posixpath
import random
import shutil
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from . import errors
from .cache.contents import missing_files
from .cache.prune import discard_blobs
from .cache.store import Store, remove_tree
from .cached import Recorded
from .formats import Action, LayerPlan, Plan, recognise
from .formats.index import select_child
from .formats.plan import filter_key, filter_plan
from .materialize import extract_tar, materialize, tar_names
from .oci import Descriptor, Manifest, parse_manifest_or_index, sha256_digest
from .options import MAX_JOBS, FetchOptions, open_crane
from .progress import Progress, human
from .reference import Reference, parse_reference
from .registry import transfer
from .registry.access import RegistryRoutes
from .registry.crane import Crane
from .registry.sources import Source
from .registry.sources import plan as plan_sources
from .settings import Settings, UnpackLimits
from .signatures import VerifyPolicy
from .signatures.openssf import SIGN_FIX, SIGNATURE_NAMES, FileBundle, check_layers, require_files
from .signatures.policy import require_signed
from .sourcing import check_document_size, manifest_at, require_digest

log = logging.getLogger(__name__)
T = TypeVar("T")

@dataclass(frozen=True)
class Resolved:
    reference: Reference
    digest: str  # the manifest's digest (after choosing from an index)
    manifest: Manifest
    index_digest: str | None = None
    # Where no cosign signature vouches for the manifest under a policy: the model-signing bundle its files must
    # match (signatures/openssf.py), checked against the plan before downloading and the files once made.
    signed: FileBundle | None = None

    @property
    def pinned(self) -> str:
        return self.reference.with_digest(self.digest)


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
                  exclude=options.exclude, ranges=RangeSettings.of(options.settings),
                  retry_window=options.settings.retry_window, unpack=options.settings.unpack,
                  verify=options.verify)


class Backoff:
    """When a failing download is tried again: after 1 s, 2 s, 4 s ... (at most MAX_WAIT, each +-25 % so that
    many clients do not come back in step), while fewer than ``retries`` attempts in a row kept no new byte and
    the last new byte is less than ``window`` seconds old. An attempt that leaves more bytes on disk than any
    before it (a resumable download moving on) starts the count again."""

    MAX_WAIT = 30.0

    def __init__(self, retries: int, window: float, kept: int) -> None:
        self.retries, self.window = retries, window
        self.failures = 0
        self.best = kept  # bytes on disk to continue from, at the start or after the best attempt
        self.progressed = time.monotonic()

    def next_wait(self, kept: int, asked: float | None = None) -> float | None:
        """The wait before the next attempt, after one that failed leaving ``kept`` bytes; None: give up.
        ``asked``: what a 429 or 503 answer's Retry-After asked for, waited (plus jitter, within MAX_WAIT)
        instead of the doubling."""
        now = time.monotonic()
        if kept > self.best:
            self.best, self.failures, self.progressed = kept, 0, now
        self.failures += 1
        base = asked if asked is not None else 2.0 ** (self.failures - 1)
        jitter = random.uniform(1.0, 1.25) if asked is not None else random.uniform(0.75, 1.25)  # never less asked
        wait = min(self.MAX_WAIT, base * jitter)
        if self.failures > self.retries or now + wait - self.progressed > self.window:
            return None
        return wait


@dataclass(frozen=True)
class RangeSettings:
    """When and how large blobs come as parallel byte ranges (OCI_CRANE_RANGE_*, OCI_CRANE_NO_RANGES)."""

    threshold: int = Settings.range_threshold  # blobs at least this large
    parts: int = Settings.range_parts  # at most this many ranges per blob (1: crane blob only)
    connections: int = Settings.range_connections  # shared by the large blobs downloading at once
    disabled: bool = False

    @classmethod
    def of(cls, environment: Settings) -> RangeSettings:
        return cls(environment.range_threshold, environment.range_parts, environment.range_connections,
                   environment.no_ranges)

    @property
    def on(self) -> bool:
        """Whether large blobs may come as byte ranges at all."""
        return not self.disabled and self.parts > 1

    def applies(self, size: int) -> bool:
        return self.on and size >= self.threshold


class Puller:
    def __init__(self, store: Store, crane: Crane, *, jobs: int = 4, progress: Progress | None = None,
                 subpath: str | None = None, platform: str | None = None, retries: int = 2,
                 include: tuple[str, ...] = (), exclude: tuple[str, ...] = (),
                 ranges: RangeSettings | None = None, retry_window: float = Settings.retry_window,
                 unpack: UnpackLimits | None = None, verify: VerifyPolicy | None = None) -> None:
        if not 1 <= jobs <= MAX_JOBS:
            raise errors.UsageError(f"jobs must be 1 to {MAX_JOBS}, not {jobs}", f"pass --jobs 1 to {MAX_JOBS}")
        self.subpath = subpath  # the model directory inside an image or artifact (normalised), when the user names it
        self.platform = platform  # the child to choose from an image index; None: the host's
        self.store = store
        self.crane = crane
        self.verify = verify or VerifyPolicy()  # the signature policy a digest sourced here must pass (inspect)
        self.jobs = jobs
        self.progress = progress or Progress(enabled=False)
        # crane retries until response headers; a body that drops mid-stream is tried again here (crane blob
        # from zero, a ranged download from the bytes on disk)
        self.retries = retries
        self.retry_window = retry_window  # seconds a blob may go on failing without a byte more kept on disk
        self.unpack = unpack  # bounds on what one archive unpacks to; None: the OCI_CRANE_MAX_UNPACK_* settings
        self._names: dict[str, str] = {}  # digest -> the file it becomes, for messages
        self._sources: dict[str, list[Source]] = {}  # repository -> where its bytes may come from
        self.came_from: dict[str, str] = {}  # digest -> the source that served it (manifests and blobs)
        self.include, self.exclude = include, exclude  # fetch only: which files (formats/plan.filter_plan)
        self.ranges = ranges or RangeSettings.of(Settings())
        self.range_parts = self.ranges.parts  # byte ranges per large blob; ensure_blobs shares out the slots
        self.routes = RegistryRoutes()  # what this Puller's downloads learn of the registries they ask

    # --- manifests ---------------------------------------------------------------------------------------------
    def sources(self, reference: Reference) -> list[Source]:
        """Where manifests by digest and blobs of ``reference`` may come from, in order (registry/sources.py):
        the node's mirrors that may pull, then the upstream. Read once per repository and Puller."""
        key = reference.repository_name
        if key not in self._sources:
            self._sources[key] = [source for source in plan_sources(reference, self.crane)
                                  if source.endpoint is None or source.endpoint.can_pull]
        return self._sources[key]

    def _from_each(self, reference: Reference, what: str, attempt: Callable[[Source], T]) -> T:
        """``attempt`` at each source in turn until one succeeds: a mirror that fails (refuses, lies, is gone)
        costs one log line and the next source; the last source's failure is the one raised."""
        sources = self.sources(reference)
        for number, source in enumerate(sources, 1):
            try:
                return attempt(source)
            except errors.OciCraneError as exc:
                if number == len(sources) or isinstance(exc, errors.OfflineError | errors.CancelledError):
                    raise
                log.warning("%s from %s failed (%s); trying %s", what, source.name, exc.cause,
                            sources[number].name)
        raise AssertionError("unreachable: a plan has at least one source")

    def _manifest_by_digest(self, reference: Reference, digest: str) -> bytes:
        cached = self.store.load_manifest(digest)
        if cached is not None:
            return cached

        def at(source: Source) -> bytes:
            raw = manifest_at(source, digest)
            check_document_size(len(raw), f"manifest {digest}")
            if sha256_digest(raw) != digest:
                raise errors.IntegrityError(f"manifest of {reference.with_digest(digest)} from {source.name} "
                                            f"has digest {sha256_digest(raw)}")
            self.came_from[digest] = source.name
            return raw

        raw = self._from_each(reference, f"manifest {digest}", at)
        self.store.save_manifest(raw)
        return raw

    def resolve(self, reference: Reference, digest: str | None = None, signed: FileBundle | None = None) -> Resolved:
        """``digest``: what the reference names now, if the caller sourced it already (fetching.py) and checked its
        signature (``signed``: what require_signed returned); else it is sourced here by the same rule
        (sourcing.py). The tag's ref moves only once the fetch succeeds (record()), never here."""
        if digest is None:  # else the caller (fetching.py) sourced it and checked its signature
            digest = require_digest(self.store, self.crane, reference)
            signed = require_signed(self.store, self.crane, reference, digest, self.verify)
        raw = self._manifest_by_digest(reference, digest)
        document = parse_manifest_or_index(raw, f"manifest of {reference}")
        if isinstance(document, Manifest):
            return Resolved(reference, digest, document, signed=signed)
        child = select_child(document, self.platform)
        check_document_size(child.size, f"manifest {child.digest} of {reference}")
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
        pinned = reference.with_digest(descriptor.digest)
        parts = self.range_parts
        ranged = self.ranges.applies(descriptor.size) and parts > 1
        partial = self.store.partial_paths(descriptor.digest)

        def fetch_from(source: Source, temp: Path, count: Callable[[int], None]) -> str:
            """One attempt at one source; the digest of the bytes written (crane blob exits non-zero unless they
            match)."""
            nonlocal ranged
            at = source.at(descriptor.digest)
            # Parallel byte ranges for a large blob; and for any blob an earlier attempt left bytes of, one range
            # from where they end, whichever registry serves it (unless it showed it ignores Range). A mirror
            # only the HTTP road reaches always takes it.
            resumable = at.registry not in self.routes.ignores_range
            if ranged or source.http is not None or (resumable and partial.data.exists()):
                try:
                    return transfer.fetch_blob(source.crane, self.routes, at, descriptor, partial, temp,
                                               parts=parts, progress=count, cancel=cancel, http=source.http)
                except transfer.Unsupported as exc:
                    if source.http is not None:
                        raise errors.NetworkError(f"{source.name} cannot serve {descriptor.digest}: {exc}") from None
                    log.info("ranged download of %s unavailable (%s): using crane blob", pinned, exc)
                    ranged = False
            try:
                source.crane.blob(at.name, temp, count, size=descriptor.size, cancel=cancel)
            except errors.IntegrityError:
                raise  # its bytes are wrong: nothing to keep
            except BaseException:
                if at.registry not in self.routes.ignores_range:  # a broken or stopped stream: what it wrote is
                    transfer.keep_prefix(temp, partial, descriptor)  # kept for the next attempt to continue
                raise
            return descriptor.digest

        def fetch_once(temp: Path, count: Callable[[int], None]) -> str:
            """One attempt: each source in turn (mirrors, then the upstream); every byte checked against the
            digest before the blob is kept, whichever source sent it."""
            def attempt(source: Source) -> str:
                counted = 0

                def tally(delta: int) -> None:
                    nonlocal counted
                    counted += delta
                    count(delta)

                try:
                    digest = fetch_from(source, temp, tally)
                except BaseException:
                    count(-counted)  # what this source sent no longer counts as done
                    raise
                self.came_from[descriptor.digest] = source.name
                return digest

            return self._from_each(reference, f"{self._name(descriptor)}", attempt)

        def download(temp: Path) -> str:
            self.progress.begin(descriptor)
            retry = Backoff(self.retries, self.retry_window, self.store.partial_bytes(descriptor))
            while True:
                if cancel is not None and cancel.is_set():
                    raise errors.CancelledError(f"download of {pinned} was cancelled")
                received = 0

                def count(delta: int) -> None:
                    nonlocal received
                    received += delta
                    self.progress.advance(delta)

                try:
                    return fetch_once(temp, count)
                except (errors.NetworkError, errors.RateLimitedError) as exc:  # stalls too; not auth, TLS, integrity
                    self.progress.advance(-received)
                    kept = self.store.partial_bytes(descriptor)
                    wait = retry.next_wait(kept, asked=exc.retry_after)
                    if wait is None:
                        raise
                    asked = f" (the registry's Retry-After: {exc.retry_after:g} s)" \
                        if exc.retry_after is not None else ""
                    log.warning("%s: %s; retry %d of %d in %.1f s%s%s", self._name(descriptor), exc.cause,
                                retry.failures, self.retries, wait, asked,
                                f", continuing from {human(kept)} on disk" if kept else "")
                    self._wait(descriptor, wait, "rate limited" if exc.retry_after is not None else "retrying",
                               cancel)
                except errors.CraneError as exc:
                    if "no space left on device" in exc.stderr.lower():  # crane's write to our temp file failed
                        raise errors.cache_os_error(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)),
                                                    f"download {pinned}", self.store.root) from exc
                    raise

        if self.store.write_blob(descriptor, download, source=f"blob {pinned}"):
            self.progress.finished(descriptor)
        else:  # cached already, or another process finished it while we waited
            self.progress.skipped(descriptor.size)
        return self.store.blob_path(descriptor.digest)

    def _wait(self, descriptor: Descriptor, seconds: float, why: str, cancel: threading.Event | None) -> None:
        """Sleep before a retry, the bar counting down each second; a cancel ends the wait at once."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            self.progress.waiting(descriptor, left, why)
            if cancel is not None:
                if cancel.wait(min(1.0, left)):
                    break
            else:
                time.sleep(min(1.0, left))
        self.progress.resumed(descriptor)

    def ensure_blobs(self, reference: Reference, layers: Iterable[LayerPlan],
                     on_ready: Callable[[LayerPlan, Path], None] | None = None,
                     cancel: threading.Event | None = None) -> None:
        """Every layer's blob in the cache, several at once. Setting ``cancel`` (from another thread) stops them
        all, with CancelledError; it is also set here on the first failure."""
        layers = list(layers)
        self._names.update({layer.descriptor.digest: layer.path for layer in layers if layer.path})
        self.progress.start(sum(layer.descriptor.size for layer in layers), len(layers),
                            {layer.descriptor.digest: layer.path for layer in layers if layer.path})
        # Storage hosts cap each connection, so the large blobs downloading at once (up to --jobs) share a budget
        # of connections (OCI_CRANE_RANGE_CONNECTIONS), at least 2 ranges each, at most OCI_CRANE_RANGE_PARTS: one
        # blob gets 8, four get 4 each. A registry that serves blobs itself gets crane blob anyway (transfer.py).
        large = sum(1 for layer in layers if layer.descriptor.size >= self.ranges.threshold
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

    def _name(self, descriptor: Descriptor) -> str:
        name = self._names.get(descriptor.digest)
        return f"{name} ({descriptor.digest[:19]})" if name else descriptor.digest

    def config(self, resolved: Resolved) -> bytes:
        descriptor = resolved.manifest.config
        if descriptor.size <= 2 and descriptor.digest == sha256_digest(b"{}"):
            return b"{}"  # the OCI empty config: no request needed
        check_document_size(descriptor.size, f"config blob {descriptor.digest} ({descriptor.media_type})")
        return self.ensure_blob(resolved.reference, descriptor).read_bytes()

    def _range_parts(self, large: int) -> int:
        """Byte ranges per large blob when ``large`` of them are missing: those downloading at once (up to --jobs)
        share OCI_CRANE_RANGE_CONNECTIONS, at least 2 each, at most OCI_CRANE_RANGE_PARTS (1: crane blob only)."""
        at_once = max(1, min(large, self.jobs))
        return min(self.ranges.parts, max(2, self.ranges.connections // at_once))

    def check_free_space(self, layers: Iterable[LayerPlan]) -> None:
        """Refuse before downloading when the cache's disk cannot hold what is still to be written: the missing
        blobs, less the bytes a ranged download left in a partial file it resumes from; what the archives unpack to
        (at least their own size; the bounds on unpacking stop the rest, see materialize.py); and what other
        processes' ranged downloads still write into their preallocated (sparse) partial files."""
        layers = list(layers)
        missing = {layer.descriptor.digest: layer.descriptor for layer in layers
                   if not self.store.has_blob(layer.descriptor)}
        def unwritten(descriptor: Descriptor) -> int:  # a download continues from the bytes an earlier one kept
            return descriptor.size - self.store.partial_bytes(descriptor)

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
                              lambda layer: tar_names(self.store.blob_path(layer.descriptor.digest), self.unpack))

    def owns(self, path: str | Path) -> bool:
        """Whether ``path`` is in this Puller's cache (a model or config directory it made)."""
        return Path(path).is_relative_to(self.store.root)

    def materialize(self, resolved: Resolved, plan: Plan) -> Path:
        """The full model directory, once every weight blob is in the cache (see ``ensure_blobs``)."""
        return materialize(self.store, plan, resolved.digest, subpath=self.subpath, limits=self.unpack)

    def _download_and_materialize(self, resolved: Resolved, plan: Plan, *, weights: bool,
                                  variant: str | None = None) -> Path:
        """Free space checked for the whole model, the small layers downloaded first (config, tokenizer: they name
        the shards and fail fast on a bad artifact), then with ``weights`` the weight layers; the directory made
        (``weights=False``: the config directory, weights to be streamed later)."""
        self.check_free_space(plan.layers)
        if weights and not self.crane.offline and any(
                self.ranges.applies(layer.descriptor.size) and not self.store.has_blob(layer.descriptor)
                for layer in plan.weight_layers):
            # Whether large blobs may come as ranges, asked with the smallest layer while the small ones download,
            # of the source asked first (a mirror, if any: the upstream is not asked what it will not serve). A
            # mirror only the HTTP road reaches takes that road anyway.
            smallest = min((layer.descriptor for layer in plan.layers), key=lambda descriptor: descriptor.size)
            first = self.sources(resolved.reference)[0]
            if first.http is None:
                transfer.probe_early(first.crane, self.routes, first.at(smallest.digest), smallest)
        if weights and self.subpath is None:  # one pool, small layers first: no wait between the two
            self.ensure_blobs(resolved.reference, [*plan.small_layers, *plan.weight_layers])
        else:
            self.ensure_blobs(resolved.reference, plan.small_layers)
            self._check_subpath_in_archives(plan)  # the archives' names, before any weight is downloaded
            if weights:
                self.ensure_blobs(resolved.reference, plan.weight_layers)
        return materialize(self.store, plan, resolved.digest, weights=weights, subpath=self.subpath, limits=self.unpack,
                           variant=variant)

    # --- whole operations --------------------------------------------------------------------------------------
    def fetch(self, reference: Reference, digest: str | None = None,
              signed: FileBundle | None = None) -> tuple[Recorded, list[tuple[str, int]]]:
        """The model directory, downloaded and made if the cache lacks it, and the (digest, size) of the blobs it
        links, for the record fetching.py keeps. ``digest``, ``signed``: see ``resolve``."""
        resolved = self.resolve(reference, digest, signed)
        with self.store.fetching(resolved.index_digest or resolved.digest):
            plan = self.plan(resolved)
            variant = filter_key(self.include, self.exclude)
            if variant is not None:
                plan = filter_plan(plan, self.include, self.exclude)
            self._check_signed_plan(resolved, plan)
            path = self.store.model_path(resolved.digest, self.subpath, variant)
            if path.is_symlink():  # never ours: planted to lead elsewhere, so set aside and the model made anew
                log.warning("%s in the cache is a symbolic link, not a model directory: removing it", path)
                path.unlink()
            if path.is_dir():
                self.check_cached(resolved, plan, path)
            if not path.is_dir() or missing_files(self.store, path) != []:  # materialize() judges and rebuilds
                path = self._download_and_materialize(resolved, plan, weights=True, variant=variant)
            if resolved.signed is not None:  # the files as made, before the fetch counts as done
                require_files(self.store, resolved.signed, path, resolved.reference, resolved.digest)
            self.record(resolved)
        linked = [(layer.descriptor.digest, layer.descriptor.size) for layer in plan.layers
                  if layer.action in (Action.FILE, Action.SHARD)]
        return Recorded(path, resolved.digest, resolved.index_digest, plan.format), linked

    def _check_signed_plan(self, resolved: Resolved, plan: Plan, *, streamed: bool = False) -> None:
        """Under a model-signing bundle (``resolved.signed``), before any weight is downloaded: the manifest's file
        layers against it (a file layer's digest is its file's sha256). ``streamed``: the weights go to vLLM as
        they arrive, so every file must be checked here (no archive, no unnamed shard)."""
        bundle = resolved.signed
        if bundle is None:
            return
        what = f"{resolved.reference} ({resolved.digest}) is not the model its model-signing bundle signed (key " \
               f"{bundle.key.path})"
        if self.subpath is not None or self.include or self.exclude:
            raise errors.SignatureError(f"{what}: the bundle covers the whole model, and --subpath, --include or "
                                        "--exclude asks for a part of it",
                                        "fetch the whole model, or sign its manifest digest with cosign")
        files = {layer.path: layer.descriptor.digest for layer in plan.layers
                 if layer.action is Action.FILE and layer.path is not None}
        complete = all(layer.action is Action.FILE and layer.path is not None for layer in plan.layers)
        problem = check_layers(bundle, files, complete)
        if problem is None and streamed and not complete:
            problem = "weights streamed to vLLM from archives or unnamed shards cannot be checked before they load"
        if problem is None and streamed and any(bundle.file_digest(path) is None for path in files
                                                if path not in SIGNATURE_NAMES):
            problem = (f"the bundle hashes {bundle.method} with {bundle.serialization.get('hash_type')!r}, not whole "
                       "files with sha256: weights streamed to vLLM cannot be checked before they load (sign with "
                       "model_signing's default serialization)")
        if problem is not None:
            raise errors.SignatureError(f"{what}: {problem}", SIGN_FIX)

    def check_cached(self, resolved: Resolved, plan: Plan, path: Path) -> None:
        """A cheap look (sizes, no hashing) at the blobs the cached model directory ``path`` links: a truncated,
        grown (written through a hard link) or deleted blob is set aside with the directories that link it, and
        said in one warning; the fetch then downloads and builds them again. A changed byte is found by
        `oci-crane cache verify`, which re-hashes."""
        damaged = [layer.descriptor for layer in plan.layers
                   if layer.action in (Action.FILE, Action.SHARD) and not self.store.has_blob(layer.descriptor)]
        if not damaged:
            return
        first = damaged[0]
        more = f" (and {len(damaged) - 1} more)" if len(damaged) > 1 else ""
        what = (f"cached blob {first.digest}{more} of {resolved.reference} is damaged (its size is not "
                f"{first.size} bytes)")
        try:
            discard_blobs(self.store, [(descriptor.digest, descriptor.size) for descriptor in damaged])
            if path.is_dir():  # it links a blob that is gone (deleted, not damaged): built again with the new one
                self.store.discard_dir(path)
        except OSError as exc:  # a read-only cache cannot be repaired here
            raise errors.IntegrityError(f"{what} and the cache cannot be repaired here ({exc.strerror})",
                                        "run `oci-crane cache prune --damaged` where the cache is writable, then "
                                        "fetch again") from exc
        log.warning("%s: set aside with the model directories that link it, downloading it again", what)

    def prepare(self, text: str | Reference, digest: str | None = None,
                signed: FileBundle | None = None) -> tuple[Resolved, Plan, Path]:
        """Resolve, plan, and materialise only the small files (config, tokenizer): what vLLM needs as `model`
        before any weight is downloaded; weights follow through ``ensure_blobs``. Formats whose weights and
        config share archives (images, KitOps) cannot be split: the whole model directory is fetched here."""
        resolved = self.resolve(text if isinstance(text, Reference) else parse_reference(text), digest, signed)
        with self.store.fetching(resolved.index_digest or resolved.digest):
            plan = self.plan(resolved)
            if plan.streamable and not plan.weight_layers:
                raise errors.UnsupportedFormatError(f"{resolved.reference} holds no safetensors weights")
            self._check_signed_plan(resolved, plan, streamed=plan.streamable)
            # Archive formats hold weights and config together: the whole directory. materialize() then checks
            # that it holds safetensors weights.
            path = self._download_and_materialize(resolved, plan, weights=not plan.streamable)
            if resolved.signed is not None and not plan.streamable:  # the whole directory, before vLLM reads it
                require_files(self.store, resolved.signed, path, resolved.reference, resolved.digest)
            # Streamed weights are verified blob by blob as they arrive; the tag moves once the config files are.
            self.record(resolved)
        return resolved, plan, path

    def inspect(self, text: str) -> InspectResult:
        """Digest, format, files and sizes; downloads only the config and small non-weight layers."""
        reference = parse_reference(text)
        resolved = self.resolve(reference)
        plan = self.plan(resolved)
        self._check_signed_plan(resolved, plan)
        # Archives and image layers (under WEIGHTS_THRESHOLD) are listed file by file, each layer on its own.
        archives = [layer for layer in plan.small_layers if layer.action in (Action.TAR, Action.IMAGE)]
        self.check_free_space(archives)
        self.ensure_blobs(reference, archives)
        files: list[dict[str, object]] = []
        shard_number = 0
        for layer in plan.layers:
            entry = {"media_type": layer.descriptor.media_type, "digest": layer.descriptor.digest,
                     "size": layer.descriptor.size}
            if layer.action in (Action.TAR, Action.IMAGE) and not layer.weights:
                scratch = self.store.new_model_dir(resolved.digest)
                try:
                    extracted = extract_tar(self.store.blob_path(layer.descriptor.digest), scratch, "inspect",
                                            limits=self.unpack, into=layer.path,
                                            overlay=layer.action is Action.IMAGE)
                    files += [{**entry, "path": name, "size": (scratch / name).stat().st_size, "from_tar": True}
                              for name in dict.fromkeys(extracted) if (scratch / name).is_file()]
                finally:
                    remove_tree(scratch)
            elif layer.action in (Action.TAR, Action.IMAGE):  # weights: file names known only once downloaded
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
