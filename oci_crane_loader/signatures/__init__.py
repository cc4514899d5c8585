"""Signature verification: `--verify-key` / OCI_CRANE_VERIFY_KEYS make a fetch refuse a model that no trusted key
signed, before any weight is downloaded (policy.py), reading cosign's signatures (cosign.py) with the keys
(keys.py); `oci-crane push --sign-key` writes them.

The policy's terms live here, light to import: every fetch carries a VerifyPolicy (mostly empty), and only one
with keys loads policy.py and what it needs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .keys import PublicKey


@dataclass(frozen=True)
class VerifyPolicy:
    """The trusted keys; none: no policy (the default)."""

    keys: tuple[PublicKey, ...] = ()

    @property
    def enforced(self) -> bool:
        return bool(self.keys)

    def names(self) -> str:
        return ", ".join(key.path for key in self.keys)


def verify_policy(paths: Sequence[str | Path]) -> VerifyPolicy:
    """The keys at ``paths``, each read and checked now: a bad key file is refused before any work."""
    if not paths:
        return VerifyPolicy()
    from .keys import load_public_key

    return VerifyPolicy(tuple(load_public_key(path) for path in dict.fromkeys(str(path) for path in paths)))
