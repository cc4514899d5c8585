"""The crane wrapper's error handling: locating crane, its version, argv, environment, and stderr -> typed errors.

crane itself is faked with pytest-subprocess; the stderr texts are what crane v0.21.x really prints.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import subprocess
import time
from pathlib import Path

import pytest

from oci_crane_loader import errors
from oci_crane_loader.doctor import check_crane
from oci_crane_loader.platforms import host_platform
from oci_crane_loader.registry import crane, failures
from oci_crane_loader.registry.crane import Crane, classify, find_crane, parse_version, redact
from oci_crane_loader.registry.keychain import find_credentials

REF = "127.0.0.1:5000/x/y:latest"
PINNED = "127.0.0.1:5000/x/y@sha256:" + "ab" * 32


def _executable(path: Path, body: str = "exit 99") -> str:
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)
    return str(path)


@pytest.fixture(autouse=True)
def _fresh_version_cache():
    crane._version_of.cache_clear()
    crane._chosen.clear()
    yield
    crane._version_of.cache_clear()
    crane._chosen.clear()


@pytest.fixture
def binary(tmp_path, monkeypatch) -> str:
    """A real executable file named by OCI_CRANE_BINARY; what it does is faked by the `fp` fixture."""
    path = _executable(tmp_path / "crane")
    monkeypatch.setenv("OCI_CRANE_BINARY", path)
    return path


def _register_version(fp, binary: str, version: str = "v0.21.9") -> None:
    fp.register([binary, "version"], stdout=version + "\n")


def _failing_manifest(fp, binary: str, stderr: str, returncode: int = 1) -> errors.CraneError:
    """`crane manifest REF` exits with ``returncode`` printing ``stderr``; returns what Crane raised."""
    _register_version(fp, binary)
    fp.register([binary, "manifest", "--", REF], stderr=stderr, returncode=returncode)
    with pytest.raises(errors.CraneError) as info:
        Crane().manifest(REF)
    return info.value


# --- stderr classification --------------------------------------------------------------------------------

UNAUTHORIZED = (
    "Error: fetching manifest 127.0.0.1:41993/x/y:latest: GET https://127.0.0.1:41993/v2/x/y/manifests/latest: "
    "UNAUTHORIZED: authentication required; [map[Action:pull Class: Name:x/y Type:repository]]"
)
TLS = (
    'Error: fetching manifest 127.0.0.1:41993/x/y:latest: Get "https://127.0.0.1:41993/v2/": tls: failed to verify '
    "certificate: x509: certificate signed by unknown authority; GET http://127.0.0.1:41993/v2/: unexpected status "
    "code 400 Bad Request: Client sent an HTTP request to an HTTPS server."
)
HTTP_TO_HTTPS = (
    'Error: fetching manifest 127.0.0.1:5000/a/b:v1: Get "https://127.0.0.1:5000/v2/": '
    "http: server gave HTTP response to HTTPS client"
)
MANIFEST_UNKNOWN = (
    "Error: fetching manifest 127.0.0.1:33347/a/b:nope: GET http://127.0.0.1:33347/v2/a/b/manifests/nope: "
    "MANIFEST_UNKNOWN: Unknown manifest"
)
BLOB_UNKNOWN = (
    "Error: GET http://127.0.0.1:33347/v2/a/b/blobs/sha256:" + "ab" * 32 + ": BLOB_UNKNOWN: Unknown blob"
)
NAME_UNKNOWN = (
    "Error: fetching manifest 127.0.0.1:33347/no/such:v1: GET http://127.0.0.1:33347/v2/no/such/manifests/v1: "
    "NAME_UNKNOWN: Unknown name"
)
REFUSED = (
    'Error: fetching manifest 127.0.0.1:1/a/b:v1: Get "https://127.0.0.1:1/v2/": dial tcp 127.0.0.1:1: connect: '
    'connection refused; Get "http://127.0.0.1:1/v2/": dial tcp 127.0.0.1:1: connect: connection refused'
)
RATE_LIMITED = (
    "Error: fetching manifest index.docker.io/library/ubuntu:latest: GET "
    "https://index.docker.io/v2/library/ubuntu/manifests/latest: TOOMANYREQUESTS: You have reached your pull rate "
    "limit. You may increase the limit by authenticating and upgrading: https://www.docker.com/increase-rate-limit"
)
CREDENTIAL_HELPER = (
    "Error: fetching manifest ghcr.io/acme/llama:v1: error getting credentials - err: exec: "
    '"docker-credential-desktop": executable file not found in $PATH, out: ``'
)
INTEGRITY = (
    "Error: error verifying sha256 checksum after reading 123 bytes; got "
    '"sha256:' + "0" * 64 + '", want "sha256:' + "ab" * 32 + '"'
)
NO_SUCH_HOST = (
    'Error: fetching manifest nosuch.invalid/a/b:v1: Get "https://nosuch.invalid/v2/": dial tcp: lookup '
    "nosuch.invalid on 127.0.0.53:53: no such host"
)
IO_TIMEOUT = (
    'Error: fetching manifest 10.255.255.1/a/b:v1: Get "https://10.255.255.1/v2/": dial tcp 10.255.255.1:443: '
    "i/o timeout"
)
UNEXPECTED_EOF = (
    "Error: failed to read blob: read tcp 127.0.0.1:50122->127.0.0.1:5000: unexpected EOF"
)

# (stderr, exact class, a standard exception it must also be, what the cause starts with)
CLASSIFIED = [
    # none configured here for 127.0.0.1:41993: crane sent none, and the cause says so
    (UNAUTHORIZED, errors.UnauthorizedError, PermissionError, crane._NONE_SENT),
    (TLS, errors.TLSError, ConnectionError, "TLS handshake with the registry failed"),
    (HTTP_TO_HTTPS, errors.TLSError, ConnectionError, "TLS handshake with the registry failed"),
    (MANIFEST_UNKNOWN, errors.NotFoundError, LookupError, "not found in the registry"),
    (BLOB_UNKNOWN, errors.NotFoundError, LookupError, "not found in the registry"),
    (NAME_UNKNOWN, errors.NotFoundError, LookupError, "not found in the registry"),
    (REFUSED, errors.NetworkError, ConnectionError, "cannot reach the registry"),
    (RATE_LIMITED, errors.RateLimitedError, RuntimeError, "the registry is rate limiting us"),
    (CREDENTIAL_HELPER, errors.CredentialHelperError, PermissionError, "the docker credential helper failed"),
    (INTEGRITY, errors.CraneIntegrityError, errors.IntegrityError, "downloaded bytes do not match their digest"),
    (NO_SUCH_HOST, errors.NetworkError, ConnectionError, "cannot reach the registry"),
    (IO_TIMEOUT, errors.NetworkError, ConnectionError, "cannot reach the registry"),
    (UNEXPECTED_EOF, errors.NetworkError, ConnectionError, "cannot reach the registry"),
]


@pytest.mark.parametrize(("stderr", "cls", "standard", "what"), CLASSIFIED,
                         ids=[cls.__name__ + "-" + str(i) for i, (_, cls, _, _) in enumerate(CLASSIFIED)])
def test_stderr_is_classified(fp, binary, stderr, cls, standard, what):
    exc = _failing_manifest(fp, binary, stderr + "\n")
    assert type(exc) is cls
    assert isinstance(exc, standard)
    assert isinstance(exc, errors.OciCraneError)
    # The cause quotes crane's own message, without its "Error: " prefix.
    assert exc.cause == f"{what}: {stderr.removeprefix('Error: ')}"
    # A credentials error's fix names the file crane read (keychain.py); the others keep their class's fix.
    assert exc.fix == (crane._credentials_fix(cls, find_credentials(), sent=False) or cls.default_fix)
    if cls is errors.UnauthorizedError:
        assert "oci-crane login REGISTRY" in exc.fix and find_credentials().describe() in exc.fix


def test_credentials_that_were_sent_and_refused_are_called_so(tmp_path):
    config = tmp_path / "config.json"
    config.write_text('{"auths": {"127.0.0.1:41993": {"auth": "dTpw"}}}')
    source = find_credentials(config)
    refused = classify(["crane", "manifest", "--", REF], 1, UNAUTHORIZED, ["pw", "dTpw"], source)
    assert refused.cause.startswith("the registry refused our credentials: ") and "holds none" not in refused.fix
    unsent = classify(["crane", "manifest", "--", REF], 1, UNAUTHORIZED, [], source)
    assert unsent.cause.startswith(f"{crane._NONE_SENT}: ") and f"{config} (from --authfile), which holds none" \
        in unsent.fix


def test_classification_covers_every_rule():
    classified = {cls for _, cls, _, _ in CLASSIFIED}
    assert {failure.error for _, failure in failures.STDERR_RULES} <= classified


def test_error_carries_command_returncode_and_stderr(fp, binary):
    exc = _failing_manifest(fp, binary, MANIFEST_UNKNOWN + "\n", returncode=2)
    assert exc.command == [binary, "manifest", "--", REF]
    assert exc.returncode == 2
    assert exc.stderr == MANIFEST_UNKNOWN


def test_one_line_has_cause_and_fix(fp, binary):
    exc = _failing_manifest(fp, binary, "2025/01/01 12:00:00 retrying\n" + UNAUTHORIZED + "\n")
    line = exc.one_line()
    assert "\n" not in line
    assert line.startswith(f"{crane._NONE_SENT}: fetching manifest 127.0.0.1:41993/x/y:latest")
    assert " -- fix: log in with `oci-crane login REGISTRY -u USER --password-stdin`" in line
    assert str(exc) == line  # what a traceback ends with is the same line the CLI prints


def test_unknown_message_is_a_plain_crane_error_quoting_crane(fp, binary):
    stderr = "Error: unsupported MediaType: \"application/vnd.example.thing\"\n"
    exc = _failing_manifest(fp, binary, stderr)
    assert type(exc) is errors.CraneError
    assert exc.cause == 'crane failed: unsupported MediaType: "application/vnd.example.thing"'
    assert exc.fix == errors.CraneError.default_fix


def test_last_error_line_is_quoted_when_crane_logs_before_it(fp, binary):
    stderr = "2025/01/01 12:00:00 pushing blob\nError: first\nsome detail\nError: the real one\n"
    exc = _failing_manifest(fp, binary, stderr)
    assert exc.cause == "crane failed: the real one"


def test_empty_stderr_names_the_exit_status(fp, binary):
    exc = _failing_manifest(fp, binary, "", returncode=137)
    assert type(exc) is errors.CraneError
    assert exc.cause == "crane failed: crane exited with status 137"
    assert exc.returncode == 137


def test_classify_without_error_prefix_uses_last_line():
    exc = classify(["crane", "ls", "r/x"], 1, "first line\n\nGET https://r/v2/x/tags/list: NAME_UNKNOWN: nope\n\n")
    assert type(exc) is errors.NotFoundError
    assert exc.cause == "not found in the registry: GET https://r/v2/x/tags/list: NAME_UNKNOWN: nope"


def test_denied_at_the_token_endpoint_is_unauthorized(fp, binary):
    stderr = ("Error: fetching manifest ghcr.io/acme/private:v1: GET https://ghcr.io/token?scope=repository%3Aacme"
              "%2Fprivate%3Apull&service=ghcr.io: DENIED: denied")
    exc = _failing_manifest(fp, binary, stderr + "\n")
    assert type(exc) is errors.UnauthorizedError
    assert exc.cause.startswith(f"{crane._NONE_SENT}: fetching manifest ghcr.io/acme/private:v1: ")
    assert exc.cause.endswith("DENIED: denied")
    assert "scope=" not in exc.cause  # query strings are redacted wholesale


# --- secrets ------------------------------------------------------------------------------------------------

LEAKY = [
    ('Error: fetching manifest host/x:y: Get "https://user:s3cr3t@host/v2/": dial tcp: lookup host: no such host',
     ["s3cr3t", "user:"], errors.NetworkError),
    ("Error: GET https://host/v2/x/manifests/y: UNAUTHORIZED: authentication required (sent Authorization: Bearer "
     "abc.def)", ["abc.def"], errors.UnauthorizedError),
    ('Error: failed to read blob: Get "https://bucket.s3.amazonaws.com/blobs/ab?X-Amz-Algorithm=AWS4-HMAC-SHA256'
     '&X-Amz-Credential=AKIAEXAMPLE%2F20250101&X-Amz-Signature=deadbeef": read tcp 10.0.0.2:5000: connection reset'
     " by peer", ["deadbeef", "AKIAEXAMPLE", "X-Amz-Signature"], errors.NetworkError),
]


@pytest.mark.parametrize(("stderr", "secrets", "cls"), LEAKY, ids=["userinfo", "bearer", "presigned"])
def test_secrets_never_reach_the_error(fp, binary, stderr, secrets, cls):
    exc = _failing_manifest(fp, binary, stderr + "\n")
    assert type(exc) is cls
    assert "***" in exc.stderr
    for secret in secrets:
        for shown in (str(exc), exc.stderr, exc.one_line(), exc.cause, " ".join(exc.command)):
            assert secret not in shown


@pytest.mark.parametrize(("text", "expected"), [
    ("Get https://user:s3cr3t@host/v2/", "Get https://***@host/v2/"),
    ('Get "http://me:pa55word@127.0.0.1:5000/v2/": EOF', 'Get "http://***@127.0.0.1:5000/v2/": EOF'),
    ("Authorization: Bearer abc.def", "Authorization: ***"),
    ('authorization="Basic dXNlcjpwYXNz"', 'authorization="***"'),
    ("Bearer abc.def", "Bearer ***"),
    ("password: hunter2, then", "password: ***, then"),
    ("token=xyz", "token=***"),
    ("GET https://b.s3.amazonaws.com/o?X-Amz-Signature=deadbeef&X-Amz-Credential=AKIA EOF",
     "GET https://b.s3.amazonaws.com/o?*** EOF"),
    ('Get "https://cdn.example/b?sig=abc&exp=1": EOF', 'Get "https://cdn.example/b?***": EOF'),
    # Ordinary crane messages pass through untouched.
    (UNAUTHORIZED, UNAUTHORIZED),
    (MANIFEST_UNKNOWN, MANIFEST_UNKNOWN),
    (REFUSED, REFUSED),
])
def test_redact(text, expected):
    assert redact(text) == expected


# --- locating crane -----------------------------------------------------------------------------------------

def test_override_pointing_nowhere_is_crane_missing(fp, tmp_path, monkeypatch):
    fp.allow_unregistered(False)
    missing = tmp_path / "no" / "crane"
    monkeypatch.setenv("OCI_CRANE_BINARY", str(missing))
    with pytest.raises(errors.CraneMissingError) as info:
        Crane().manifest(REF)
    exc = info.value
    assert type(exc) is errors.CraneMissingError
    assert isinstance(exc, FileNotFoundError)
    assert exc.cause == f"OCI_CRANE_BINARY={missing} is not an executable file"
    assert "bash bin/install-crane" in exc.fix
    assert "go install github.com/google/go-containerregistry/cmd/crane@v0.21.9" in exc.fix
    assert "fix: install crane >= 0.21.8" in exc.one_line()
    assert crane.install_hint() == exc.fix
    assert len(fp.calls) == 0


def test_override_not_executable_is_crane_missing(fp, tmp_path, monkeypatch):
    path = tmp_path / "crane"
    path.write_text("#!/bin/sh\n")
    path.chmod(0o644)
    monkeypatch.setenv("OCI_CRANE_BINARY", str(path))
    with pytest.raises(errors.CraneMissingError, match="is not an executable file"):
        find_crane()
    assert len(fp.calls) == 0


def test_no_crane_anywhere_is_crane_missing(fp, tmp_path, monkeypatch):
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.delenv("OCI_CRANE_BINARY", raising=False)
    monkeypatch.setattr(crane, "BUNDLED_BINARY", tmp_path / "not-bundled" / "crane")
    monkeypatch.setenv("PATH", str(empty))
    with pytest.raises(errors.CraneMissingError) as info:
        Crane().digest(REF)
    assert type(info.value) is errors.CraneMissingError
    assert info.value.cause == "crane was not found (OCI_CRANE_BINARY, the bundled copy, PATH)"
    assert "go install github.com/google/go-containerregistry/cmd/crane@v0.21.9" in info.value.fix
    assert len(fp.calls) == 0


def test_crane_on_path_is_used(fp, tmp_path, monkeypatch):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    on_path = _executable(bindir / "crane")
    monkeypatch.delenv("OCI_CRANE_BINARY", raising=False)
    monkeypatch.setattr(crane, "BUNDLED_BINARY", tmp_path / "not-bundled" / "crane")
    monkeypatch.setenv("PATH", str(bindir))
    _register_version(fp, on_path)
    assert find_crane() == on_path


def test_bundled_copy_wins_over_path(fp, tmp_path, monkeypatch):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    _executable(bindir / "crane")
    bundled = _executable(tmp_path / "bundled-crane")
    monkeypatch.delenv("OCI_CRANE_BINARY", raising=False)
    monkeypatch.setattr(crane, "BUNDLED_BINARY", Path(bundled))
    monkeypatch.setenv("PATH", str(bindir))
    _register_version(fp, bundled)
    assert find_crane() == bundled


# --- version ------------------------------------------------------------------------------------------------

def test_too_old_crane_is_refused(fp, binary):
    _register_version(fp, binary, "v0.21.6")
    with pytest.raises(errors.CraneTooOldError) as info:
        Crane().manifest(REF)
    exc = info.value
    assert type(exc) is errors.CraneTooOldError
    assert isinstance(exc, errors.CraneMissingError)
    assert exc.cause == f"crane 0.21.6 at {binary} is too old (need >= 0.21.8; 0.21.6 hangs)"
    assert "install crane >= 0.21.8" in exc.fix
    assert fp.call_count([binary, "manifest", "--", REF]) == 0


@pytest.mark.parametrize("version", ["0.21.8", "v0.21.9", "v0.22.0", "v1.0.0", "0.21.10",
                                     "4c9a4ee0b1b2f7a5f3e3c1d2e4f5a6b7c8d9e0f1"])
def test_recent_or_unversioned_crane_is_accepted(fp, binary, version):
    _register_version(fp, binary, version)
    assert find_crane() == binary


def test_version_is_checked_once_per_binary(fp, binary):
    _register_version(fp, binary)
    fp.register([binary, "digest", "--", REF], stdout="sha256:" + "ab" * 32 + "\n")
    fp.register([binary, "digest", "--", REF], stdout="sha256:" + "cd" * 32 + "\n")
    assert Crane().digest(REF) == "sha256:" + "ab" * 32
    assert Crane().digest(REF) == "sha256:" + "cd" * 32
    assert fp.call_count([binary, "version"]) == 1


def test_failing_version_is_crane_missing(fp, binary):
    fp.register([binary, "version"], stderr="boom\n", returncode=2)
    with pytest.raises(errors.CraneMissingError) as info:
        find_crane()
    assert type(info.value) is errors.CraneMissingError
    assert info.value.cause == f"crane at {binary} failed `crane version` (exit 2)"


@pytest.mark.parametrize(("text", "expected"), [
    ("v0.21.9", (0, 21, 9)),
    ("0.21.8", (0, 21, 8)),
    ("v0.21.6\n", (0, 21, 6)),
    ("v0.21.10", (0, 21, 10)),
    ("v1.2.3-rc.1", (1, 2, 3)),
    ("crane version v0.20.2", (0, 20, 2)),
    ("4c9a4ee0b1b2f7a5f3e3c1d2e4f5a6b7c8d9e0f1", None),
    ("(devel)", None),
    ("", None),
])
def test_parse_version(text, expected):
    assert parse_version(text) == expected


# --- running ------------------------------------------------------------------------------------------------

def test_success_returns_exact_stdout_bytes(fp, binary):
    body = b'{"schemaVersion":2,  "mediaType":"application/vnd.oci.image.manifest.v1+json"}\n'
    _register_version(fp, binary)
    fp.register([binary, "manifest", "--", REF], stdout=body)
    assert Crane().manifest(REF) == body


def test_timeout_is_crane_timeout_error(fp, tmp_path, monkeypatch):
    # pytest-subprocess's `wait=` does not make communicate(timeout=...) raise, so this crane really hangs.
    hanging = _executable(tmp_path / "crane", 'if [ "$1" = version ]; then echo v0.21.9; else exec sleep 30; fi')
    monkeypatch.setenv("OCI_CRANE_BINARY", hanging)
    fp.pass_command([hanging, "version"])
    fp.pass_command([hanging, "manifest", "--", REF])
    started = time.monotonic()
    with pytest.raises(errors.CraneTimeoutError) as info:
        Crane(timeout=0.5).manifest(REF)
    assert time.monotonic() - started < 10
    exc = info.value
    assert type(exc) is errors.CraneTimeoutError
    assert isinstance(exc, TimeoutError)
    assert isinstance(exc, errors.NetworkError)
    assert exc.cause.startswith("`crane manifest` got no answer within")
    assert exc.command == [hanging, "manifest", "--", REF]
    assert isinstance(exc.__cause__, subprocess.TimeoutExpired)
    assert "OCI_CRANE_TIMEOUT" in exc.fix


def test_timeout_raised_inside_the_fake_is_mapped(fp, binary):
    def hang(process):
        raise subprocess.TimeoutExpired(process.args, 0.5)

    _register_version(fp, binary)
    fp.register([binary, "manifest", "--", REF], callback=hang)
    with pytest.raises(errors.CraneTimeoutError) as info:
        Crane(timeout=0.5).manifest(REF)
    assert type(info.value) is errors.CraneTimeoutError


@pytest.mark.parametrize("call", [
    lambda c: c.manifest(REF),
    lambda c: c.digest(REF),
    lambda c: c.run("ls", "127.0.0.1:5000/x/y"),
    lambda c: c.push(Path("/tmp/layout"), REF),
], ids=["manifest", "digest", "ls", "push"])
def test_offline_starts_no_process(fp, binary, call):
    fp.allow_unregistered(False)
    with pytest.raises(errors.OfflineError) as info:
        call(Crane(offline=True))
    assert type(info.value) is errors.OfflineError
    assert isinstance(info.value, LookupError)
    assert info.value.cause.startswith("offline mode forbids `crane ")
    assert "--offline" in info.value.fix
    assert len(fp.calls) == 0
    assert fp.call_count([binary, "version"]) == 0


def test_offline_blob_starts_no_process(fp, binary, tmp_path):
    fp.allow_unregistered(False)
    with pytest.raises(errors.OfflineError, match="offline mode forbids `crane blob`"):
        Crane(offline=True).blob(PINNED, tmp_path / "blob")
    assert len(fp.calls) == 0


def test_plain_argv_has_no_insecure_or_platform(fp, binary):
    _register_version(fp, binary)
    fp.register([binary, "manifest", "--", REF], stdout="{}")
    fp.register([binary, "export", "--", REF, "-"], stdout="")
    Crane().manifest(REF)
    Crane().run("export", REF, "-")
    assert list(fp.calls) == [[binary, "version"], [binary, "manifest", "--", REF], [binary, "export", "--", REF, "-"]]


def test_insecure_is_appended_when_set(fp, binary):
    _register_version(fp, binary)
    fp.register([binary, "manifest", "--insecure", "--", REF], stdout="{}")
    Crane(insecure=True).manifest(REF)
    assert list(fp.calls)[-1] == [binary, "manifest", "--insecure", "--", REF]


def test_platform_is_appended_only_where_asked(fp, binary):
    _register_version(fp, binary)
    fp.register([binary, "export", "--platform", "linux/arm64", "--", REF, "-"], stdout="")
    fp.register([binary, "export", "--insecure", "--platform", "linux/arm64", "--", REF, "-"], stdout="")
    Crane().run("export", REF, "-", platform="linux/arm64")
    Crane(insecure=True).run("export", REF, "-", platform="linux/arm64")
    assert list(fp.calls)[1:] == [
        [binary, "export", "--platform", "linux/arm64", "--", REF, "-"],
        [binary, "export", "--insecure", "--platform", "linux/arm64", "--", REF, "-"],
    ]


def test_crane_gets_no_color_and_the_users_environment(fp, binary, monkeypatch):
    monkeypatch.setenv("DOCKER_CONFIG", "/somewhere/docker")
    monkeypatch.setenv("NO_COLOR", "0")
    seen: list[dict[str, str]] = []

    def record(process):
        seen.append(process.kwargs["env"])

    fp.register([binary, "version"], stdout="v0.21.9\n", callback=record)
    fp.register([binary, "manifest", "--", REF], stdout="{}", callback=record)
    Crane().manifest(REF)
    assert len(seen) == 2
    for env in seen:
        assert env["NO_COLOR"] == "1"
        assert env["DOCKER_CONFIG"] == "/somewhere/docker"


def test_blob_failure_is_classified(fp, binary, tmp_path):
    _register_version(fp, binary)
    fp.register([binary, "blob", "--", PINNED], stderr=INTEGRITY + "\n", returncode=1)
    with pytest.raises(errors.CraneError) as info:
        Crane().blob(PINNED, tmp_path / "blob")
    assert type(info.value) is errors.CraneIntegrityError
    assert info.value.command == [binary, "blob", "--", PINNED]
    assert info.value.stderr == INTEGRITY


# --- a crane built for another machine ----------------------------------------------------------------------

def _foreign_executable(path: Path) -> tuple[str, str]:
    """An executable file the kernel refuses (ENOEXEC): another OS's header. Returns (its platform, strerror)."""
    if host_platform().startswith("linux"):
        head, built_for = bytes.fromhex("cffaedfe0c000001"), "darwin/arm64"  # Mach-O, arm64
    else:
        head, built_for = b"\x7fELF\x02\x01\x01" + bytes(9) + b"\x02\x00\xb7\x00", "linux/arm64"  # ELF, aarch64
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(head + bytes(4096))
    path.chmod(0o755)
    return built_for, os.strerror(errno.ENOEXEC)


def _foreign_bundled_and_path_crane(tmp_path: Path, monkeypatch, path_version: str) -> tuple[Path, str, str, str]:
    """A bundled crane built for another platform, and on PATH a script answering ``crane version``."""
    foreign = tmp_path / "bundled" / "crane"
    built_for, strerror = _foreign_executable(foreign)
    bindir = tmp_path / "bin"
    bindir.mkdir()
    on_path = _executable(bindir / "crane", f"echo {path_version}")
    monkeypatch.delenv("OCI_CRANE_BINARY", raising=False)
    monkeypatch.setattr(crane, "BUNDLED_BINARY", foreign)
    monkeypatch.setenv("PATH", str(bindir))
    return foreign, built_for, strerror, on_path


def test_bundled_crane_that_cannot_run_here_gives_way_to_path_with_one_warning(tmp_path, monkeypatch, caplog):
    foreign, built_for, strerror, on_path = _foreign_bundled_and_path_crane(tmp_path, monkeypatch, "v0.21.9")
    with caplog.at_level(logging.WARNING, logger="oci_crane_loader.registry.crane"):
        chosen = crane.choose_crane()
        assert find_crane() == on_path  # asked again: decided once, warned once
    assert (chosen.path, chosen.source, chosen.version, chosen.platform) == (on_path, "PATH", "v0.21.9", None)
    reason = (f"the bundled copy is unusable: crane at {foreign} cannot be started "
              f"({strerror}: built for {built_for}, this host is {host_platform()})")
    assert chosen.skipped == (reason,)
    warnings = [record.getMessage() for record in caplog.records]
    assert warnings == [f"{reason}; using crane v0.21.9 from PATH at {on_path}"]
    detail = check_crane().detail
    assert detail.startswith(f"{on_path} (version v0.21.9, built for a script or unknown executable format; "
                             f"found via PATH; {reason};")


def test_unrunnable_bundled_crane_and_a_too_old_one_on_path_names_both_problems(tmp_path, monkeypatch):
    _, built_for, _, old = _foreign_bundled_and_path_crane(tmp_path, monkeypatch, "v0.21.6")
    with pytest.raises(errors.CraneTooOldError) as info:
        find_crane()
    assert f"built for {built_for}" in info.value.cause
    assert f"PATH is unusable: crane 0.21.6 at {old} is too old" in info.value.cause
    assert info.value.cause.endswith("; no other crane to use")


def test_every_fix_names_a_command_the_user_has():
    """Fixes name `oci-crane` subcommands that exist, never a bare `crane` command (crane is not on PATH)."""
    from oci_crane_loader.cli import build_parser

    subcommands = set(next(a for a in build_parser()._actions if a.dest == "command").choices)
    fixes = {cls.__name__: cls.default_fix for cls in _all_error_classes(errors.OciCraneError)}
    named = set()
    for name, fix in fixes.items():
        assert not re.search(r"`crane ", fix), f"{name}'s fix names a crane command: {fix}"
        named |= set(re.findall(r"`oci-crane (\w+)", fix))
    assert named >= {"login", "ls"}  # the two fixes that send users to a registry command
    assert named <= subcommands


def _all_error_classes(base: type) -> list[type]:
    found = [base]
    for sub in base.__subclasses__():
        found += _all_error_classes(sub)
    return found
