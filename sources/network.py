"""Network confinement: a source connects only to the hosts the operator allows.

The operator lists them per source in config.yml (``allowed_hosts`` of a ``sources:``
entry, see :class:`sources.base.OperatorSettings`); a source lists the hosts its
configuration names in ``network_endpoints()``. :func:`check_endpoints` compares the two,
connecting to nothing: it runs when the source is built (:func:`sources.driver.build_source`),
before ``validate_config``, ``ping`` or ``get_docs``, so a refused host fails the
connector's check or the job with the reason, and no connection is ever opened.

An entry of ``allowed_hosts`` is one of:

* a host name, ``db.example.com`` (matches that name, any case, with or without a final dot);
* a pattern ``*.example.com`` (any name ending in ``.example.com``);
* an IP address, ``10.1.2.3`` or ``::1``, or a network, ``10.0.0.0/8``.

A name that matches no name or pattern is resolved here (DNS, no connection) and allowed
when every address it resolves to lies in an allowed network; an IP address is allowed
when it lies in one. ``None`` (no ``allowed_hosts``) allows any host.

Example usage::

    check_endpoints([Endpoint("db.internal", 5432)], ("10.0.0.0/8",), source_name="PostgreSQL")
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from sources.errors import SourceConfigError

__all__ = ["check_endpoints", "validate_allowed_hosts", "endpoint_of_url", "NetworkPolicy"]

_NAME = re.compile(r"^(?=.{1,253}$)[a-z0-9_]([a-z0-9_-]{0,62})(\.[a-z0-9_]([a-z0-9_-]{0,62}))*$")
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def _name(host: str) -> str:
    return host.strip().lower().rstrip(".")


@dataclass(frozen=True)
class NetworkPolicy:
    """``allowed_hosts`` parsed: names, ``*.suffix`` patterns and networks."""

    names: frozenset[str]
    suffixes: tuple[str, ...]
    networks: tuple[IPNetwork, ...]

    @classmethod
    def parse(cls, entries: Iterable[str]) -> "NetworkPolicy":
        """The policy for these entries; ValueError naming each entry that is none of the forms."""
        names, suffixes, networks, bad = set(), [], [], []
        for entry in entries:
            text = _name(str(entry))
            try:
                networks.append(ipaddress.ip_network(text, strict=False))
                continue
            except ValueError:
                pass
            if text.startswith("*.") and _NAME.match(text[2:]):
                suffixes.append(text[1:])  # ".example.com"
            elif _NAME.match(text):
                names.add(text)
            else:
                bad.append(entry)
        if bad:
            raise ValueError(f"expected host names, *.domain patterns, IP addresses or CIDR networks "
                             f"(no scheme or port), got {', '.join(repr(b) for b in bad)}")
        return cls(frozenset(names), tuple(suffixes), tuple(networks))

    def _in_networks(self, address: str) -> bool:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
        return any(ip in network for network in self.networks)

    def refusal(self, host: str, port: int | None) -> str | None:
        """Why ``host`` is refused (None: allowed)."""
        bare = _name(host).strip("[]")
        try:
            ipaddress.ip_address(bare.split("%", 1)[0])
            return None if self._in_networks(bare) else "not in the allowed networks"
        except ValueError:
            pass
        if bare in self.names or any(bare.endswith(suffix) for suffix in self.suffixes):
            return None
        if not self.networks:
            return "not an allowed host"
        try:
            infos = socket.getaddrinfo(bare, port or 0, proto=socket.IPPROTO_TCP)
        except OSError as exc:
            return f"it does not resolve ({exc.strerror or exc}), so it cannot be checked against the allowed networks"
        addresses = sorted({info[4][0] for info in infos})
        outside = [a for a in addresses if not self._in_networks(a)]
        if not addresses or outside:
            return f"it resolves to {', '.join(outside or addresses)}, outside the allowed networks"
        return None


def validate_allowed_hosts(entries: Sequence[str]) -> None:
    """Raise ValueError when an ``allowed_hosts`` entry is none of the accepted forms."""
    NetworkPolicy.parse(entries)


def check_endpoints(endpoints: Iterable[tuple[str, int | None]], allowed_hosts: Sequence[str] | None, *,
                    source_name: str) -> None:
    """Raise SourceConfigError for the first endpoint the operator's ``allowed_hosts`` refuses.

    ``allowed_hosts`` None allows everything (and nothing is resolved).
    """
    if allowed_hosts is None:
        return
    policy = NetworkPolicy.parse(allowed_hosts)
    for host, port in endpoints:
        reason = policy.refusal(host, port)
        if reason is not None:
            raise SourceConfigError(
                f"{source_name}: host {host!r} is refused ({reason}): the operator allows this source only the "
                "hosts in config.yml `allowed_hosts` of its sources: entry; nothing was contacted")


def endpoint_of_url(url: str, *, default_port: int | None = None) -> tuple[str, int | None]:
    """``(host, port)`` of an ``http(s)://host:port/...`` URL (or a bare ``host:port``)."""
    parts = urlsplit(url if "://" in url else f"//{url}")
    try:
        port = parts.port
    except ValueError:
        port = None
    if not parts.hostname:
        raise SourceConfigError(f"{url!r} names no host")
    return parts.hostname, port or ({"https": 443, "http": 80}.get(parts.scheme) or default_port)
