"""Fuzzing what a hostile registry controls byte for byte: tar layers (with and without whiteouts) and safetensors
headers and indexes. Every input is accepted or refused with one OciCraneError; nothing else is raised, and nothing
outside the target directory is written or deleted (a sibling directory is snapshotted around each example)."""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import struct
import tarfile
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from oci_crane_loader.errors import OciCraneError
from oci_crane_loader.materialize import extract_tar
from oci_crane_loader.safetensors_check import DTYPE_BITS, INDEX_FILENAME, check_model_dir, read_header, read_index

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def snapshot(root: Path) -> dict[str, bytes | None]:
    """Every path under ``root``: file contents, None for directories (symlinks read as what they are)."""
    found: dict[str, bytes | None] = {}
    for path in sorted(root.rglob("*")):
        relative = str(path.relative_to(root))
        if path.is_symlink():
            found[relative] = b"symlink:" + str(path.readlink()).encode(errors="surrogateescape")
        elif path.is_dir():
            found[relative] = None
        else:
            found[relative] = path.read_bytes()
    return found


def guarded_sandbox(check) -> None:  # type: ignore[no-untyped-def]
    """Run ``check(target)`` with a target directory beside a populated sibling; both must stay apart."""
    with tempfile.TemporaryDirectory() as scratch:
        parent = Path(scratch) / "cache" / "tmp"
        target, sibling = parent / "model-work", parent / "sibling"
        target.mkdir(parents=True)
        (sibling / "nested").mkdir(parents=True)
        (sibling / "partial.incomplete").write_bytes(b"another fetch")
        (sibling / "nested" / "config.json").write_bytes(b"{}")
        before = snapshot(sibling)
        with contextlib.suppress(OciCraneError):
            check(target)
        assert snapshot(sibling) == before
        assert sorted(path.name for path in parent.iterdir()) == ["model-work", "sibling"]
        assert sorted(path.name for path in Path(scratch).iterdir()) == ["cache"]
        for path in target.rglob("*"):  # only regular files and directories ever reach the disk
            assert not path.is_symlink() and (path.is_dir() or path.is_file()), path


# --- tar layers -----------------------------------------------------------------------------------------------
# Mostly names a real layer holds (so that examples get past their first entry), some hostile ones.
PLAIN = st.lists(st.sampled_from(["a", "b", "c", "config.json", "model.safetensors", ".wh.a", ".wh.b", ".wh.c",
                                  ".wh..wh..opq"]), min_size=1, max_size=3).map("/".join)
HOSTILE = st.one_of(
    st.sampled_from(["", ".", "..", "../x", "/etc/x", "a/../../x", "a/..", ".wh.", ".wh..", ".wh...", "a/.wh..",
                     "a/.wh...", ".wh../x", "x" * 300, "a/" + "x" * 300, "a\\b", "C:x"]),
    st.text(st.characters(max_codepoint=0xFF, exclude_characters="\x00", exclude_categories=["Cs"]),
            min_size=1, max_size=8),  # written as latin-1 too: names that are not UTF-8
    st.integers(200, 1500).map(lambda depth: "/".join(["d"] * depth) + "/f"),
)
NAMES = st.one_of(PLAIN, PLAIN, PLAIN, HOSTILE)
TYPES = [tarfile.REGTYPE, tarfile.REGTYPE, tarfile.REGTYPE, tarfile.DIRTYPE, tarfile.DIRTYPE, tarfile.LNKTYPE,
         tarfile.LNKTYPE, tarfile.SYMTYPE, tarfile.CHRTYPE, tarfile.BLKTYPE, tarfile.FIFOTYPE]
MEMBERS = st.lists(st.tuples(st.sampled_from(TYPES), NAMES, NAMES, st.integers(0, 3000)), min_size=1, max_size=8)


def build_tar(members: list[tuple[bytes, str, str, int]], encoding: str) -> bytes | None:
    """A GNU tar (long names allowed) of ``members``; None where tarfile itself cannot write one."""
    buffer = io.BytesIO()
    try:
        with tarfile.open(fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT, encoding=encoding) as tar:
            for kind, name, link, size in members:
                info = tarfile.TarInfo(name)
                info.type, info.mode = kind, 0o755
                if kind in (tarfile.SYMTYPE, tarfile.LNKTYPE):
                    info.linkname = link
                if kind == tarfile.REGTYPE:
                    info.size = size
                    tar.addfile(info, io.BytesIO(bytes(size)))
                else:
                    tar.addfile(info)
    except (UnicodeEncodeError, ValueError):
        return None
    return buffer.getvalue()


@FUZZ
@given(layers=st.lists(MEMBERS, min_size=1, max_size=3), encoding=st.sampled_from(["utf-8", "latin-1"]),
       overlay=st.booleans(), into=st.sampled_from([None, "sub"]), packing=st.sampled_from(["tar", "gzip", "cut"]),
       cut=st.integers(0, 4096))
def test_tar_layers_land_inside_the_target_or_are_refused(layers, encoding, overlay, into, packing, cut):
    archives = [build_tar(members, encoding) for members in layers]
    if any(data is None for data in archives):
        return
    with tempfile.TemporaryDirectory() as holder:
        paths = []
        for number, data in enumerate(archives):
            assert data is not None
            payload = gzip.compress(data) if packing == "gzip" else data[:cut] if packing == "cut" else data
            paths.append(Path(holder) / f"layer{number}.tar")
            paths[-1].write_bytes(payload)

        def extract(target: Path) -> None:
            for number, path in enumerate(paths):
                extract_tar(path, target, f"layer {number}", into=into, overlay=overlay)
            if into is not None:
                assert [path.name for path in target.iterdir()] in ([], ["sub"])

        guarded_sandbox(extract)


# --- safetensors headers and indexes --------------------------------------------------------------------------
JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=5),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=5), children, max_size=4),
    max_leaves=12,
)
ENTRIES = st.fixed_dictionaries({
    "dtype": st.sampled_from([*DTYPE_BITS, "F128"]) | JSON,
    "shape": st.lists(st.integers(-1, 40), max_size=3) | JSON,
    "data_offsets": st.lists(st.integers(-1, 200), min_size=2, max_size=2) | JSON,
})
HEADERS = st.one_of(
    st.dictionaries(st.text(max_size=6) | st.just("__metadata__"), ENTRIES | JSON, max_size=5).map(
        lambda header: json.dumps(header).encode()),
    st.binary(max_size=300),
)
INDEXES = st.one_of(
    st.fixed_dictionaries({"weight_map": st.dictionaries(st.text(max_size=6), st.text(max_size=8) | JSON,
                                                         max_size=4),
                           "metadata": JSON}).map(lambda index: json.dumps(index).encode()),
    st.binary(max_size=200),
)


@FUZZ
@given(header=HEADERS, data=st.binary(max_size=300), length=st.none() | st.integers(0, 2**64 - 1),
       index=st.none() | INDEXES, name=st.sampled_from(["model.safetensors", "a.safetensors", "weights.bin"]))
def test_safetensors_headers_and_indexes_are_read_or_refused(header, data, length, index, name):
    def check(target: Path) -> None:
        prefix = struct.pack("<Q", len(header) if length is None else length)
        (target / name).write_bytes(prefix + header + data)
        if index is not None:
            (target / INDEX_FILENAME).write_bytes(index)
        with contextlib.suppress(OciCraneError):
            read_header(target / name)
        if index is not None:
            with contextlib.suppress(OciCraneError):
                read_index(target / INDEX_FILENAME)
        check_model_dir(target)

    guarded_sandbox(check)
