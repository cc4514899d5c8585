"""References that look like crane's options: refused by our parser, and never read as options by crane.

References are often untrusted input (a web form, VLLM_MODEL). Two layers: reference.py refuses a registry or
repository component that begins with ``-``, and crane.py ends crane's options with ``--`` before every positional
argument, so that whatever reaches crane is an argument. These tests run the real crane.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from support.commands import REPO_ROOT, run_cli
from support.models import write_model

from oci_crane_loader import errors
from oci_crane_loader.reference import parse_reference
from oci_crane_loader.registry.crane import Crane

LOOKS_LIKE_A_FLAG = "--Bad"  # crane's parser refuses it as a reference (uppercase), so no network is involved


@pytest.mark.parametrize(("call", "crane_says"), [
    (lambda c, tmp: c.manifest(LOOKS_LIKE_A_FLAG), "could not parse reference: --Bad"),
    (lambda c, tmp: c.digest(LOOKS_LIKE_A_FLAG), "could not parse reference: --Bad"),
    (lambda c, tmp: c.blob(LOOKS_LIKE_A_FLAG, tmp / "blob"), "a digest must contain exactly one '@'"),
    (lambda c, tmp: c.run("config", LOOKS_LIKE_A_FLAG), "could not parse reference: --Bad"),
    (lambda c, tmp: c.run("ls", LOOKS_LIKE_A_FLAG), 'parsing repo "--Bad"'),
    (lambda c, tmp: c.push(Path("--no-such-layout"), "127.0.0.1:9/x/y:z"), "stat --no-such-layout"),
], ids=["manifest", "digest", "blob", "config", "ls", "push"])
@pytest.mark.parametrize("crane", [Crane(), Crane(insecure=True)], ids=["plain", "options"])
def test_crane_reads_a_dash_argument_as_an_argument(crane_binary: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    crane: Crane, call: Callable[[Crane, Path], object],
                                                    crane_says: str) -> None:
    # Before `--` was added, crane answered "unknown flag: --Bad" (or ran with the flag) instead.
    monkeypatch.chdir(tmp_path)  # push's layout path is relative: it must not exist
    with pytest.raises(errors.CraneError) as info:
        call(crane, tmp_path)
    assert crane_says in info.value.stderr
    assert "unknown flag" not in info.value.stderr and "unknown shorthand flag" not in info.value.stderr
    assert info.value.command[-1] != "--" and "--" in info.value.command


@pytest.mark.parametrize("reference", ["--user-agent=evil.io/repo:tag", "-vvv.io/repo:tag"])
@pytest.mark.parametrize("command", ["fetch", "inspect"])
def test_cli_refuses_a_reference_that_is_a_flag(crane_binary: str, tmp_path: Path, command: str,
                                                reference: str) -> None:
    # Before: crane said "unknown flag: --user-agent", or read -vvv.io as -v -v -v.
    done = run_cli(command, "--cache-dir", str(tmp_path / "cache"), "--", reference)
    assert done.returncode == 1, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: invalid reference {reference!r}: registry ")
    assert "may not start with '-'" in lines[0] and "-- fix: " in lines[0]


def test_push_refuses_a_reference_that_is_a_flag(crane_binary: str, tmp_path: Path) -> None:
    model = write_model(tmp_path / "model", shards=1)
    done = run_cli("push", str(model), "--", "-vvv.io/repo:tag")
    assert done.returncode == 1, done.stderr
    assert done.stderr.startswith("error: invalid reference '-vvv.io/repo:tag': registry '-vvv.io' may not start")


@pytest.mark.parametrize("reference", ["ghcr.io/acme/a;touch${IFS}pwned", "ghcr.io/acme/$(touch pwned)",
                                       "a|touch pwned", "`touch pwned`.io/x", "x.io/a&&touch", "x.io/a'b", 'x.io/a"b',
                                       "x.io/a>pwned"])
def test_shell_metacharacters_in_a_repository_are_refused(reference: str) -> None:
    with pytest.raises(errors.InvalidReferenceError, match=r"may only contain|not allowed in a host name|whitespace"):
        parse_reference(reference)


def test_shell_metacharacters_crane_accepts_reach_no_shell(crane_binary: str, tmp_path: Path) -> None:
    # '$', '(', ')' and '>' are legal in a host for Go's url.Parse (so for crane too): the reference goes to crane
    # as one argv element, never through a shell, so nothing runs and crane just cannot resolve that host.
    reference = "$(touch>pwned).io/repo:tag"
    assert parse_reference(reference).registry == "$(touch>pwned).io"
    done = subprocess.run([sys.executable, "-m", "oci_crane_loader", "fetch", "--cache-dir", str(tmp_path / "cache"),
                           "--quiet", "--", reference], capture_output=True, text=True, cwd=tmp_path, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(REPO_ROOT)}, check=False)
    assert done.returncode == 1
    assert done.stderr.startswith("error: cannot reach the registry") and len(done.stderr.splitlines()) == 1
    assert not (tmp_path / "pwned").exists() and not (REPO_ROOT / "pwned").exists()
