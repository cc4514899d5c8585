"""`nox -s bench`: fetch speed and memory, us against the alternatives, in one run, printed as ratios.

A model of --size-mib MiB in --shards safetensors-like shards is pushed to `crane registry serve` on 127.0.0.1;
each tool then pulls it into an empty directory, --repeat times; the median wall time and the peak RSS of the
tool's process tree are reported, with ratios against oci-crane (cold cache). Tools not installed are listed as
absent (skopeo: bin/install-test-deps; oras: `go install oras.land/oras/cmd/oras@latest`).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from oci_crane_loader.crane import find_crane
from oci_crane_loader.formats.modelpack_pack import pack_modelpack
from oci_crane_loader.local_registry import serve_registry


def make_model(directory: Path, size_mib: int, shards: int) -> None:
    """Random (incompressible) U8 shards, written in chunks so this process stays small."""
    directory.mkdir(parents=True)
    per_shard = size_mib * (1 << 20) // shards
    for number in range(1, shards + 1):
        header = json.dumps({f"w{number}": {"dtype": "U8", "shape": [per_shard], "data_offsets": [0, per_shard]}})
        encoded = header.encode() + b" " * (-len(header) % 8)
        with open(directory / f"model-{number:05d}-of-{shards:05d}.safetensors", "wb") as out:
            out.write(len(encoded).to_bytes(8, "little") + encoded)
            for _ in range(per_shard // (1 << 20)):
                out.write(os.urandom(1 << 20))
    (directory / "config.json").write_text('{"architectures": ["Bench"]}')


def timed(command: list[str]) -> tuple[float, float]:
    """Wall seconds, and the peak summed RSS (MiB) of the command's whole process tree, sampled every 10 ms
    (ru_maxrss would inherit this process's own high-water mark across fork)."""
    import psutil

    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    tree = psutil.Process(process.pid)
    peak = 0
    while process.poll() is None:
        try:
            members = [tree, *tree.children(recursive=True)]
            peak = max(peak, sum(member.memory_info().rss for member in members))
        except psutil.Error:
            pass
        time.sleep(0.01)
    elapsed = time.perf_counter() - start
    if process.returncode != 0:
        raise SystemExit(f"{command[0]} failed with exit {process.returncode}: {' '.join(command)}")
    return elapsed, peak / (1 << 20)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=3)
    options = parser.parse_args()
    crane = find_crane()
    local_oras = Path(__file__).resolve().parent.parent / ".tools" / "bin" / "oras"
    oras = str(local_oras) if local_oras.is_file() else shutil.which("oras")
    with tempfile.TemporaryDirectory(prefix="oci-crane-bench-") as scratch:
        work = Path(scratch)
        make_model(work / "model", options.size_mib, options.shards)
        pack_modelpack(work / "model", work / "layout")  # title annotations: oras pulls every file too
        with serve_registry(disk=work / "registry") as registry:
            reference = f"{registry.host}/bench/model:v1"
            subprocess.run([crane, "push", str(work / "layout"), reference], check=True, capture_output=True)
            tools: dict[str, list[str] | None] = {
                "oci-crane fetch (cold)": [sys.executable, "-m", "oci_crane_loader", "fetch", reference, "-q",
                                           "--cache-dir", "{out}"],
                "oci-crane fetch (no fsync)": ["env", "OCI_CRANE_NO_FSYNC=1", sys.executable, "-m", "oci_crane_loader",
                                               "fetch", reference, "-q", "--cache-dir", "{out}"],
                "crane pull --format oci": [crane, "pull", "--format", "oci", reference, "{out}"],
                "skopeo copy": ["skopeo", "copy", "--src-tls-verify=false", f"docker://{reference}", "oci:{out}"]
                if shutil.which("skopeo") else None,
                "oras pull": [oras, "pull", "--plain-http", reference, "-o", "{out}"] if oras else None,
            }
            results: dict[str, tuple[float, float]] = {}
            for name, template in tools.items():
                if template is None:
                    print(f"{name:28} absent")
                    continue
                runs = []
                for attempt in range(options.repeat):
                    out = work / f"out-{abs(hash(name))}-{attempt}"
                    runs.append(timed([part.replace("{out}", str(out)) for part in template]))
                    shutil.rmtree(out, ignore_errors=True)
                results[name] = (statistics.median(r[0] for r in runs), max(r[1] for r in runs))
            warm_cache = work / "warm"
            timed([sys.executable, "-m", "oci_crane_loader", "fetch", reference, "-q", "--cache-dir", str(warm_cache)])
            results["oci-crane fetch (warm)"] = timed(
                [sys.executable, "-m", "oci_crane_loader", "fetch", reference, "-q", "--cache-dir", str(warm_cache)])
    base_time, base_rss = results["oci-crane fetch (cold)"]
    size = options.size_mib
    print(f"\n{size} MiB in {options.shards} shards, median of {options.repeat}, loopback registry\n")
    print(f"{'tool':28} {'seconds':>8} {'MiB/s':>8} {'peak RSS MiB':>13} {'time / ours':>12}")
    for name, (seconds, rss) in results.items():
        print(f"{name:28} {seconds:8.2f} {size / seconds:8.0f} {rss:13.0f} {seconds / base_time:12.2f}")
    print(f"\n(peak RSS: the whole process tree, sampled; ours is Python plus its crane children, {base_rss:.0f} MiB)")


if __name__ == "__main__":
    main()
