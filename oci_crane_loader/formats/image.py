"""Recogniser for image artifacts (not implemented yet: claims nothing)."""

from __future__ import annotations

from ..oci import Manifest
from . import Plan


def recognise(manifest: Manifest, config: bytes) -> Plan | None:
    return None
