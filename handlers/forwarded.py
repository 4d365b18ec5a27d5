"""Who sent a request: the peer, or, when the peer is one of TRUSTED_PROXIES, the client it names
in X-Forwarded-For, with the scheme and host from X-Forwarded-Proto and X-Forwarded-Host."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass

from tornado.httputil import HTTPServerRequest

from config import Network

PROTOCOL = re.compile(r"https?")
HOST = re.compile(r"(?:[A-Za-z0-9-]+\.)*[A-Za-z0-9-]+(?::[0-9]{1,5})?|\[[0-9A-Fa-f:.]+\](?::[0-9]{1,5})?")

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class Client:
    """The client's address, and the scheme and host it sent the request to."""

    address: str
    protocol: str
    host: str


def client_of(request: HTTPServerRequest, trusted: Sequence[Network]) -> Client:
    """The client of `request`; X-Forwarded-* headers count only when the peer is a trusted proxy."""
    peer = _address(request.remote_ip or "") if trusted else None
    if peer is None or not _trusted(peer, trusted):
        return Client(request.remote_ip or "-", request.protocol, request.host)
    hops = ",".join(request.headers.get_list("X-Forwarded-For")).split(",")
    return Client(
        str(forwarded_client(hops, peer, trusted)),
        _last_value(request.headers.get("X-Forwarded-Proto"), PROTOCOL) or request.protocol,
        _last_value(request.headers.get("X-Forwarded-Host"), HOST) or request.host,
    )


def forwarded_client(hops: Sequence[str], peer: Address, trusted: Sequence[Network]) -> Address:
    """The right-most hop of X-Forwarded-For that is not a trusted proxy (each proxy appends the
    address it got the request from, so hops left of an untrusted one may be forged). A hop that is
    not an address ends the walk at the last trusted one."""
    client = peer
    for hop in reversed(hops):
        address = _address(hop.strip())
        if address is None:
            break
        client = address
        if not _trusted(address, trusted):
            break
    return client


def _address(text: str) -> Address | None:
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    mapped = address.ipv4_mapped if isinstance(address, ipaddress.IPv6Address) else None
    return mapped or address  # a dual-stack socket shows IPv4 peers as ::ffff:a.b.c.d


def _trusted(address: Address, trusted: Sequence[Network]) -> bool:
    return any(address in network for network in trusted)


def _last_value(header: str | None, form: re.Pattern[str]) -> str | None:
    """The last comma-separated value of a header (the one the nearest proxy set) if it has `form`."""
    value = (header or "").split(",")[-1].strip()
    return value if form.fullmatch(value) else None
