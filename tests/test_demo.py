"""`oci-crane demo` as a user runs it: a cache of its own, nothing left in the user's, and what to try next."""

from __future__ import annotations

import json
from pathlib import Path

from support.commands import run_cli


def test_the_demo_leaves_nothing_in_the_users_cache_and_says_what_next(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    done = run_cli("demo", env={"HOME": str(home), "OCI_CRANE_LOADER_CACHE": "", "XDG_CACHE_HOME": ""})
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["format"] == "dmr-v0.2" and len(result["files"]) == 4 and "path" not in result
    # a ref to the demo's loopback registry, dead once it stops, would stay in ~/.cache/oci-crane-loader
    assert list(home.rglob("*")) == []
    assert "into a cache of its own, now removed, and verified it byte for byte" in done.stderr
    assert done.stderr.rstrip().splitlines()[-4].lstrip().startswith("oci-crane push DIR")


def test_the_demo_keeps_a_cache_it_is_given(tmp_path):
    done = run_cli("demo", "--cache-dir", str(tmp_path / "cache"))
    assert done.returncode == 0, done.stderr
    path = Path(json.loads(done.stdout)["path"])
    assert path.is_relative_to(tmp_path / "cache") and (path / "config.json").is_file()
