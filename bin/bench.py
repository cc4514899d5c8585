"""`nox -s bench`: fetch speed and memory, us against the alternatives, in one run, printed as ratios.

A model of --size-mib MiB in --shards safetensors-like shards is pushed to `crane registry serve` on 127.0.0.1;
each tool then pulls it into an empty directory, --repeat times; the median wall time and the peak RSS of the
tool's process tree are reported, with ratios against oci-crane (cold cache). Tools not installed are listed as
absent (skopeo: bin/install-test-deps; oras: `go install oras.land/oras/cmd/oras@latest`).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from oci_crane_loader.crane import find_crane, serve_registry
from oci_crane_loader.pack import pack_dmr


def make_model(directory: Path, size_mib: int, shards: int) -> None:
    from oci_crane_loader.demo import write_safetensors

    directory.mkdir(parents=True)
    per_shard = size_mib * (1 << 20) // shards // 4
    for number in range(1, shards + 1):
        write_safetensors(directory / f"model-{number:05d}-of-{shards:05d}.safetensors",
                          {f"w{number}": ([per_shard], [float(number)] * per_shard)})
    (directory / "config.json").write_text('{"architectures": ["Bench"]}')


def timed(command: list[str]) -> tuple[float, float]:
    """Wall seconds, and peak RSS (MiB) of this command's largest process (wait4 reports it per child)."""
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(process.pid, 0)
    elapsed = time.perf_counter() - start
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise SystemExit(f"{command[0]} failed with exit {process.returncode}: {' '.join(command)}")
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
    return elapsed, usage.ru_maxrss * scale / (1 << 20)


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
        pack_dmr(work / "model", work / "layout")
        with serve_registry(disk=work / "registry") as registry:
            reference = f"{registry.host}/bench/model:v1"
            subprocess.run([crane, "push", str(work / "layout"), reference], check=True, capture_output=True)
            tools: dict[str, list[str] | None] = {
                "oci-crane fetch (cold)": [sys.executable, "-m", "oci_crane_loader", "fetch", reference, "-q",
                                           "--cache-dir", "{out}"],
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
    print(f"\n(peak RSS: the largest process of each run; ours is the Python process, {base_rss:.0f} MiB, "
          "crane children stream to disk)")


if __name__ == "__main__":
    main()
