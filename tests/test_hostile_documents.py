"""Hostile manifests, indexes and configs, served by a real registry or parsed directly: one error line each.

The fuzzing in test_documents_fuzz.py looks for new cases; these pin down the ones it and we found.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from support.commands import run_cli
from support.models import push_layout

from oci_crane_loader import errors, oci
from oci_crane_loader.errors import InvalidDocumentError, InvalidModelError
from oci_crane_loader.formats import dmr, oras
from oci_crane_loader.layout import LayoutWriter, canonical_json, dump_document
from oci_crane_loader.paths import safe_relative_path
from oci_crane_loader.registry.crane import Crane

BIG_INT = b"1" * 5000  # more digits than Python converts (sys.get_int_max_str_digits: 4300)
DEEP = b"[" * 5000 + b"]" * 5000  # deeper than Python's recursion limit, within Go's (crane pushes it)


def _layout_with_raw_manifest(root: Path, poison_manifest: bytes = b"", poison_config: bytes = b"") -> LayoutWriter:
    """A DMR v0.2 artifact whose manifest (or config) carries an extra field holding ``poison``."""
    layout = LayoutWriter(root)
    config = canonical_json({"config": {"format": "safetensors"}})
    if poison_config:
        config = config[:-1] + b',"x-poison":' + poison_config + b"}"
    layer = layout.add_bytes(dmr.SAFETENSORS, b"not read", {dmr.FILEPATH: "model.safetensors"})
    manifest = dump_document(oci.Manifest.model_validate({"schemaVersion": 2, "mediaType": oci.OCI_MANIFEST,
                                                          "config": layout.add_bytes(dmr.CONFIG_V02, config),
                                                          "layers": [layer]}))
    if poison_manifest:
        manifest = manifest[:-1] + b',"x-poison":' + poison_manifest + b"}"
    layout.descriptors.append(layout.add_bytes(oci.OCI_MANIFEST, manifest))
    layout.write_index()
    return layout


def _one_error_line(*args: str) -> str:
    done = run_cli(*args)
    assert done.returncode == 1, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr  # no traceback
    assert lines[0].startswith("error: ") and " -- fix: " in lines[0]
    return lines[0]


@pytest.mark.parametrize(("where", "poison", "words"), [
    ("manifest", BIG_INT, "a number too long"),
    ("manifest", DEEP, "nested too deeply"),
    ("config", BIG_INT, "a number too long"),
    ("config", DEEP, "nested too deeply"),
])
def test_served_deep_or_huge_documents_fail_in_one_line(registry, tmp_path, cache_dir, where, poison, words):
    # Before: a ValueError or RecursionError traceback out of oci.load_json.
    poisoned = {"poison_manifest" if where == "manifest" else "poison_config": poison}
    layout = _layout_with_raw_manifest(tmp_path / "layout", **poisoned)
    reference = f"{registry.host}/acme/poison:v1"
    push_layout(layout.root, reference)
    for command in ("fetch", "inspect"):
        line = _one_error_line(command, reference, "--cache-dir", str(cache_dir))
        assert "is not valid JSON" in line and words in line, line
        assert "the artifact is malformed" in line


@pytest.mark.parametrize(("raw", "words"), [
    (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
    (b'{"schemaVersion": 2, "config": ' + b'{"a":' * 100_000 + b"1" + b"}" * 100_000 + b"}", "nested too deeply"),
    (b'{"schemaVersion": 2, "x": ' + BIG_INT + b"}", "a number too long"),
    (b'{"schemaVersion": 2, "x": -' + BIG_INT + b"}", "a number too long"),
    # Deep enough for nothing real, shallow enough that every Python's json parses it: our own bound refuses it.
    (b'{"schemaVersion": 2, "x": ' + b"[" * 300 + b"]" * 300 + b"}", "nested too deeply (over 200 levels)"),
])
def test_deep_or_huge_documents_are_one_invalid_document_error(raw: bytes, words: str) -> None:
    with pytest.raises(InvalidDocumentError) as info:
        oci.parse_manifest_or_index(raw, "manifest of x.io/y:z")
    assert info.value.cause.startswith("manifest of x.io/y:z is not valid JSON: ") and words in info.value.cause
    assert "the artifact is malformed" in info.value.fix


@pytest.mark.parametrize("size", [2**63, 10**30])
def test_a_size_beyond_int64_is_refused(size: int) -> None:
    # Before: accepted, and `inspect` or the progress bar died in float arithmetic (OverflowError).
    document = {"schemaVersion": 2, "config": {"mediaType": dmr.CONFIG_V02, "digest": oci.sha256_digest(b"{}"),
                                               "size": size}, "layers": []}
    with pytest.raises(InvalidDocumentError) as info:
        oci.parse_manifest_or_index(json.dumps(document).encode())
    assert info.value.cause.startswith("invalid manifest: config.size: Input should be less than or equal to "
                                       f"{oci.MAX_SIZE}")
    document["config"]["size"] = oci.MAX_SIZE  # type: ignore[index]
    assert oci.parse_manifest_or_index(json.dumps(document).encode()).config.size == oci.MAX_SIZE


@pytest.mark.parametrize("path", ["\ud800", "model\udfff.safetensors", "a/\udcff"])
def test_a_path_that_is_not_unicode_is_refused(path: str) -> None:
    # Before: accepted, and writing the file raised UnicodeEncodeError (a JSON "\ud800" escape is a lone surrogate).
    with pytest.raises(InvalidModelError, match="is not valid UTF-8"):
        safe_relative_path(path, "layer 0")


@pytest.mark.parametrize(("cause", "shown"), [
    ("media type '\x1b]0;owned\x07'", "media type '\\x1b]0;owned\\x07'"),  # a terminal title escape
    ("path 'evil\u202etxt.exe'", "path 'evil\\u202etxt.exe'"),  # a right-to-left override
    ("name '\ud800'", "name '\\ud800'"),  # a lone surrogate: not encodable on stderr
    ("tabs\tand\nlines", "tabs and lines"),
])
def test_error_lines_escape_what_could_drive_a_terminal(cause: str, shown: str) -> None:
    line = errors.InvalidDocumentError(cause).one_line()
    assert line.startswith(shown + " -- fix: ")
    line.encode()


def test_error_lines_shorten_huge_causes_and_fixes() -> None:
    error = errors.UnsupportedFormatError("media type " + "x" * 100_000, "fetch " + "y" * 100_000 + " itself")
    line = error.one_line()
    assert len(line) < errors.MAX_CAUSE + errors.MAX_FIX + 100
    assert f"... ({100_011 - errors.MAX_CAUSE} more characters) -- fix: fetch yyy" in line
    assert error.cause.endswith("x")  # the whole cause stays on the exception


def test_nested_index_is_refused_in_one_line(registry, tmp_path, cache_dir):
    # An index whose child is itself an index: one level of indexes only, never a loop.
    inner = LayoutWriter(tmp_path / "inner")
    child = inner.add_manifest(inner.add_bytes(dmr.CONFIG_V02, b"{}"), [])
    inner_index = (inner.root / "index.json").read_bytes()
    outer_root = tmp_path / "outer"
    outer = LayoutWriter(outer_root)
    for blob in (inner.root / "blobs" / "sha256").iterdir():
        (outer_root / "blobs" / "sha256" / blob.name).write_bytes(blob.read_bytes())
    nested = outer.add_bytes(oci.OCI_INDEX, inner_index)
    outer.descriptors = [nested]
    outer.write_index()
    reference = f"{registry.host}/acme/nested:v1"
    Crane().run("push", str(outer_root), reference, options=["--index"])
    line = _one_error_line("fetch", reference, "--cache-dir", str(cache_dir))
    assert "nested image indexes are not supported" in line, line
    assert child not in registry.blob_downloads()


def test_inspect_escapes_file_names_that_could_drive_a_terminal(registry, tmp_path, cache_dir):
    # Before: an ORAS title holding a terminal escape (here: set the window title) was printed as it was.
    layout = LayoutWriter(tmp_path / "layout")
    named = layout.add_bytes("application/vnd.oci.image.layer.v1.tar", b"{}", {oci.TITLE: "tok\x1b]0;owned\x07.json"})
    layout.add_manifest(layout.add_bytes(oci.OCI_EMPTY, b"{}"), [named], artifact_type=oras.DEFAULT_ARTIFACT_TYPE)
    reference = f"{registry.host}/acme/escape:v1"
    push_layout(layout.root, reference)
    done = run_cli("inspect", reference, "--cache-dir", str(cache_dir))
    assert done.returncode == 0, done.stderr
    assert "tok\\x1b]0;owned\\x07.json" in done.stdout and "\x1b" not in done.stdout and "\x07" not in done.stdout
