"""Table tests for oci_crane_loader.reference, mirroring go-containerregistry's pkg/name tables (v0.21.9)."""

from __future__ import annotations

import dataclasses

import pytest

from oci_crane_loader.errors import InvalidReferenceError
from oci_crane_loader.reference import (
    Reference,
    is_loopback,
    is_registry_host,
    may_fall_back_to_http,
    parse_reference,
)

D = "sha256:deadb33fdeadb33fdeadb33fdeadb33fdeadb33fdeadb33fdeadb33fdeadb33f"  # ggcr's validDigest
HUB = "index.docker.io"
NEVER_ENDS = (  # ggcr's tag_test.go too-long tag
    "thisisthetagthatneverendsitgoesonandonmyfriendsomepeoplestartedtaggingitnotknowingwhatitwasandtheyllcontinue"
    "taggingitforeverjustbecausethisisthetagthatneverends"
)


# (typed, registry, repository, tag, digest)
GOOD = [
    # Defaults: Docker Hub, library/ for single-component names, tag latest.
    ("ubuntu", HUB, "library/ubuntu", "latest", None),
    ("ubuntu:22.04", HUB, "library/ubuntu", "22.04", None),
    ("library/ubuntu", HUB, "library/ubuntu", "latest", None),
    ("docker.io/ubuntu", HUB, "library/ubuntu", "latest", None),
    ("index.docker.io/ubuntu", HUB, "library/ubuntu", "latest", None),
    ("index.docker.io/library/ubuntu", HUB, "library/ubuntu", "latest", None),
    ("acme/tiny", HUB, "acme/tiny", "latest", None),
    ("docker.io/acme/tiny:v1", HUB, "acme/tiny", "v1", None),
    ("namespace/pathcomponent/image", HUB, "namespace/pathcomponent/image", "latest", None),
    ("ubuntu:5000", HUB, "library/ubuntu", "5000", None),  # no '/': the ':' starts a tag, not a port
    # Registries: a first component with '.' or ':', or exactly localhost; no library/ prefix there.
    ("localhost/foo", "localhost", "foo", "latest", None),
    ("localhost:5000/foo", "localhost:5000", "foo", "latest", None),
    ("localhost:5000/foo:bar", "localhost:5000", "foo", "bar", None),
    ("127.0.0.1:5000/acme/tiny:v1", "127.0.0.1:5000", "acme/tiny", "v1", None),
    ("[::1]:5000/xy", "[::1]:5000", "xy", "latest", None),
    ("[::1]/xy:v2", "[::1]", "xy", "v2", None),
    ("[2001:db8::1]:5000/a/b", "[2001:db8::1]:5000", "a/b", "latest", None),
    ("ghcr.io/a/b/c:tag", "ghcr.io", "a/b/c", "tag", None),
    ("mirror.gcr.io/ubuntu", "mirror.gcr.io", "ubuntu", "latest", None),
    ("gcr.io/google.com/project-id/hello-world", "gcr.io", "google.com/project-id/hello-world", "latest", None),
    ("gcr.io:9001/xy", "gcr.io:9001", "xy", "latest", None),
    ("domain.with.port:9001/image:latest", "domain.with.port:9001", "image", "latest", None),
    ("www.example.test:12345/repo/path", "www.example.test:12345", "repo/path", "latest", None),
    ("us.gcr.io/project-id/image:with.period.in.tag", "us.gcr.io", "project-id/image", "with.period.in.tag", None),
    (
        "gcr.io/project-id/image:w1th-alpha_num3ric.PLUScaps",
        "gcr.io",
        "project-id/image",
        "w1th-alpha_num3ric.PLUScaps",
        None,
    ),
    ("gcr.io/xy:_underscore_first", "gcr.io", "xy", "_underscore_first", None),
    ("gcr.io/xy:" + "t" * 128, "gcr.io", "xy", "t" * 128, None),
    ("ex.io/" + "r" * 255, "ex.io", "r" * 255, "latest", None),
    # oci:// is our own prefix, stripped before parsing.
    ("oci://ghcr.io/acme/llama:v1", "ghcr.io", "acme/llama", "v1", None),
    ("oci://ubuntu", HUB, "library/ubuntu", "latest", None),
    ("OCI://localhost:5000/mm", "localhost:5000", "mm", "latest", None),
    # Digests: sha256 only; with a tag too, the digest is what is pulled and the tag is kept for display.
    ("gcr.io/g-convoy/hello-world@" + D, "gcr.io", "g-convoy/hello-world", None, D),
    ("example.text/foo/bar@" + D, "example.text", "foo/bar", None, D),
    ("library/ubuntu@" + D, HUB, "library/ubuntu", None, D),
    ("nginx@" + D, HUB, "library/nginx", None, D),
    ("nginx:latest@" + D, HUB, "library/nginx", "latest", D),
    ("example.text:8443/foo/bar:latest@" + D, "example.text:8443", "foo/bar", "latest", D),
    ("example.text/foo/bar:v1.0.0-alpine@" + D, "example.text", "foo/bar", "v1.0.0-alpine", D),
    ("oci://127.0.0.1:5000/acme/tiny:v1@" + D, "127.0.0.1:5000", "acme/tiny", "v1", D),
]


@pytest.mark.parametrize(("typed", "registry", "repository", "tag", "digest"), GOOD)
def test_good_references(typed, registry, repository, tag, digest):
    ref = parse_reference(typed)
    assert (ref.registry, ref.repository, ref.tag, ref.digest) == (registry, repository, tag, digest)
    assert ref.original == typed
    assert ref.repository_name == f"{registry}/{repository}"
    assert ref.name == (f"{registry}/{repository}@{digest}" if digest else f"{registry}/{repository}:{tag}")
    # The normalised name parses back to the same image.
    again = parse_reference(ref.name)
    assert (again.registry, again.repository, again.digest) == (registry, repository, digest)


@pytest.mark.parametrize(
    ("typed", "name"),
    [
        ("ubuntu", "index.docker.io/library/ubuntu:latest"),
        ("docker.io/ubuntu", "index.docker.io/library/ubuntu:latest"),
        ("localhost/foo", "localhost/foo:latest"),
        ("localhost:5000/foo", "localhost:5000/foo:latest"),
        ("127.0.0.1:5000/acme/tiny:v1", "127.0.0.1:5000/acme/tiny:v1"),
        ("[::1]:5000/xy", "[::1]:5000/xy:latest"),
        ("ghcr.io/a/b/c:tag", "ghcr.io/a/b/c:tag"),
        ("oci://ghcr.io/a/b:c", "ghcr.io/a/b:c"),
        ("nginx:latest@" + D, "index.docker.io/library/nginx@" + D),
    ],
)
def test_name_matches_ggcr(typed, name):
    assert parse_reference(typed).name == name


# (typed, words the cause must contain)
BAD = [
    # Empty input, whitespace, control characters.
    ("", "empty"),
    ("   ", "empty"),
    ("oci://", "nothing follows"),
    ("white space", "whitespace"),
    (" ubuntu", "whitespace"),
    ("ubuntu\n", "whitespace"),
    ("ubuntu\tx", "whitespace"),
    ("ubu\x00ntu", "control character"),
    ("gcr.io/project-id/wrong-length:white space", "whitespace"),
    # Repositories: lowercase [a-z0-9_./-], 2..255 characters, no empty/./.. components.
    ("Acme/x", "must be lowercase"),
    ("Ubuntu", "must be lowercase"),
    ("ghcr.io/Acme/tiny", "must be lowercase"),
    ("gcr.io/a+b", "may only contain"),
    ("gcr.io/a%2fb", "may only contain"),
    ("a", "2 to 255"),  # ggcr v0.21.9 needs 2 characters
    ("[::1]:5000/x", "2 to 255"),
    ("ex.io/" + "r" * 256, "2 to 255"),
    ("x" * 248, "2 to 255"),  # 256 with library/ (ggcr's digest path checks the prefixed name)
    ("gcr.io/a//b", "empty, '.' or '..'"),
    ("gcr.io/xy/", "empty, '.' or '..'"),
    ("/foo", "empty, '.' or '..'"),
    ("gcr.io/a/../b", "empty, '.' or '..'"),
    ("gcr.io/./b", "empty, '.' or '..'"),
    ("gcr.io/", "missing"),
    ("localhost/", "missing"),
    # Tags: [A-Za-z0-9_][A-Za-z0-9_.-]{0,127}.
    ("library/ubuntu:", "tag name must follow"),
    ("gcr.io/project-id/bad_chars:c@n'tuse", "digest"),
    ("gcr.io/xy:t!", "tag 't!'"),
    ("gcr.io/xy:.hidden", "must not start with"),
    ("gcr.io/xy:-dash", "must not start with"),
    ("gcr.io/xy:..", "must not start with"),
    ("gcr.io/xy:" + "t" * 129, "1 to 128"),
    ("gcr.io/project-id/too-many-chars:" + NEVER_ENDS, "1 to 128"),
    ("gcr.io/foo:bar:baz", "may only contain"),
    # Digests: one '@', sha256 only, 64 lowercase hex.
    ("gcr.io/project-id/unknown-alg@unknown:abc123", "only sha256"),
    ("gcr.io/xy@sha512:" + "a" * 128, "only sha256"),
    ("gcr.io/project-id/wrong-length@sha256:d34db33fd34db33f", "64 lowercase hex"),
    ("gcr.io/xy@sha256:" + "A" * 64, "64 lowercase hex"),
    ("gcr.io/xy@sha256:" + "a" * 65, "64 lowercase hex"),
    ("repo@sha256:" + ":" * 64, "64 lowercase hex"),
    ("repo@sha256:" + "sh" * 32, "64 lowercase hex"),
    ("gcr.io/project-id/missing-digest@", "only sha256"),
    ("repo@" + D + "@" + D, "more than one '@'"),
    ("library/nginx:@" + D, "tag name must follow"),
    ("@" + D, "missing"),
    # Registries: what Go's url.Parse keeps unchanged as a host[:port].
    ("gcr?com/xy", "may only contain"),  # no . or : so it is all repository
    ("gcr?com.io/xy", "registry 'gcr?com.io' is not a valid host"),
    ("gcr.io:port/xy", "invalid port"),
    ("gcr.io:80:x/xy", "invalid port"),
    ("[::1/xy", "[IPv6]"),
    ("x[::1]/xy", "[IPv6]"),
    ("[::1]x/xy", "invalid port"),
    ("[1.2.3.4]/xy", "IPv6 address"),
    ("[zz::1]:5000/xy", "IPv6 address"),
    ("[fe80::1%25en0]/xy", "not a valid host"),
    ("gcr.io\\x/xy", "not a valid host"),
    ("gcr.io{}/xy", "not allowed in a host"),
    ("../xy", "not a host name"),
    ("./xy", "not a host name"),
    # A leading '-': crane would read the reference as its own options (--user-agent=..., -v -v -v).
    ("--user-agent=evil.io/repo:tag", "registry '--user-agent=evil.io' may not start with '-'"),
    ("-vvv.io/repo:tag", "registry '-vvv.io' may not start with '-'"),
    ("oci://-vvv.io/repo", "registry '-vvv.io' may not start with '-'"),
    ("-x:5000/repo", "registry '-x:5000' may not start with '-'"),
    ("-vvv/repo", "may not start with '-'"),
    ("--repo", "may not start with '-'"),
    ("ghcr.io/acme/-x", "may not start with '-'"),
    ("--x@" + D, "may not start with '-'"),
    # Schemes other than oci://.
    ("https://gcr.io/xy", "oci://"),
    ("http://localhost:5000/xy", "oci://"),
    ("oci://oci://gcr.io/xy", "oci://"),
]


@pytest.mark.parametrize(("typed", "words"), BAD)
def test_bad_references(typed, words):
    with pytest.raises(InvalidReferenceError) as info:
        parse_reference(typed)
    cause = info.value.cause
    assert cause.startswith(f"invalid reference {typed!r}: ")
    assert words in cause
    assert info.value.fix  # the default fix shows the expected shape
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize(("typed", "shown"), [("someone@gcr.io/xy", "gcr.io/xy"), ("b@char/image", "char/image"),
                                              ("oci://me:pa55@localhost:5000/a/b:v1", "localhost:5000/a/b:v1")])
def test_userinfo_is_refused_without_being_echoed(typed, shown):
    with pytest.raises(InvalidReferenceError) as info:
        parse_reference(typed)
    assert info.value.cause == f"invalid reference '***@{shown}': a reference cannot hold credentials (user:password@)"
    assert typed.rpartition("@")[0].removeprefix("oci://") + "@" not in info.value.one_line()


def test_uppercase_message_is_clear():
    with pytest.raises(
        InvalidReferenceError, match=r"invalid reference 'Acme/x': repository 'Acme/x' must be lowercase"
    ):
        parse_reference("Acme/x")


def test_registry_is_kept_as_typed_apart_from_docker_io():
    # ggcr neither lowercases registries nor rewrites anything but exactly "docker.io".
    assert parse_reference("GCR.io/xy").registry == "GCR.io"
    assert parse_reference("registry-1.docker.io/xy").registry == "registry-1.docker.io"
    assert parse_reference("registry-1.docker.io/xy").repository == "xy"  # library/ only for index.docker.io


def test_registries_ggcr_accepts():
    # Go's url.Parse accepts these hosts unchanged, so crane would too.
    for registry in ("host:", "a:b:80", "[::1]:", "[::ffff:1.2.3.4]:1", "münchen.de", "::1"):
        assert parse_reference(f"{registry}/xy").registry == registry


def test_str_is_what_the_user_typed_without_oci_prefix():
    assert str(parse_reference("oci://ghcr.io/a/b:c")) == "ghcr.io/a/b:c"
    assert str(parse_reference("ubuntu")) == "ubuntu"
    assert str(parse_reference("nginx:latest@" + D)) == "nginx:latest@" + D


def test_reference_is_frozen_and_hashable():
    ref = parse_reference("ubuntu")
    with pytest.raises(dataclasses.FrozenInstanceError):
        ref.tag = "x"  # type: ignore[misc]
    assert ref == parse_reference("ubuntu")
    assert len({ref, parse_reference("ubuntu"), parse_reference("docker.io/ubuntu")}) == 2  # original differs
    assert isinstance(ref, Reference)


def test_with_digest_pins_the_repository():
    assert parse_reference("ghcr.io/a/b:v1").with_digest(D) == f"ghcr.io/a/b@{D}"
    assert parse_reference("ubuntu").with_digest(D) == f"{HUB}/library/ubuntu@{D}"
    assert parse_reference(f"ubuntu:v1@{D}").name == parse_reference("ubuntu").with_digest(D)


@pytest.mark.parametrize(("first", "host"), [
    ("localhost", True), ("ghcr.io", True), ("host:5000", True), ("[::1]:5000", True), ("acme", False),
    ("localhostx", False), ("library", False),
])
def test_is_registry_host(first, host):
    # ggcr NewRepository: the first component is a registry if it is localhost or holds a '.' or ':'.
    assert is_registry_host(first) is host
    assert (parse_reference(f"{first}/xy").registry == first) is host


# ggcr Registry.Scheme() (pkg/name/registry.go): "http" (https, then http) for these, https alone otherwise.
PLAIN_HTTP_FALLBACK = ["localhost:5000", "localhost:", "a.localhost", "a.localhost:5000", "127.0.0.1", "127.0.0.1:5000",
                       "::1", "[::1]", "[::1]:5000", "10.0.0.1", "10.255.1.2:5000", "172.16.0.1", "172.31.255.255:443",
                       "192.168.1.1:5000"]
HTTPS_ONLY = ["localhost", "ghcr.io", "127.0.0.2:5000", "127.1:5000", "172.32.0.1", "172.15.255.255", "192.169.0.1",
              "11.0.0.1", "169.254.0.1", "[fd00::1]:5000", "fd00::1", "10.0.0.1.nip.io", "a.localhost.com",
              "127.0.0.1.x", "a.localhost:123456"]


@pytest.mark.parametrize("host", PLAIN_HTTP_FALLBACK)
def test_plain_http_fallback_as_ggcr(host):
    assert may_fall_back_to_http(host, insecure=False)


@pytest.mark.parametrize("host", HTTPS_ONLY)
def test_https_only_as_ggcr(host):
    assert not may_fall_back_to_http(host, insecure=False)
    assert may_fall_back_to_http(host, insecure=True)  # --insecure: every registry


@pytest.mark.parametrize(("host", "loopback"), [
    ("localhost", True), ("localhost:5000", True), ("a.localhost", True), ("127.0.0.2:5000", True),
    ("[::1]:5000", True), ("10.0.0.1", False), ("ghcr.io", False), ("localhost.com", False),
])
def test_is_loopback(host, loopback):
    assert is_loopback(host) is loopback
