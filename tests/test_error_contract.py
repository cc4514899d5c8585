"""Every error the package raises is an OciCraneError with a cause and a fix; parse errors keep the raw document."""

from __future__ import annotations

import ast
import json
import sys
import traceback
from pathlib import Path

import pytest
from support.commands import run_cli
from support.models import push_layout, write_model

from oci_crane_loader import errors, oci
from oci_crane_loader.cache.store import Store
from oci_crane_loader.formats import dmr
from oci_crane_loader.formats.dmr_pack import pack_dmr
from oci_crane_loader.layout import LayoutWriter
from oci_crane_loader.options import from_extra_config
from oci_crane_loader.pull import Puller
from oci_crane_loader.registry.crane import Crane

PACKAGE = Path(errors.__file__).parent
BUILTIN = {"ValueError", "RuntimeError", "KeyError", "TypeError", "LookupError", "OSError", "Exception"}
# Inside pydantic validators, json hooks and the safetensors value types' invariant checks a ValueError is the
# protocol: read_header / read_index turn each into an InvalidModelError naming the file.
ALLOWED = {("safetensors_check.py", name) for name in ("__post_init__", "from_json", "nbytes", "_plain_file_names",
                                                        "_require_encodable", "_reject_constant")}
# link_fd's OSError (the path was swapped since it was opened) is its caller's cue to copy from the descriptor
# instead (files.link_or_copy): it never reaches a caller of the package.
ALLOWED |= {("files.py", "link_fd")}


def _builtin_raises() -> list[str]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text())
        for function in ast.walk(tree):
            if not isinstance(function, ast.FunctionDef):
                continue
            for node in ast.walk(function):
                if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call) \
                        and isinstance(node.exc.func, ast.Name) and node.exc.func.id in BUILTIN \
                        and (path.name, function.name) not in ALLOWED:
                    found.append(f"{path.relative_to(PACKAGE)}:{node.lineno} ({function.name}) {node.exc.func.id}")
    return found


def test_no_builtin_exception_is_raised_to_callers():
    assert _builtin_raises() == []


@pytest.mark.parametrize(("call", "error", "words"), [
    (lambda tmp: pack_dmr(tmp, tmp / "layout"), errors.InvalidModelError, "no .safetensors files"),
    (lambda tmp: pack_dmr(write_model(tmp / "m"), tmp / "layout", version="v9"), errors.InvalidModelError,
     "unknown Docker Model Runner config version"),
    (lambda tmp: from_extra_config({"colour": "red"}, None), errors.UsageError, "unknown"),
    (lambda tmp: Puller(Store(tmp / "cache"), Crane(), jobs=0), errors.UsageError, "jobs must be 1 to"),
], ids=["dmr-no-weights", "dmr-version", "loader-option", "puller-jobs"])
def test_refusals_are_oci_crane_errors_with_a_fix(tmp_path, call, error, words):
    # Before: ValueError, which the command line shows as a traceback and callers cannot tell from a bug.
    with pytest.raises(error, match=words) as info:
        call(tmp_path)
    assert info.value.fix and info.value.fix != errors.OciCraneError.default_fix


BAD_MANIFEST = b'{"schemaVersion": 2, "config": {"mediaType": "x", "digest": "sha256:' + b"0" * 64 + \
    b'", "size": "big"}, "layers": [], "x-note": "' + b"n" * 10_000 + b'"}'


def test_a_parse_error_keeps_the_raw_document_truncated():
    with pytest.raises(errors.InvalidDocumentError, match=r"config\.size") as info:
        oci.parse_manifest_or_index(BAD_MANIFEST)
    assert info.value.raw == BAD_MANIFEST[:errors.MAX_RAW_DOCUMENT]
    shown = info.value.note or ""
    if sys.version_info >= (3, 11):  # the traceback itself carries it (3.10 has no notes: cli.py prints it)
        assert shown in "".join(traceback.format_exception(info.value))
    assert repr(BAD_MANIFEST[:100])[2:-1] in shown and f"first 4096 of {len(BAD_MANIFEST)} bytes" in shown
    assert "n" * 5000 not in shown  # truncated


def test_a_config_parse_error_keeps_the_config():
    manifest = oci.Manifest.model_validate({"schemaVersion": 2, "config": {
        "mediaType": dmr.CONFIG_V02, "digest": "sha256:" + "0" * 64, "size": 3}, "layers": []})
    with pytest.raises(errors.InvalidDocumentError) as info:
        dmr.recognise(manifest, b'{"config": {"context_size": "many"}}')
    assert info.value.raw == b'{"config": {"context_size": "many"}}'


def test_debug_shows_the_raw_document_and_the_plain_run_does_not(registry, tmp_path, cache_dir):
    layout = LayoutWriter(tmp_path / "layout")
    config = b'{"config": {"context_size": "many-tokens-RAWMARK"}}'
    layer = layout.add_bytes(dmr.SAFETENSORS, b"not read", {dmr.FILEPATH: "model.safetensors"})
    layout.add_manifest(layout.add_bytes(dmr.CONFIG_V02, config), [layer])
    reference = f"{registry.host}/acme/badconfig:v1"
    push_layout(layout.root, reference)
    plain = run_cli("fetch", reference, "--cache-dir", str(cache_dir))
    assert plain.returncode == 1 and len(plain.stderr.strip().splitlines()) == 1, plain.stderr
    debug = run_cli("fetch", reference, "--cache-dir", str(cache_dir), "--debug")
    assert debug.returncode != 0 and "InvalidDocumentError" in debug.stderr
    assert json.dumps(config.decode())[1:-1].replace('\\"', '"') in debug.stderr, debug.stderr[-2000:]


# --- writers and readers share one schema ---------------------------------------------------------------------------

@pytest.mark.parametrize("version", ["v0.1", "v0.2", "modelpack"])
def test_written_documents_read_back_through_the_readers_models_byte_for_byte(tmp_path, monkeypatch, version):
    from oci_crane_loader.formats import modelpack, recognise
    from oci_crane_loader.formats.modelpack_pack import pack_modelpack
    from oci_crane_loader.layout import dump_document

    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    source = write_model(tmp_path / "src", shards=2)
    layout = tmp_path / "layout"
    digest = pack_modelpack(source, layout) if version == "modelpack" else pack_dmr(source, layout, version=version)
    blobs = layout / "blobs" / "sha256"
    raw = (blobs / digest.split(":")[1]).read_bytes()
    manifest = oci.parse_manifest_or_index(raw)
    assert isinstance(manifest, oci.Manifest) and dump_document(manifest) == raw
    config = (blobs / manifest.config.digest.split(":")[1]).read_bytes()
    model = modelpack.ModelPackConfig if version == "modelpack" else dmr.DMRConfig
    assert dump_document(oci.parse_document(model, config, "config")) == config
    assert recognise(manifest, config).format == ("modelpack" if version == "modelpack" else f"dmr-{version}")
