"""What a person sees while `fetch` and `push` run: bars on a terminal (under tmux), a line per file on a pipe,
nothing with --quiet or OCI_CRANE_DISABLE_PROGRESS=1."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file
from support.commands import REPO_ROOT, run_cli
from support.terminal import bars_on, screens_under_tmux
from support.throttle import throttled

SHARDS = ("model-00001-of-00003.safetensors", "model-00002-of-00003.safetensors", "model-00003-of-00003.safetensors")


def write_large_model(directory: Path, seed: int = 7) -> Path:
    """Three 2 MiB safetensors shards, config and tokenizer: enough bytes for a bar at a throttled rate (another
    ``seed``, other weights: a registry that holds a blob already is not sent it again)."""
    directory.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    weight_map = {}
    for number, name in enumerate(SHARDS):
        tensors = {f"layers.{number}.weight": rng.standard_normal((512, 1024)).astype(np.float32)}
        save_file(tensors, str(directory / name), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(tensors, name))
    (directory / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    (directory / "config.json").write_text(json.dumps({"architectures": ["TestModel"], "hidden_size": 8}))
    (directory / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 128}))
    return directory


@pytest.fixture
def pushed(registry, tmp_path):
    """The model pushed with `oci-crane push` (its progress on a pipe checked on the way); the reference."""
    reference = f"{registry.host}/progress/model:v1"
    done = run_cli("push", str(write_large_model(tmp_path / "model")), reference)
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()
    assert any(re.fullmatch(r"packing 6 files, 6\.0 MiB as modelpack: done in [\d.]+s", line) for line in lines), lines
    assert any(re.fullmatch(rf"pushing 6 files, 6\.0 MiB to {re.escape(reference)}: "
                            r"done in [\d.]+s", line) for line in lines), lines
    return reference


def test_pipe_gets_one_plain_line_per_file_and_no_rich(pushed, cache_dir):
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "oci_crane_loader", "fetch", pushed,
                           "--cache-dir", str(cache_dir), "--jobs", "2"], capture_output=True, text=True,
                          cwd=REPO_ROOT, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stderr.splitlines() if not line.startswith("import time:")]
    imported = {line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines() if line.startswith("import time:")}
    assert not {name for name in imported if name.split(".")[0] == "rich"}  # a pipe never loads the bar library
    fetched = [line for line in lines if line.startswith("fetched ")]
    names = {re.match(r"fetched (\S+) \(", line)[1] for line in fetched}  # type: ignore[index]
    assert names == {*SHARDS, "config.json", "tokenizer_config.json", "model.safetensors.index.json"}
    assert len(fetched) == len(lines) == 6  # nothing else: no bar, no carriage return, no escape sequence
    assert all(re.fullmatch(r"fetched \S+ \([\d.]+ (B|KiB|MiB)\) \[\d/\d\]", line) for line in fetched), fetched


@pytest.mark.parametrize("silence", [["--quiet"], ["--quiet", "--json"], ["--json"]])
def test_quiet_and_the_switch_leave_stderr_empty(pushed, cache_dir, silence):
    env = {"OCI_CRANE_DISABLE_PROGRESS": "1"} if silence == ["--json"] else {}
    done = run_cli("fetch", pushed, "--cache-dir", str(cache_dir), *silence, env=env)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    if "--json" in silence:
        assert Path(json.loads(done.stdout)["path"]).is_dir()


def test_help_does_not_import_rich():
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "oci_crane_loader", "--help"],
                          capture_output=True, text=True, cwd=REPO_ROOT, timeout=60, check=False)
    assert done.returncode == 0 and "import time:" in done.stderr
    assert not re.search(r"\|\s+rich(\.|$)", done.stderr, re.MULTILINE)


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed (apt-get install tmux)")
def test_terminal_shows_bars_with_percent_rate_and_names(pushed, registry, cache_dir, tmp_path):
    """A person's terminal (tmux, 150x40): per-file bars named after the files, percent, bytes, rate, ETA."""
    with throttled(registry.host, rate=1 << 20) as slow:
        reference = pushed.replace(registry.host, slow)
        screens = screens_under_tmux([sys.executable, "-m", "oci_crane_loader", "fetch", reference, "--cache-dir",
                                      str(cache_dir), "--jobs", "2"], tmp_path)
    final = screens[-1]
    assert "EXIT=0" in final, final
    bars = bars_on(screens)
    assert bars, screens[-3:]  # a bar with its percent and its rate was on screen while bytes flowed
    drawn = "\n".join(bars)
    assert re.search(r"total \(6 files\)", drawn) and any(name in drawn for name in SHARDS), drawn
    assert re.search(r"[\d.]+/[\d.]+ MiB", drawn), drawn  # bytes done / total
    for name in SHARDS:  # each finished file leaves its line above the bars
        assert re.search(rf"fetched {re.escape(name)} \(2\.0 MiB\) \[\d/6\]", final), final


def test_a_shard_without_a_name_is_shown_by_its_digest_and_names_cannot_drive_the_terminal():
    import io

    from oci_crane_loader.oci import Descriptor
    from oci_crane_loader.progress import Progress

    stream = io.StringIO()  # not a terminal: the plain lines
    progress = Progress(stream=stream)
    shard = Descriptor(mediaType="application/vnd.docker.ai.safetensors", digest="sha256:" + "ab" * 32, size=2048)
    named = Descriptor(mediaType="application/octet-stream", digest="sha256:" + "cd" * 32, size=10)
    progress.start(2058, 2, {named.digest: "evil\x1b[2Jname.json"})
    for descriptor in (shard, named):
        progress.begin(descriptor)
        progress.advance(descriptor.size)
        progress.finished(descriptor)
    progress.close()
    assert stream.getvalue().splitlines() == ["fetched sha256:abababababab (2.0 KiB) [1/2]",
                                              "fetched evil\\x1b[2Jname.json (10 B) [2/2]"]


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed (apt-get install tmux)")
def test_terminal_push_shows_one_bar_with_percent_rate_and_bytes(registry, tmp_path):
    """crane push says nothing while it uploads: the bar counts how far crane is through the layout's files
    (/proc/PID/fdinfo)."""
    if not Path("/proc/self/fdinfo").is_dir():
        pytest.skip("this OS does not show a process's file offsets (/proc/PID/fdinfo): a push shows a spinner only")
    model = tmp_path / "model"
    model.mkdir()
    rng = np.random.default_rng()
    for name in SHARDS:  # larger than the kernel's socket buffers, which take the first MiB of each upload at once
        save_file({name.split("-")[1]: rng.integers(0, 255, size=24 << 20, dtype=np.uint8)}, str(model / name))
    (model / "config.json").write_text(json.dumps({"architectures": ["TestModel"]}))
    with throttled(registry.host, rate=4 << 20, requests_too=True) as slow:
        screens = screens_under_tmux([sys.executable, "-m", "oci_crane_loader", "push", str(model),
                                      f"{slow}/progress/pushed:v1", "--cache-dir", str(tmp_path / "cache")],
                                     tmp_path)
    final = screens[-1]
    assert "EXIT=0" in final, final
    bars = bars_on(screens)
    assert bars, screens[-3:]
    drawn = "\n".join(bars)
    assert re.search(r"pushing 4 files, 72\.0 MiB to 127\.0\.0\.1:\d+/progress/pushed:v1", drawn), drawn
    assert re.search(r"[\d.]+/72\.0 MiB", drawn), drawn  # bytes sent / total
    assert re.search(r"pushing 4 files, 72\.0 MiB to \S+: done in [\d.]+s", final), final
