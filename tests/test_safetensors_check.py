"""Tests for oci_crane_loader.safetensors_check.

Valid files come from the real safetensors library; broken ones are written byte by byte. Where the crate has an
opinion, test_agrees_with_the_crate checks that it accepts and rejects the same crafted files we do.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from oci_crane_loader.errors import InvalidModelError
from oci_crane_loader.safetensors_check import (
    DTYPE_BITS,
    INDEX_FILENAME,
    SafetensorsHeader,
    SafetensorsIndex,
    TensorInfo,
    check_model_dir,
    read_header,
    read_index,
)

np = pytest.importorskip("numpy")
st_numpy = pytest.importorskip("safetensors.numpy")
safetensors = pytest.importorskip("safetensors")


# --- helpers ---------------------------------------------------------------------------------------------------


def write_raw(path: Path, header: dict | str | bytes, data: bytes = b"", *, length: int | None = None) -> Path:
    """Write 8-byte length + header + data. ``length`` overrides the length field to fake bad files."""
    if isinstance(header, dict):
        raw = json.dumps(header).encode()
    elif isinstance(header, str):
        raw = header.encode()
    else:
        raw = header
    path.write_bytes(struct.pack("<Q", len(raw) if length is None else length) + raw + data)
    return path


def entry(dtype: str, shape: list, begin: int, end: int) -> dict:
    return {"dtype": dtype, "shape": shape, "data_offsets": [begin, end]}


def error_of(path: Path) -> str:
    with pytest.raises(InvalidModelError) as info:
        read_header(path)
    return info.value.cause


def save(path: Path, tensors: dict, metadata: dict | None = None) -> Path:
    st_numpy.save_file(tensors, str(path), metadata=metadata)
    return path


def make_sharded(root: Path) -> dict[str, str]:
    """Two shards and a matching index, as transformers writes them."""
    save(
        root / "model-00001-of-00002.safetensors",
        {"embed.weight": np.zeros((4, 8), np.float16), "layers.0.w": np.ones((8, 8), np.float32)},
    )
    save(root / "model-00002-of-00002.safetensors", {"lm_head.weight": np.zeros((4, 8), np.float16)})
    weight_map = {
        "embed.weight": "model-00001-of-00002.safetensors",
        "layers.0.w": "model-00001-of-00002.safetensors",
        "lm_head.weight": "model-00002-of-00002.safetensors",
    }
    write_index(root, weight_map)
    return weight_map


def write_index(root: Path, weight_map: dict, **extra) -> Path:
    path = root / INDEX_FILENAME
    path.write_text(json.dumps({"metadata": {"total_size": 192}, "weight_map": weight_map, **extra}))
    return path


# --- valid files -----------------------------------------------------------------------------------------------


def test_library_written_file_passes(tmp_path):
    tensors = {
        "a.bool": np.array([True, False, True]),
        "b.u8": np.arange(5, dtype=np.uint8),
        "c.i16": np.arange(6, dtype=np.int16).reshape(2, 3),
        "d.f16": np.zeros((3, 1), np.float16),
        "e.f32": np.ones((2, 2, 2), np.float32),
        "f.f64": np.zeros(3, np.float64),
        "g.i64": np.zeros((1,), np.int64),
        "h.u64": np.zeros((2,), np.uint64),
        "scalar": np.array(3.0, np.float32),
        "empty": np.zeros((0, 4), np.float32),
    }
    path = save(tmp_path / "model.safetensors", tensors, metadata={"format": "pt", "note": "hi"})

    header = read_header(path)

    assert set(header.tensors) == set(tensors)
    assert header.tensors["c.i16"] == TensorInfo(
        dtype="I16", shape=[2, 3], data_offsets=header.tensors["c.i16"].data_offsets
    )
    assert header.tensors["scalar"].shape == []
    assert header.tensors["empty"].shape == [0, 4]
    assert header.metadata == {"format": "pt", "note": "hi"}
    assert header.data_start == 8 + header.header_size
    assert header.data_start + header.data_size == path.stat().st_size
    # Same layout the library reports.
    with safetensors.safe_open(str(path), framework="numpy") as f:
        assert sorted(f.keys()) == sorted(header.tensors)


def test_empty_file_from_library_passes(tmp_path):
    header = read_header(save(tmp_path / "empty.safetensors", {}))
    assert header.tensors == {}
    assert header.metadata is None
    assert header.data_size == 0


def test_accepts_str_path_and_sub_byte_dtypes(tmp_path):
    # F4: 2*3*4 bits = 3 bytes; F6: 4*6 bits = 3 bytes; F8_E8M0 and C64 are byte-sized.
    header = {
        "w.f4": entry("F4", [2, 3], 0, 3),
        "w.f6": entry("F6_E2M3", [4], 3, 6),
        "w.e8m0": entry("F8_E8M0", [2], 6, 8),
        "w.c64": entry("C64", [1], 8, 16),
        "__metadata__": {"format": "pt"},
    }
    path = write_raw(tmp_path / "mx.safetensors", header, bytes(16))
    parsed = read_header(str(path))
    assert parsed.tensors["w.f4"].nbytes == 3
    assert parsed.tensors["w.c64"].data_offsets == (8, 16)


def test_zero_length_tensors_may_share_an_offset(tmp_path):
    header = {
        "a": entry("F32", [1], 0, 4),
        "z1": entry("F32", [0], 4, 4),
        "z2": entry("BF16", [3, 0], 4, 4),
        "b": entry("U8", [2], 4, 6),
    }
    assert set(read_header(write_raw(tmp_path / "z.safetensors", header, bytes(6))).tensors) == {"a", "z1", "z2", "b"}


def test_entry_order_in_json_does_not_matter(tmp_path):
    header = {"second": entry("U8", [4], 4, 8), "first": entry("U8", [4], 0, 4)}
    assert len(read_header(write_raw(tmp_path / "o.safetensors", header, bytes(8))).tensors) == 2


def test_dtype_table_matches_crate():
    assert DTYPE_BITS["F4"] == 4 and DTYPE_BITS["F6_E3M2"] == 6 and DTYPE_BITS["BF16"] == 16
    classic = {"BOOL", "U8", "I8", "F8_E5M2", "F8_E4M3", "F8_E8M0", "I16", "U16", "F16", "I32", "U32", "F32"}
    assert classic | {"F64", "I64", "U64"} <= set(DTYPE_BITS)


# --- broken files: framing -------------------------------------------------------------------------------------


def test_file_shorter_than_length_prefix(tmp_path):
    path = tmp_path / "tiny.safetensors"
    path.write_bytes(b"\x05\x00\x00")
    cause = error_of(path)
    assert "tiny.safetensors" in cause and "3 bytes" in cause and "8-byte header length" in cause


def test_header_length_over_limit(tmp_path):
    path = write_raw(tmp_path / "huge.safetensors", "{}", length=200_000_000)
    cause = error_of(path)
    assert "huge.safetensors" in cause and "200000000" in cause and "100000000-byte limit" in cause


def test_header_length_past_end_of_file(tmp_path):
    path = write_raw(tmp_path / "short.safetensors", "{}", length=64)
    cause = error_of(path)
    assert "short.safetensors" in cause and "says 64 bytes but only 2 bytes follow" in cause


def test_truncated_data(tmp_path):
    path = save(tmp_path / "model-00001-of-00002.safetensors", {"w": np.zeros((4, 4), np.float32)})
    path.write_bytes(path.read_bytes()[:-10])
    cause = error_of(path)
    assert "model-00001-of-00002.safetensors" in cause
    assert "tensors need 64 bytes of data but only 54 bytes follow" in cause and "truncated by 10 bytes" in cause


def test_trailing_bytes(tmp_path):
    path = save(tmp_path / "t.safetensors", {"w": np.zeros(4, np.uint8)})
    path.write_bytes(path.read_bytes() + b"junk")
    cause = error_of(path)
    assert "t.safetensors" in cause and "4 trailing bytes after the last tensor" in cause


def test_header_not_utf8(tmp_path):
    cause = error_of(write_raw(tmp_path / "u.safetensors", b'{"\xff": 1}'))
    assert "u.safetensors" in cause and "not valid UTF-8" in cause and "file offset 10" in cause


def test_header_not_json(tmp_path):
    cause = error_of(write_raw(tmp_path / "j.safetensors", '{"w": {"dtype": "F32",'))
    assert "j.safetensors" in cause and "header is not valid JSON" in cause


def test_header_json_not_an_object(tmp_path):
    cause = error_of(write_raw(tmp_path / "l.safetensors", "[1, 2]"))
    assert "l.safetensors" in cause and "header JSON is an array, expected an object" in cause


def test_header_nan_rejected(tmp_path):
    cause = error_of(write_raw(tmp_path / "n.safetensors", '{"__metadata__": {"x": NaN}}'))
    assert "n.safetensors" in cause and "NaN is not valid JSON" in cause


def test_lone_surrogate_rejected(tmp_path):
    cause = error_of(
        write_raw(tmp_path / "s.safetensors", '{"\\ud800": {"dtype": "U8", "shape": [0], "data_offsets": [0, 0]}}')
    )
    assert "s.safetensors" in cause and "unpaired surrogate" in cause


# --- broken files: tensor entries ------------------------------------------------------------------------------


def test_unknown_dtype(tmp_path):
    cause = error_of(write_raw(tmp_path / "d.safetensors", {"w": entry("F128", [1], 0, 16)}, bytes(16)))
    assert "d.safetensors: tensor 'w'" in cause and "unknown dtype 'F128'" in cause and "BF16" in cause


def test_shape_length_mismatch(tmp_path):
    header = {"lm_head.weight": entry("BF16", [32, 64], 0, 2048)}
    cause = error_of(write_raw(tmp_path / "model-00001-of-00002.safetensors", header, bytes(2048)))
    assert cause == (
        "model-00001-of-00002.safetensors: tensor 'lm_head.weight': data_offsets [0, 2048] hold 2048 bytes "
        "but shape [32, 64] of BF16 needs 4096 bytes"
    )


def test_sub_byte_tensor_not_whole_bytes(tmp_path):
    cause = error_of(write_raw(tmp_path / "f4.safetensors", {"w": entry("F4", [3], 0, 2)}, bytes(2)))
    assert "f4.safetensors: tensor 'w'" in cause and "12 bits, not a whole number of bytes" in cause


def test_negative_dimension(tmp_path):
    cause = error_of(write_raw(tmp_path / "neg.safetensors", {"w": entry("U8", [2, -1], 0, 0)}))
    assert "neg.safetensors: tensor 'w'" in cause and "shape [2, -1] has negative dimension -1" in cause


@pytest.mark.parametrize("dim", [2.0, "2", True, None])
def test_non_integer_dimension(tmp_path, dim):
    cause = error_of(write_raw(tmp_path / "f.safetensors", {"w": entry("U8", [dim], 0, 2)}, bytes(2)))
    assert "f.safetensors: tensor 'w': shape[0]" in cause and "valid integer" in cause


def test_shape_overflow(tmp_path):
    cause = error_of(write_raw(tmp_path / "o.safetensors", {"w": entry("U8", [2**40, 2**40, 0], 0, 0)}))
    assert "o.safetensors: tensor 'w'" in cause and "more than 2**64 elements" in cause


def test_offsets_end_before_begin(tmp_path):
    cause = error_of(write_raw(tmp_path / "r.safetensors", {"w": entry("U8", [0], 4, 0)}, bytes(4)))
    assert "r.safetensors: tensor 'w'" in cause and "data_offsets [4, 0] end before they begin" in cause


def test_missing_field(tmp_path):
    cause = error_of(write_raw(tmp_path / "m.safetensors", {"w": {"dtype": "U8", "shape": [1]}}, bytes(1)))
    assert "m.safetensors: tensor 'w': data_offsets is missing" in cause


def test_entry_not_an_object(tmp_path):
    cause = error_of(write_raw(tmp_path / "e.safetensors", {"w": [1, 2]}))
    assert "e.safetensors: tensor 'w': entry is an array" in cause


def test_metadata_values_must_be_strings(tmp_path):
    header = {"__metadata__": {"total": 3}, "w": entry("U8", [1], 0, 1)}
    cause = error_of(write_raw(tmp_path / "md.safetensors", header, bytes(1)))
    assert "md.safetensors" in cause and "metadata['total']" in cause and "valid string" in cause


def test_duplicate_tensor_names(tmp_path):
    text = (
        '{"w": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]}, '
        '"w": {"dtype": "U8", "shape": [1], "data_offsets": [1, 2]}}'
    )
    cause = error_of(write_raw(tmp_path / "dup.safetensors", text, bytes(2)))
    assert cause == "dup.safetensors: header has duplicate tensor name 'w'"


def test_duplicate_key_inside_entry(tmp_path):
    text = '{"w": {"dtype": "U8", "dtype": "F32", "shape": [1], "data_offsets": [0, 1]}}'
    cause = error_of(write_raw(tmp_path / "dk.safetensors", text, bytes(1)))
    assert cause == "dk.safetensors: tensor 'w': entry has duplicate key 'dtype'"


def test_duplicate_metadata_key(tmp_path):
    cause = error_of(write_raw(tmp_path / "dm.safetensors", '{"__metadata__": {"a": "1", "a": "2"}}'))
    assert cause == "dm.safetensors: __metadata__ has duplicate key 'a'"


# --- broken files: layout --------------------------------------------------------------------------------------


def test_gap_between_tensors(tmp_path):
    header = {"a": entry("F32", [2], 0, 8), "b": entry("F32", [2], 12, 20)}
    cause = error_of(write_raw(tmp_path / "gap.safetensors", header, bytes(20)))
    assert cause == (
        "gap.safetensors: tensor 'b' starts at data offset 12 but tensor 'a' ends at 8: gap of 4 unused bytes"
    )


def test_first_tensor_not_at_zero(tmp_path):
    cause = error_of(write_raw(tmp_path / "g0.safetensors", {"a": entry("U8", [2], 2, 4)}, bytes(4)))
    assert "g0.safetensors: tensor 'a' starts at data offset 2 but data starts at 0: gap of 2" in cause


def test_overlapping_tensors(tmp_path):
    header = {"a": entry("F32", [4], 0, 16), "b": entry("F32", [2], 8, 16)}
    cause = error_of(write_raw(tmp_path / "ov.safetensors", header, bytes(16)))
    assert cause == "ov.safetensors: tensor 'b' (data offsets [8, 16]) overlaps tensor 'a', which ends at 16"


def test_aliased_tensors_are_an_overlap(tmp_path):
    header = {"a": entry("U8", [4], 0, 4), "b": entry("U8", [4], 0, 4)}
    cause = error_of(write_raw(tmp_path / "al.safetensors", header, bytes(4)))
    assert "al.safetensors" in cause and "overlaps tensor 'a'" in cause


# --- the crate agrees ------------------------------------------------------------------------------------------

CRAFTED = {
    "ok_plain": ({"a": entry("F32", [2], 0, 8)}, bytes(8), True),
    "ok_sub_byte": ({"a": entry("F4", [2, 2], 0, 2)}, bytes(2), True),
    "ok_zero_len": ({"a": entry("U8", [0], 0, 0), "b": entry("U8", [1], 0, 1)}, bytes(1), True),
    "unknown_dtype": ({"a": entry("F128", [1], 0, 16)}, bytes(16), False),
    "mismatch": ({"a": entry("F32", [3], 0, 8)}, bytes(8), False),
    "misaligned": ({"a": entry("F4", [3], 0, 2)}, bytes(2), False),
    "gap": ({"a": entry("U8", [1], 0, 1), "b": entry("U8", [1], 2, 3)}, bytes(3), False),
    "overlap": ({"a": entry("U8", [2], 0, 2), "b": entry("U8", [1], 1, 2)}, bytes(2), False),
    "trailing": ({"a": entry("U8", [1], 0, 1)}, bytes(2), False),
    "truncated": ({"a": entry("U8", [4], 0, 4)}, bytes(2), False),
    "negative": ({"a": entry("U8", [-1], 0, 0)}, b"", False),
    "float_dim": ({"a": entry("U8", [1.0], 0, 1)}, bytes(1), False),
    "bad_metadata": ({"__metadata__": {"k": 1}}, b"", False),
}


@pytest.mark.parametrize("case", sorted(CRAFTED))
def test_agrees_with_the_crate(tmp_path, case):
    header, data, valid = CRAFTED[case]
    path = write_raw(tmp_path / f"{case}.safetensors", header, data)
    try:
        with safetensors.safe_open(str(path), framework="numpy") as f:
            list(f.keys())
        crate_ok = True
    except safetensors.SafetensorError:
        crate_ok = False
    try:
        read_header(path)
        ours_ok = True
    except InvalidModelError:
        ours_ok = False
    assert (crate_ok, ours_ok) == (valid, valid)


# --- models used directly --------------------------------------------------------------------------------------


def test_models_validate_on_their_own():
    with pytest.raises(ValueError, match="needs 8 bytes"):
        TensorInfo(dtype="F32", shape=[2], data_offsets=(0, 4))
    with pytest.raises(ValueError, match="gap of 4"):
        SafetensorsHeader(
            tensors={"a": TensorInfo(dtype="U8", shape=[4], data_offsets=(4, 8))}, metadata=None, header_size=8
        )
    index = SafetensorsIndex(weight_map={"a": "x.safetensors"}, extra_key=1)
    assert index.files == ["x.safetensors"] and index.model_extra == {"extra_key": 1}


# --- index and model directory ---------------------------------------------------------------------------------


def test_sharded_model_dir_passes(tmp_path):
    make_sharded(tmp_path)
    (tmp_path / "config.json").write_text("{}")
    assert check_model_dir(tmp_path) == ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    index = read_index(tmp_path / INDEX_FILENAME)
    assert index.metadata == {"total_size": 192}
    assert index.weight_map["lm_head.weight"] == "model-00002-of-00002.safetensors"


def test_model_dir_without_index_returns_top_level_files(tmp_path):
    save(tmp_path / "b.safetensors", {"x": np.zeros(2, np.float32)})
    save(tmp_path / "a.safetensors", {"y": np.zeros(2, np.float32)})
    (tmp_path / "extra").mkdir()
    save(tmp_path / "extra" / "adapter.safetensors", {"z": np.zeros(2, np.float32)})
    assert check_model_dir(str(tmp_path)) == ["a.safetensors", "b.safetensors"]


def test_model_dir_with_no_weights_returns_empty(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    assert check_model_dir(tmp_path) == []


def test_model_dir_follows_symlinked_files(tmp_path):
    # The Hugging Face cache stores snapshot files as symlinks into blobs/.
    blob = save(tmp_path / "blob", {"x": np.zeros(2, np.float32)})
    snapshot = tmp_path / "snapshot"
    snapshot.mkdir()
    (snapshot / "model.safetensors").symlink_to(blob)
    assert check_model_dir(snapshot) == ["model.safetensors"]


def test_model_dir_nested_bad_file_named_by_relative_path(tmp_path):
    save(tmp_path / "model.safetensors", {"x": np.zeros(2, np.float32)})
    (tmp_path / "sub").mkdir()
    bad = save(tmp_path / "sub" / "bad.safetensors", {"x": np.zeros(2, np.float32)})
    bad.write_bytes(bad.read_bytes()[:-1])
    with pytest.raises(InvalidModelError, match=r"^sub/bad\.safetensors: tensors need 8 bytes"):
        check_model_dir(tmp_path)


def test_model_dir_not_a_directory(tmp_path):
    with pytest.raises(InvalidModelError, match="not a directory"):
        check_model_dir(tmp_path / "nope")


def test_index_names_missing_file(tmp_path):
    make_sharded(tmp_path)
    (tmp_path / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(InvalidModelError) as info:
        check_model_dir(tmp_path)
    assert info.value.cause == (
        f"{INDEX_FILENAME}: names 1 file(s) that do not exist: 'model-00002-of-00002.safetensors'"
    )
    assert "pull the model again" in info.value.fix


def test_index_tensor_not_in_file(tmp_path):
    weight_map = make_sharded(tmp_path)
    weight_map["lm_head.bias"] = "model-00002-of-00002.safetensors"
    write_index(tmp_path, weight_map)
    with pytest.raises(InvalidModelError) as info:
        check_model_dir(tmp_path)
    assert info.value.cause == (
        f"{INDEX_FILENAME}: maps 1 tensor(s) to model-00002-of-00002.safetensors that it does not contain: "
        "'lm_head.bias'"
    )


def test_index_tensor_in_the_wrong_shard(tmp_path):
    weight_map = make_sharded(tmp_path)
    weight_map["lm_head.weight"] = "model-00001-of-00002.safetensors"
    write_index(tmp_path, weight_map)
    with pytest.raises(InvalidModelError, match=r"to model-00001-of-00002\.safetensors .*'lm_head\.weight'"):
        check_model_dir(tmp_path)


def test_index_shard_with_bad_header(tmp_path):
    make_sharded(tmp_path)
    shard = tmp_path / "model-00002-of-00002.safetensors"
    shard.write_bytes(shard.read_bytes() + b"\0")
    with pytest.raises(InvalidModelError, match=r"^model-00002-of-00002\.safetensors: 1 trailing bytes"):
        check_model_dir(tmp_path)


@pytest.mark.parametrize(
    "filename",
    ["../x.safetensors", "/abs/x.safetensors", "sub/x.safetensors", "..\\x.safetensors", "", "..", "."],
)
def test_index_rejects_non_plain_file_names(tmp_path, filename):
    path = write_index(tmp_path, {"w": filename})
    with pytest.raises(InvalidModelError) as info:
        read_index(path)
    assert info.value.cause == (
        f"{INDEX_FILENAME}: weight_map tensor 'w' maps to {filename!r}, which is not a plain file name next to "
        "the index (no '/', '\\', '..', absolute or empty names)"
    )
    # check_model_dir goes through the same validation, before touching the file system.
    with pytest.raises(InvalidModelError, match="not a plain file name"):
        check_model_dir(tmp_path)


def test_index_missing_weight_map(tmp_path):
    path = tmp_path / INDEX_FILENAME
    path.write_text('{"metadata": {}}')
    with pytest.raises(InvalidModelError) as info:
        read_index(path)
    assert info.value.cause == f"{INDEX_FILENAME}: weight_map: Field required"


def test_index_empty_weight_map(tmp_path):
    with pytest.raises(InvalidModelError, match="weight_map is empty"):
        read_index(write_index(tmp_path, {}))


def test_index_non_string_file(tmp_path):
    with pytest.raises(InvalidModelError, match=r"weight_map\.w: Input should be a valid string"):
        read_index(write_index(tmp_path, {"w": 3}))


def test_index_duplicate_tensor(tmp_path):
    path = tmp_path / INDEX_FILENAME
    path.write_text('{"weight_map": {"w": "a.safetensors", "w": "b.safetensors"}}')
    with pytest.raises(InvalidModelError, match="weight_map lists tensor 'w' more than once"):
        read_index(path)


def test_index_not_json(tmp_path):
    path = tmp_path / INDEX_FILENAME
    path.write_text('{"weight_map": ')
    with pytest.raises(InvalidModelError, match=f"^{INDEX_FILENAME} is not valid JSON"):
        read_index(path)


def test_error_is_a_value_error_with_one_line(tmp_path):
    path = write_raw(tmp_path / "x.safetensors", "{}", b"zz")
    with pytest.raises(ValueError) as info:
        read_header(path)
    assert isinstance(info.value, InvalidModelError)
    assert info.value.one_line().startswith("x.safetensors: 2 trailing bytes")


# --- memory ----------------------------------------------------------------------------------------------------


def many_tensor_shards(root: Path, shards: int, tensors: int) -> int:
    """Shards whose headers list many one-byte tensors (a header is ~100 MB at 1.7 M tensors); the header size."""
    for shard in range(shards):
        header = {f"model.layers.{n}.s{shard}.weight": entry("U8", [1], n, n + 1) for n in range(tensors)}
        raw = json.dumps(header, separators=(",", ":")).encode()
        (root / f"s{shard}.safetensors").write_bytes(struct.pack("<Q", len(raw)) + raw + bytes(tensors))
    return len(raw)


def test_headers_are_parsed_with_memory_bounded_by_one_header(tmp_path):
    """Before: about 18x a header's size for one header (a pydantic object per tensor) and 47x for four shards,
    every header kept; now about 9x as tracemalloc counts it, whatever the number of shards (the process's peak:
    test_peak_memory_of_the_densest_header)."""
    import tracemalloc

    header_bytes = many_tensor_shards(tmp_path, shards=4, tensors=5000)
    tracemalloc.start()
    try:
        header = read_header(tmp_path / "s0.safetensors")
        one = tracemalloc.get_traced_memory()[1]
        del header
        tracemalloc.reset_peak()
        assert len(check_model_dir(tmp_path)) == 4
        four = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert one < 14 * header_bytes
    assert four < 16 * header_bytes


def test_peak_memory_of_the_densest_header(tmp_path):
    """docs/security.md's figure, measured as the kernel sees it (VmHWM, in a fresh process): the densest header,
    zero-size tensors with short names (as a hostile one would be), costs about 14 times its size at peak: 13.8x
    for a 95 MiB header of 1.77 M tensors (1.3 GB), 14.6x for this one of 9.5 MiB. tracemalloc sees less (it
    misses the allocator's own overhead)."""
    import subprocess
    import sys

    if not Path("/proc/self/status").is_file():
        pytest.skip("needs Linux /proc to read the peak resident size")
    parts = [f'"{n:x}":{{"dtype":"U8","shape":[0],"data_offsets":[0,0]}}' for n in range(180_000)]
    raw = ("{" + ",".join(parts) + "}").encode()
    path = tmp_path / "dense.safetensors"
    path.write_bytes(struct.pack("<Q", len(raw)) + raw)
    script = (
        "import sys\n"
        "from oci_crane_loader.safetensors_check import read_header\n"
        "def peak():\n"
        "    return next(int(l.split()[1]) * 1024 for l in open('/proc/self/status') if l.startswith('VmHWM:'))\n"
        "before = peak(); header = read_header(sys.argv[1]); print(len(header.tensors), peak() - before)\n")
    done = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True, text=True, check=True)
    tensors, growth = map(int, done.stdout.split())
    assert tensors == 180_000
    assert 8 * len(raw) < growth < 16 * len(raw)  # docs/security.md: about 14 times
