"""Distribution documents (oci.py), the Docker Model Runner config, and DMR layer plans (formats/)."""

from __future__ import annotations

import json

import pytest

from oci_crane_loader import formats, oci
from oci_crane_loader.errors import InvalidDocumentError, InvalidModelError, UnsupportedFormatError
from oci_crane_loader.formats import Action, dmr
from oci_crane_loader.oci import Index, Manifest, parse_manifest_or_index
from oci_crane_loader.paths import safe_relative_path


def _digest(n: int) -> str:
    return f"sha256:{n:064x}"


# --- real documents, byte for byte ---------------------------------------------------------------------------

OCI_MANIFEST = b"""{
  "schemaVersion": 2,
  "mediaType": "application/vnd.oci.image.manifest.v1+json",
  "config": {
    "mediaType": "application/vnd.oci.image.config.v1+json",
    "digest": "sha256:b5b2b2c507a0944348e0303114d8d93aaaa081732b86451d9bce1f432a537bc7",
    "size": 7023
  },
  "layers": [
    {
      "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
      "digest": "sha256:9834876dcfb05cb167a5c24953eba58c4ac89b1adf57f28f2f9d09af107ee8f0",
      "size": 32654
    },
    {
      "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
      "digest": "sha256:3c3a4604a545cdc127456d94e421cd355bca5b528f4a9c1905b15da2eb4a4c6b",
      "size": 16724,
      "annotations": {"org.opencontainers.image.title": "weights.tar.gz"}
    }
  ],
  "annotations": {
    "com.example.key1": "value1",
    "org.opencontainers.image.created": "2025-01-01T00:00:00Z"
  }
}"""

OCI_INDEX = b"""{
  "schemaVersion": 2,
  "mediaType": "application/vnd.oci.image.index.v1+json",
  "manifests": [
    {
      "mediaType": "application/vnd.oci.image.manifest.v1+json",
      "digest": "sha256:e692418e4cbaf90ca69d05a66403747baa33ee08806650b51fab815ad7fc331f",
      "size": 7143,
      "platform": {"architecture": "ppc64le", "os": "linux"}
    },
    {
      "mediaType": "application/vnd.oci.image.manifest.v1+json",
      "digest": "sha256:5b0bcabd1ed22e9fb1310cf6c2dec7cdef19f0ad69efa1f392e94a4333501270",
      "size": 7682,
      "platform": {"architecture": "arm64", "os": "linux", "variant": "v8"}
    },
    {
      "mediaType": "application/vnd.oci.image.manifest.v1+json",
      "digest": "sha256:0f0e9a2c1c0a8e4f4c1f6b1f0e2d9b8a7c6d5e4f3a2b1c0d9e8f7a6b5c4d3e2f",
      "size": 1234,
      "platform": {"architecture": "amd64", "os": "windows", "os.version": "10.0.17763.1040"}
    }
  ],
  "annotations": {"com.example.key1": "value1"}
}"""

DOCKER_MANIFEST = b"""{
   "schemaVersion": 2,
   "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
   "config": {
      "mediaType": "application/vnd.docker.container.image.v1+json",
      "size": 7023,
      "digest": "sha256:b5b2b2c507a0944348e0303114d8d93aaaa081732b86451d9bce1f432a537bc7"
   },
   "layers": [
      {
         "mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip",
         "size": 32654,
         "digest": "sha256:e692418e4cbaf90ca69d05a66403747baa33ee08806650b51fab815ad7fc331f"
      },
      {
         "mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip",
         "size": 16724,
         "digest": "sha256:3c3a4604a545cdc127456d94e421cd355bca5b528f4a9c1905b15da2eb4a4c6b"
      }
   ]
}"""

DOCKER_MANIFEST_LIST = b"""{
  "schemaVersion": 2,
  "mediaType": "application/vnd.docker.distribution.manifest.list.v2+json",
  "manifests": [
    {
      "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
      "size": 7143,
      "digest": "sha256:e692418e4cbaf90ca69d05a66403747baa33ee08806650b51fab815ad7fc331f",
      "platform": {"architecture": "amd64", "os": "linux"}
    }
  ]
}"""


def _mutated(raw: bytes, change) -> bytes:
    data = json.loads(raw)
    change(data)
    return json.dumps(data).encode()


def test_oci_manifest():
    doc = parse_manifest_or_index(OCI_MANIFEST)
    assert type(doc) is Manifest
    assert doc.schema_version == 2
    assert doc.media_type == oci.OCI_MANIFEST
    assert doc.config.media_type == "application/vnd.oci.image.config.v1+json"
    assert doc.config.size == 7023
    assert [layer.size for layer in doc.layers] == [32654, 16724]
    assert doc.layers[0].annotations == {}
    assert doc.layers[1].annotations[oci.TITLE] == "weights.tar.gz"
    assert doc.annotations["com.example.key1"] == "value1"
    assert doc.subject is None


def test_oci_index_and_platforms():
    doc = parse_manifest_or_index(OCI_INDEX)
    assert type(doc) is Index
    assert doc.media_type == oci.OCI_INDEX
    assert [str(m.platform) for m in doc.manifests] == ["linux/ppc64le", "linux/arm64/v8", "windows/amd64"]
    assert doc.manifests[2].platform.os_version == "10.0.17763.1040"
    assert doc.manifests[1].digest == "sha256:5b0bcabd1ed22e9fb1310cf6c2dec7cdef19f0ad69efa1f392e94a4333501270"


def test_docker_manifest_and_list():
    manifest = parse_manifest_or_index(DOCKER_MANIFEST)
    assert type(manifest) is Manifest
    assert manifest.media_type == oci.DOCKER_MANIFEST
    assert manifest.config.media_type == "application/vnd.docker.container.image.v1+json"
    assert len(manifest.layers) == 2
    listing = parse_manifest_or_index(DOCKER_MANIFEST_LIST)
    assert type(listing) is Index
    assert listing.manifests[0].media_type == oci.DOCKER_MANIFEST


def test_index_without_media_type_is_detected_by_shape():
    raw = _mutated(OCI_INDEX, lambda d: d.pop("mediaType"))
    doc = parse_manifest_or_index(raw)
    assert type(doc) is Index
    assert doc.media_type is None
    assert len(doc.manifests) == 3


def test_manifest_without_media_type_is_a_manifest():
    doc = parse_manifest_or_index(_mutated(OCI_MANIFEST, lambda d: d.pop("mediaType")))
    assert type(doc) is Manifest
    assert doc.media_type is None


def test_artifact_manifest_with_its_own_media_type_is_still_a_manifest():
    doc = parse_manifest_or_index(_mutated(OCI_MANIFEST, lambda d: d.update(mediaType="application/x.custom")))
    assert type(doc) is Manifest
    assert doc.media_type == "application/x.custom"


def test_unknown_fields_are_tolerated_and_kept():
    def add(d):
        d["x-vendor"] = {"nested": [1, 2]}
        d["layers"][0]["x-layer-note"] = "kept"
        d["config"]["data"] = "e30="

    doc = parse_manifest_or_index(_mutated(OCI_MANIFEST, add))
    assert doc.model_extra == {"x-vendor": {"nested": [1, 2]}}
    assert doc.layers[0].model_extra == {"x-layer-note": "kept"}
    assert doc.config.model_extra == {"data": "e30="}
    dumped = doc.model_dump(by_alias=True, exclude_none=True)
    assert dumped["x-vendor"] == {"nested": [1, 2]}
    assert dumped["layers"][0]["x-layer-note"] == "kept"


@pytest.mark.parametrize(("change", "where"), [
    (lambda d: d["layers"][0].update(size="big"), "layers.0.size: Input should be a valid integer"),
    (lambda d: d["layers"][1].update(size=-1), "layers.1.size: Input should be greater than or equal to 0"),
    (lambda d: d["config"].update(mediaType=7), "config.mediaType: Input should be a valid string"),
    (lambda d: d["layers"][0].update(annotations={"k": 1}), "layers.0.annotations.k: Input should be a valid string"),
    (lambda d: d.update(schemaVersion=1), "schemaVersion: Input should be 2"),
    (lambda d: d.update(layers={"a": 1}), "layers: Input should be a valid list"),
    (lambda d: d.pop("config"), "config: Field required"),
    (lambda d: d["layers"][0].pop("digest"), "layers.0.digest: Field required"),
])
def test_wrong_types_are_refused_naming_the_field(change, where):
    with pytest.raises(InvalidDocumentError) as info:
        parse_manifest_or_index(_mutated(OCI_MANIFEST, change))
    assert info.value.cause.startswith(f"invalid manifest: {where}")


def test_several_problems_are_counted():
    def change(d):
        d["layers"][0]["size"] = "big"
        d["layers"][1]["size"] = "bigger"

    with pytest.raises(InvalidDocumentError) as info:
        parse_manifest_or_index(_mutated(OCI_MANIFEST, change))
    assert info.value.cause == "invalid manifest: layers.0.size: Input should be a valid integer, unable to parse " \
                               "string as an integer (and 1 more)"


def test_wrong_type_in_an_index_is_named():
    with pytest.raises(InvalidDocumentError) as info:
        parse_manifest_or_index(_mutated(OCI_INDEX, lambda d: d["manifests"][1].update(size=None)))
    assert info.value.cause.startswith("invalid manifest (image index): manifests.1.size:")


@pytest.mark.parametrize("digest", [
    "sha256:" + "A" * 64,  # upper case
    "sha256:" + "a" * 63,  # short
    "sha256:" + "a" * 65,  # long
    "sha512:" + "a" * 128,  # other algorithms are not accepted
    "a" * 64,  # no algorithm
    "sha256:" + "g" * 64,  # not hex
    " sha256:" + "a" * 64,
])
def test_bad_digests_are_refused(digest):
    with pytest.raises(InvalidDocumentError) as info:
        parse_manifest_or_index(_mutated(OCI_MANIFEST, lambda d: d["layers"][1].update(digest=digest)))
    assert info.value.cause.startswith("invalid manifest: layers.1.digest: String should match pattern")
    with pytest.raises(InvalidDocumentError, match="only sha256:<64 hex> is accepted"):
        oci.digest_hex(digest)


def test_digest_helpers():
    assert oci.sha256_digest(b"") == "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    assert oci.digest_hex("sha256:" + "ab" * 32) == "ab" * 32


@pytest.mark.parametrize(("raw", "cause"), [
    (b"not json", "manifest is not valid JSON"),
    (b"\xff\xfe", "manifest is not valid JSON"),
    (b"[1, 2]", "invalid manifest: expected a JSON object"),
    (b'{"schemaVersion": 2, "mediaType": "application/vnd.example+json"}',
     "unsupported manifest media type 'application/vnd.example+json'"),
    (b'{"schemaVersion": 2, "mediaType": ["x"], "config": {}, "layers": []}', "invalid manifest: mediaType: "),
    (b'{"schemaVersion": 2, "mediaType": {"a": 1}, "manifests": []}', "invalid manifest (image index): mediaType: "),
])
def test_not_a_document(raw, cause):
    with pytest.raises(InvalidDocumentError) as info:
        parse_manifest_or_index(raw)
    assert info.value.cause.startswith(cause)


# --- Docker Model Runner config -----------------------------------------------------------------------------

TOOL_CONFIG = {
    "config": {
        "format": "safetensors",
        "quantization": "",
        "parameters": "",
        "architecture": "llama",
        "size": "1.2GB",
        "safetensors": {"dtype": "BF16", "tensors": 272},
        "context_size": 4096,
    },
    "descriptor": {"created": "2025-01-01T00:00:00Z"},
    "rootfs": {"type": "rootfs", "diff_ids": [_digest(1)]},
}

SPEC_CONFIG = {
    "descriptor": {"createdAt": "2025-01-01T00:00:00Z"},
    "files": [{"diffID": _digest(1), "type": dmr.SAFETENSORS}],
    "format_version": "0.2",
    "config": {"format": "safetensors", "architecture": "qwen2", "parameters": 494032768, "size": 988097824},
}


def _layer(media_type: str, n: int, path: str | None = None, size: int = 10) -> dict:
    layer: dict = {"mediaType": media_type, "digest": _digest(n), "size": size}
    if path is not None:
        layer["annotations"] = {dmr.FILEPATH: path}
    return layer


def _manifest(config_type: str, layers: list[dict], artifact_type: str | None = None) -> Manifest:
    data = {
        "schemaVersion": 2,
        "mediaType": oci.OCI_MANIFEST,
        "config": {"mediaType": config_type, "digest": _digest(999), "size": 100},
        "layers": layers,
    }
    if artifact_type:
        data["artifactType"] = artifact_type
    return Manifest.model_validate(data)


def _config(data: dict = TOOL_CONFIG) -> bytes:
    return json.dumps(data).encode()


@pytest.mark.parametrize("config", [TOOL_CONFIG, SPEC_CONFIG, {}], ids=["tool", "spec", "empty"])
@pytest.mark.parametrize("config_type", [dmr.CONFIG_V01, dmr.CONFIG_V02])
def test_both_config_shapes_are_accepted(config, config_type):
    manifest = _manifest(config_type, [_layer(dmr.SAFETENSORS, 1, "model.safetensors")])
    plan = dmr.recognise(manifest, _config(config))
    assert plan is not None
    assert plan.format == ("dmr-v0.2" if config_type == dmr.CONFIG_V02 else "dmr-v0.1")
    assert [(layer.action, layer.path) for layer in plan.layers] == [(Action.FILE, "model.safetensors")]


def test_config_models_keep_both_shapes():
    tool = oci.parse_model(dmr.DMRConfig, TOOL_CONFIG, "config")
    assert tool.config.context_size == 4096
    assert tool.config.architecture == "llama"
    assert tool.rootfs == {"type": "rootfs", "diff_ids": [_digest(1)]}
    spec = oci.parse_model(dmr.DMRConfig, SPEC_CONFIG, "config")
    assert spec.files[0].diff_id == _digest(1)
    assert spec.files[0].type == dmr.SAFETENSORS
    assert spec.format_version == "0.2"
    assert spec.config.parameters == 494032768


@pytest.mark.parametrize(("change", "where"), [
    (lambda d: d["config"].update(context_size="big"), "config.context_size"),
    (lambda d: d.update(config="llama"), "config"),
    (lambda d: d.update(files=[{"type": dmr.SAFETENSORS}]), "files.0.diffID: Field required"),
    (lambda d: d.update(descriptor=["x"]), "descriptor"),
])
def test_dmr_config_wrong_type_is_refused_naming_the_field(change, where):
    data = json.loads(_config())
    change(data)
    manifest = _manifest(dmr.CONFIG_V01, [_layer(dmr.SAFETENSORS, 1)])
    with pytest.raises(InvalidDocumentError) as info:
        dmr.recognise(manifest, json.dumps(data).encode())
    assert info.value.cause.startswith(f"invalid Docker Model Runner config: {where}")


def test_dmr_config_not_json():
    manifest = _manifest(dmr.CONFIG_V01, [_layer(dmr.SAFETENSORS, 1)])
    with pytest.raises(InvalidDocumentError, match="Docker Model Runner config is not valid JSON"):
        dmr.recognise(manifest, b"{")


def test_other_configs_are_not_claimed_by_dmr():
    manifest = _manifest("application/vnd.cncf.model.config.v1+json", [_layer(dmr.SAFETENSORS, 1)])
    assert dmr.recognise(manifest, b"not even json") is None


# --- DMR plans ----------------------------------------------------------------------------------------------

def test_v02_layers_with_filepath_become_files():
    manifest = _manifest(dmr.CONFIG_V02, [
        _layer(dmr.SAFETENSORS, 1, "model-00001-of-00002.safetensors", size=5_000),
        _layer(dmr.SAFETENSORS, 2, "model-00002-of-00002.safetensors", size=4_000),
        _layer(dmr.MODEL_FILE, 3, "config.json"),
        _layer(dmr.MODEL_FILE, 4, "tokenizer/tokenizer.json"),
        _layer(dmr.LICENSE, 5, "LICENSE.md"),
        # No filepath: v0.2 names every file it ships, so these are skipped (no SHARD, no default LICENSE name).
        _layer(dmr.MODEL_FILE, 6),
        _layer(dmr.SAFETENSORS, 7),
        _layer(dmr.LICENSE, 8),
    ])
    plan = formats.recognise(manifest, _config(SPEC_CONFIG))
    assert plan.format == "dmr-v0.2"
    assert [(layer.action, layer.path, layer.weights) for layer in plan.layers] == [
        (Action.FILE, "model-00001-of-00002.safetensors", True),
        (Action.FILE, "model-00002-of-00002.safetensors", True),
        (Action.FILE, "config.json", False),
        (Action.FILE, "tokenizer/tokenizer.json", False),
        (Action.FILE, "LICENSE.md", False),
    ]
    assert [layer.descriptor.digest for layer in plan.layers] == [_digest(n) for n in range(1, 6)]
    assert [d.digest for d in plan.skipped] == [_digest(6), _digest(7), _digest(8)]
    assert [layer.path for layer in plan.weight_layers] == ["model-00001-of-00002.safetensors",
                                                           "model-00002-of-00002.safetensors"]
    assert [layer.path for layer in plan.small_layers] == ["config.json", "tokenizer/tokenizer.json", "LICENSE.md"]


def test_v02_paths_are_normalised():
    manifest = _manifest(dmr.CONFIG_V02, [_layer(dmr.SAFETENSORS, 1, "./weights//model.safetensors")])
    plan = formats.recognise(manifest, _config())
    assert plan.layers[0].path == "weights/model.safetensors"


def test_v01_layers_by_media_type():
    manifest = _manifest(dmr.CONFIG_V01, [
        _layer(dmr.SAFETENSORS, 1),
        _layer(dmr.SAFETENSORS, 2),
        _layer(dmr.VLLM_CONFIG_TAR, 3),
        _layer(dmr.MMPROJ, 4),
        _layer(dmr.CHAT_TEMPLATE, 5),
        _layer(dmr.LICENSE, 6),
        _layer(dmr.LICENSE, 7),
        _layer(dmr.DIR_TAR, 8, "assets"),  # v0.1: tars are always extracted
        _layer(dmr.MODEL_FILE, 9),  # generic file without a path: nowhere to put it
    ])
    plan = formats.recognise(manifest, _config())
    assert plan.format == "dmr-v0.1"
    assert [(layer.action, layer.path, layer.weights) for layer in plan.layers] == [
        (Action.SHARD, None, True),
        (Action.SHARD, None, True),
        (Action.TAR, None, False),
        (Action.FILE, "model.mmproj", False),
        (Action.FILE, "template.jinja", False),
        (Action.FILE, "LICENSE", False),
        (Action.FILE, "LICENSE.2", False),
        (Action.TAR, None, False),
    ]
    assert [layer.descriptor.digest for layer in plan.layers] == [_digest(n) for n in range(1, 9)]
    assert [d.digest for d in plan.skipped] == [_digest(9)]


def test_v01_safetensors_with_filepath_uses_it():
    manifest = _manifest(dmr.CONFIG_V01, [_layer(dmr.SAFETENSORS, 1, "model.safetensors")])
    plan = formats.recognise(manifest, _config())
    assert [(layer.action, layer.path, layer.weights) for layer in plan.layers] == [
        (Action.FILE, "model.safetensors", True)]


def test_gguf_beside_safetensors_is_skipped():
    manifest = _manifest(dmr.CONFIG_V01, [_layer(dmr.GGUF, 1), _layer(dmr.SAFETENSORS, 2)])
    plan = formats.recognise(manifest, _config())
    assert [layer.descriptor.digest for layer in plan.layers] == [_digest(2)]
    assert [d.digest for d in plan.skipped] == [_digest(1)]


@pytest.mark.parametrize("config_type", [dmr.CONFIG_V01, dmr.CONFIG_V02])
def test_gguf_only_is_unsupported(config_type):
    manifest = _manifest(config_type, [_layer(dmr.GGUF, 1, "model.gguf"), _layer(dmr.LICENSE, 2, "LICENSE")])
    with pytest.raises(UnsupportedFormatError) as info:
        formats.recognise(manifest, _config())
    assert "GGUF" in info.value.cause
    assert "safetensors" in info.value.fix


def test_no_weights_is_unsupported():
    manifest = _manifest(dmr.CONFIG_V01, [_layer(dmr.LICENSE, 1), _layer(dmr.VLLM_CONFIG_TAR, 2)])
    with pytest.raises(UnsupportedFormatError) as info:
        formats.recognise(manifest, _config())
    assert info.value.cause == "this Docker Model Runner artifact has no safetensors weights"
    assert "GGUF" not in info.value.cause


@pytest.mark.parametrize("path", ["../../etc/passwd", "/etc/passwd", "weights/../../x", "..", "a\\b", "C:/x"])
@pytest.mark.parametrize("config_type", [dmr.CONFIG_V01, dmr.CONFIG_V02])
def test_escaping_filepath_is_invalid(config_type, path):
    manifest = _manifest(config_type, [_layer(dmr.SAFETENSORS, 1, "model.safetensors"),
                                       _layer(dmr.MODEL_FILE, 2, path)])
    with pytest.raises(InvalidModelError) as info:
        formats.recognise(manifest, _config())
    assert info.value.cause.startswith(f"layer 1 ({dmr.MODEL_FILE}): ")
    assert repr(path) in info.value.cause


@pytest.mark.parametrize(("first", "second"), [
    ("model.safetensors", "model.safetensors"),
    ("model.safetensors", "./model.safetensors"),
    ("a/config.json", "a/b/../config.json"),
])
def test_two_layers_to_one_path_is_invalid(first, second):
    manifest = _manifest(dmr.CONFIG_V02, [_layer(dmr.SAFETENSORS, 1, first), _layer(dmr.SAFETENSORS, 2, second)])
    with pytest.raises(InvalidModelError) as info:
        formats.recognise(manifest, _config())
    normal = first.replace("./", "")
    assert info.value.cause == f"two layers ({_digest(1)[:19]}, {_digest(2)[:19]}) both write {normal!r}"


def test_v01_default_name_colliding_with_an_annotated_one_is_invalid():
    manifest = _manifest(dmr.CONFIG_V01, [_layer(dmr.SAFETENSORS, 1), _layer(dmr.MODEL_FILE, 2, "template.jinja"),
                                          _layer(dmr.CHAT_TEMPLATE, 3)])
    with pytest.raises(InvalidModelError, match=r"both write 'template\.jinja'"):
        formats.recognise(manifest, _config())


def test_unknown_artifact_lists_its_media_types():
    manifest = _manifest("application/vnd.oci.image.config.v1+json",
                         [_layer("application/vnd.oci.image.layer.v1.tar+gzip", 1),
                          _layer("application/vnd.ollama.image.model", 2)],
                         artifact_type="application/vnd.example.thing")
    with pytest.raises(UnsupportedFormatError) as info:
        formats.recognise(manifest, b"{}")
    assert info.value.cause == (
        "unrecognised artifact (artifactType 'application/vnd.example.thing'); media types found: "
        "application/vnd.oci.image.config.v1+json, application/vnd.oci.image.layer.v1.tar+gzip, "
        "application/vnd.ollama.image.model")


# --- safe_relative_path -------------------------------------------------------------------------------------

@pytest.mark.parametrize(("raw", "expected"), [
    ("model.safetensors", "model.safetensors"),
    ("tokenizer/tokenizer.json", "tokenizer/tokenizer.json"),
    ("./config.json", "config.json"),
    ("a//b", "a/b"),
    ("a/./b/", "a/b"),
    ("a/../b", "b"),
    ("..hidden", "..hidden"),
    ("a/..b", "a/..b"),
    ("ab:c", "ab:c"),
])
def test_safe_relative_path_good(raw, expected):
    assert safe_relative_path(raw, "here") == expected


@pytest.mark.parametrize(("raw", "why"), [
    ("", "absolute, empty or with backslashes"),
    ("/etc/passwd", "absolute, empty or with backslashes"),
    ("//server/share", "absolute, empty or with backslashes"),
    ("a\\b", "absolute, empty or with backslashes"),
    ("..\\x", "absolute, empty or with backslashes"),
    ("C:/Windows", "absolute, empty or with backslashes"),
    ("C:x", "absolute, empty or with backslashes"),  # drive-relative; any "?:" start is refused
    ("a\x00b", "absolute, empty or with backslashes"),
    ("..", "escapes the model directory"),
    ("../x", "escapes the model directory"),
    ("../../etc/passwd", "escapes the model directory"),
    ("a/../../x", "escapes the model directory"),
    (".", "escapes the model directory"),
    ("./", "escapes the model directory"),
    ("a/..", "escapes the model directory"),
])
def test_safe_relative_path_bad(raw, why):
    with pytest.raises(InvalidModelError) as info:
        safe_relative_path(raw, "layer 3")
    assert info.value.cause.startswith("layer 3: ")
    assert repr(raw) in info.value.cause
    assert why in info.value.cause
    assert info.value.fix == "re-push the artifact with relative file paths"
