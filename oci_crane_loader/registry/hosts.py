"""Rules about registry hosts that both roads to a registry share (crane follows them inside Go; the HTTP road
follows them here, so the two agree)."""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit


def is_loopback(host: str) -> bool:
    """``localhost``, ``*.localhost`` or a loopback address, with or without a port."""
    name = urlsplit(f"//{host}").hostname or ""
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def may_fall_back_to_http(host: str, *, insecure: bool) -> bool:
    """crane (ggcr's pkg/name, Registry.Scheme) tries https then http for --insecure, loopback and private
    addresses."""
    if insecure or is_loopback(host):
        return True
    try:
        return ipaddress.ip_address(urlsplit(f"//{host}").hostname or "").is_private
    except ValueError:
        return False
