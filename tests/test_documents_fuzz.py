"""Fuzzing of manifest, index and config parsing (oci.py, formats/, formats.index.select_child) with hostile documents.

Whatever a registry serves, parsing and planning it either succeeds or raises one OciCraneError (cause and fix):
never a RecursionError, a ValueError, a UnicodeError or any other traceback. A plan that comes out never names a
file outside the model directory.
"""

from __future__ import annotations

import json
import posixpath
import string
from typing import Any

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from oci_crane_loader import formats, oci
from oci_crane_loader.errors import OciCraneError
from oci_crane_loader.formats import Action, dmr, image, kitops, modelpack, ollama, oras
from oci_crane_loader.formats.index import select_child

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                        HealthCheck.data_too_large])

DEEP_ARRAY = b"[" * 100_000 + b"]" * 100_000
DEEP_OBJECT = b'{"a":' * 100_000 + b"1" + b"}" * 100_000
BIG_INT = b"1" * 5000
# Raw JSON values json.dumps cannot write (or would refuse to): spliced in where the generator put a marker.
_MARKER = "\u0000POISON\u0000"
_POISON = st.sampled_from([DEEP_ARRAY, DEEP_OBJECT, BIG_INT, b"-" + BIG_INT, b"1e999999", b"-1e999999", b"NaN",
                           b"Infinity", b"9223372036854775808", b"18446744073709551616", b"1" * 400, b"-1",
                           b'"\\ud800"', b'"\\udcff"', b"1.5", b"2.0"])


def _splice(document: Any, poison: list[bytes]) -> bytes:
    raw = json.dumps(document).encode()
    for value in poison:
        raw = raw.replace(json.dumps(_MARKER).encode(), value, 1)
    return raw


# --- strategies ------------------------------------------------------------------------------------------------

_ANY_TEXT = st.text(max_size=20) | st.sampled_from(["", "\x1b]0;owned\x07", "\u202e", "\ud800", "\udcff", "x" * 5000])
_SCALAR = st.none() | st.booleans() | st.integers() | st.floats() | _ANY_TEXT | st.just(_MARKER)
RANDOM_JSON = st.recursive(_SCALAR, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(_ANY_TEXT, inner, max_size=4), max_leaves=20)

_MISSING = object()
_MEDIA_TYPES = sorted({
    oci.OCI_MANIFEST, oci.OCI_INDEX, oci.DOCKER_MANIFEST, oci.DOCKER_MANIFEST_LIST, oci.OCI_EMPTY,
    *image.CONFIG_TYPES, *image.LAYER_TYPES, oras.DEFAULT_ARTIFACT_TYPE,
    dmr.CONFIG_V01, dmr.CONFIG_V02, dmr.SAFETENSORS, dmr.GGUF, dmr.DDUF, dmr.VLLM_CONFIG_TAR, dmr.DIR_TAR,
    dmr.LICENSE, dmr.MMPROJ, dmr.CHAT_TEMPLATE, dmr.MODEL_FILE,
    kitops.CONFIG, kitops.ARTIFACT_TYPE, "application/vnd.kitops.modelkit.model.v1.tar+gzip",
    "application/vnd.kitops.modelkit.modelpart.v1.raw", "application/vnd.kitops.modelkit.code.v1.raw+zstd",
    "application/vnd.kitops.modelkit.docs.v1.tar", "application/vnd.kitops.modelkit.dataset.v1.raw",
    *modelpack.ARTIFACT_TYPES, *modelpack.CONFIG_TYPES, "application/vnd.cncf.model.weight.v1.raw",
    "application/vnd.cncf.model.weight.config.v1.tar+gzip", "application/vnd.cnai.model.doc.v1.raw",
    ollama.MODEL, ollama.TEMPLATE, ollama.LICENSE,
})
_PATHS = st.sampled_from(["model.safetensors", "config.json", "a/b/c.json", "../x", "../../etc/passwd", "/etc/passwd",
                          "a/../../x", "..", ".", "", "a\\b", "C:/x", "x\x00y", "dir/", "\ud800", "\udcff.json",
                          "tok\x1b[2J.json", "x" * 5000, "./a", "a//b", "w.gguf", "w.GGUF", "LICENSE"]) | _ANY_TEXT
_ANNOTATION_KEYS = st.sampled_from([oci.TITLE, dmr.FILEPATH, modelpack.LEGACY_FILEPATH, oras.UNPACK,
                                    kitops.LAYER_SUBTYPE, "vnd.docker.reference.type", "org.cncf.model.x"]) | _ANY_TEXT
_ANNOTATION_VALUES = _PATHS | st.sampled_from(["true", "prompt", "attestation-manifest"])


class Shapes:
    """Strategies for manifests, indexes and configs. ``broken``: now and then a field of the wrong shape, left out,
    or a bad digest or size; otherwise every field has its shape (hostile values inside it), so that documents get
    past validation to the format recognisers and planners behind it."""

    def __init__(self, broken: bool) -> None:
        self.broken = broken
        text = _ANY_TEXT
        media_type = self.mostly(st.sampled_from(_MEDIA_TYPES), text)
        annotations = self.mostly(st.dictionaries(_ANNOTATION_KEYS, _ANNOTATION_VALUES, max_size=4))
        digest = self.mostly(
            st.sampled_from([oci.sha256_digest(b"{}"), "sha256:" + "0" * 64, "sha256:" + "1" * 64]),
            st.sampled_from(["sha256:" + "a" * 63, "sha512:" + "a" * 128, "sha256:" + "A" * 64, ""]),
            st.text(alphabet=string.hexdigits, max_size=64).map("sha256:".__add__))
        size = self.mostly(st.integers(min_value=0, max_value=2**40) | st.sampled_from([0, 2, 16 << 20, 2**63 - 1]),
                           st.sampled_from([-1, 2**63, 2**64, 10**30, 1.5]), st.just(_MARKER))
        platform = self.mostly(st.none() | st.fixed_dictionaries(
            {"os": st.sampled_from(["linux", "unknown", "windows"]) | text,
             "architecture": st.sampled_from(["amd64", "arm64", "unknown"]) | text},
            optional={"variant": text, "os.version": text}))
        descriptor = self.document(mediaType=media_type, digest=digest, size=size, annotations=annotations,
                                   platform=platform, artifactType=media_type)
        schema = self.mostly(st.just(2), st.sampled_from([1, "2", 2.5]))
        self.manifest = self.document(
            schemaVersion=schema, mediaType=self.mostly(st.sampled_from(sorted(oci.MANIFEST_TYPES)), media_type),
            artifactType=media_type, config=descriptor, layers=st.lists(descriptor, max_size=5),
            annotations=annotations)
        self.index = self.document(
            schemaVersion=schema, mediaType=self.mostly(st.sampled_from(sorted(oci.INDEX_TYPES)), media_type),
            artifactType=media_type, manifests=st.lists(descriptor, max_size=5), annotations=annotations)
        entry = self.document(path=_PATHS, name=text, digest=digest, diffId=digest, remotePath=text)
        self.config = st.one_of(
            RANDOM_JSON,  # and below: a Kitfile, a DMR config, a ModelPack config, an image config
            self.document(model=self.document(path=_PATHS, digest=digest, parts=st.lists(entry, max_size=3)),
                          code=st.lists(entry, max_size=3), datasets=st.lists(entry, max_size=3),
                          docs=st.lists(entry, max_size=2), prompts=st.lists(entry, max_size=2),
                          package=RANDOM_JSON),
            self.document(config=self.document(format=st.sampled_from(["gguf", "safetensors"]) | text,
                                               size=RANDOM_JSON, context_size=size),
                          files=st.lists(self.document(diffID=digest, type=media_type), max_size=3),
                          descriptor=RANDOM_JSON),
            self.document(descriptor=self.document(name=text, authors=st.lists(text, max_size=2)),
                          config=self.document(format=st.sampled_from(["gguf", "safetensors"]) | text, paramSize=size),
                          modelfs=self.document(diffIds=st.lists(digest))),
            self.document(architecture=text, os=text, rootfs=self.document(type=text, diff_ids=st.lists(digest)),
                          history=RANDOM_JSON, config=RANDOM_JSON),
        )

    def mostly(self, good: st.SearchStrategy[Any], *bad: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
        if not self.broken:
            return good
        wrong = st.one_of(*bad) if bad else RANDOM_JSON
        return st.sampled_from(range(8)).flatmap(lambda n: wrong if n == 7 else good)

    def document(self, **fields: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
        """A JSON object with these fields; when broken, any may be left out."""
        maybe = {name: self.mostly(value, st.just(_MISSING)) for name, value in fields.items()}
        return st.fixed_dictionaries(maybe).map(
            lambda found: {name: value for name, value in found.items() if value is not _MISSING})


WELL_SHAPED, BROKEN = Shapes(broken=False), Shapes(broken=True)
MANIFEST = WELL_SHAPED.manifest | BROKEN.manifest
INDEX = WELL_SHAPED.index | BROKEN.index
CONFIG = WELL_SHAPED.config | BROKEN.config


@st.composite
def raw_documents(draw: st.DrawFn, shape: st.SearchStrategy[Any]) -> bytes:
    """A document as a registry could serve it: generated JSON with poison spliced in, or arbitrary bytes."""
    if draw(st.integers(0, 9)) == 0:
        return draw(st.binary(max_size=50) | _POISON)
    document = draw(shape)
    poison = draw(st.lists(_POISON, max_size=3))
    return _splice(document, poison)


# --- the properties --------------------------------------------------------------------------------------------

def _check_plan(plan: formats.Plan) -> None:
    for layer in plan.layers:
        assert 0 <= layer.descriptor.size <= oci.MAX_SIZE
        if layer.path is not None:
            assert not layer.path.startswith("/") and layer.path != ".."
            assert not posixpath.normpath(layer.path).startswith("../")
            layer.path.encode()  # a name the file system can hold
        if layer.action is Action.FILE:
            assert layer.path is not None


def parse_and_plan(raw: bytes, config: bytes, platform: str | None) -> None:
    """What pull.py does with a served manifest and config; only OciCraneError may come out."""
    try:
        document = oci.parse_manifest_or_index(raw, "manifest of x.io/y:z")
        if isinstance(document, oci.Manifest):
            _check_plan(formats.recognise(document, config))
        else:
            select_child(document, platform)
    except OciCraneError as exc:
        line = exc.one_line()
        assert "\n" not in line and "\x1b" not in line and len(line) < 3000
        line.encode()  # printable on any terminal: no lone surrogates


@FUZZ
@given(raw=raw_documents(MANIFEST), config=raw_documents(CONFIG))
@example(raw=DEEP_ARRAY, config=b"{}")  # was RecursionError
@example(raw=b'{"schemaVersion": 2, "config": ' + DEEP_OBJECT + b"}", config=b"{}")  # was RecursionError
@example(raw=b'{"schemaVersion": 2, "x": ' + BIG_INT + b"}", config=b"{}")  # was ValueError (int digits limit)
def test_hostile_manifests_and_configs(raw: bytes, config: bytes) -> None:
    parse_and_plan(raw, config, None)


@FUZZ
@given(raw=raw_documents(INDEX), platform=st.sampled_from([None, "linux/amd64", "linux/arm64/v8"]) | _ANY_TEXT)
def test_hostile_indexes(raw: bytes, platform: str | None) -> None:
    parse_and_plan(raw, b"{}", platform)


@FUZZ
@given(raw=raw_documents(RANDOM_JSON))
def test_random_json(raw: bytes) -> None:
    parse_and_plan(raw, raw, "linux/amd64")
