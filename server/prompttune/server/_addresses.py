"""Which network addresses a caller-supplied endpoint URL may reach.

A caller URL is only ever called after its host has been resolved and every address it
resolves to has passed `AddressGuard.check` (when the job is created and started), and every
connection to it goes to an address `AddressGuard.connect_addresses` resolved and checked at
that moment (no DNS rebinding in between): inside the operator's allowed networks, outside
the networks no caller may reach (link-local, cloud metadata, unspecified, multicast), and not
one of the service's own sockets (its database, its gRPC and metrics ports). Every refusal
raises the same `InvalidArgument`, so the guard cannot be used to probe which hosts exist or
which ports are open.
"""

from __future__ import annotations

import functools
import ipaddress
import socket
import threading
import urllib.parse
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from prompttune.search import InvalidArgument

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# Never reachable from a caller URL, whatever the allow-list says.
DENIED_NETWORKS: tuple[IPNetwork, ...] = tuple(
    ipaddress.ip_network(net)
    for net in (
        "0.0.0.0/8",  # "this host": connects to the server itself
        "169.254.0.0/16",  # link-local, incl. 169.254.169.254 (AWS, GCP, Azure, OCI metadata)
        "100.100.100.200/32",  # Alibaba Cloud metadata
        "192.0.0.192/32",  # Oracle Cloud legacy metadata
        "224.0.0.0/4",  # multicast
        "255.255.255.255/32",
        "::/128",
        "fe80::/10",  # IPv6 link-local
        "fd00:ec2::254/128",  # AWS metadata over IPv6
        "ff00::/8",  # multicast
    )
)
METADATA_HOST_NAMES = frozenset({"metadata", "metadata.google.internal", "instance-data"})
LOOPBACK_NETWORKS: tuple[IPNetwork, ...] = (
    ipaddress.ip_network("127.0.0.0/8"),
    ipaddress.ip_network("::1/128"),
)
REFUSED = "is not an address this server may call"


class HostResolver(Protocol):
    """Resolves a host name (or literal address) to the addresses a connection may use."""

    def addresses(self, host: str, port: int) -> tuple[IPAddress, ...]: ...


class SystemResolver:
    """`HostResolver` over `socket.getaddrinfo`; an unresolvable host has no addresses."""

    def addresses(self, host: str, port: int) -> tuple[IPAddress, ...]:
        try:
            infos = socket.getaddrinfo(host, port, proto=socket.IPPROTO_TCP)
        except (OSError, UnicodeError):
            return ()
        return tuple(_address(str(info[4][0])) for info in infos)


def _address(text: str) -> IPAddress:
    address = ipaddress.ip_address(text.partition("%")[0])
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


@dataclass(frozen=True)
class ProtectedSocket:
    """A host and port of the service itself that no caller URL may reach."""

    host: str
    port: int


@dataclass(frozen=True)
class CallerUrl:
    """A caller-supplied base URL split into what the guard checks."""

    host: str
    port: int

    @classmethod
    def parse(cls, url: str, field: str) -> CallerUrl:
        """Raises InvalidArgument(field) unless `url` is a plain http(s) URL with a host."""
        try:
            parsed = urllib.parse.urlsplit(url)
            port = parsed.port
        except ValueError as error:
            raise InvalidArgument(field, "must be an http(s) URL") from error
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise InvalidArgument(field, "must be an http(s) URL")
        if parsed.username is not None or parsed.password is not None:
            raise InvalidArgument(field, "must not carry credentials")
        default_port = 443 if parsed.scheme == "https" else 80
        return cls(parsed.hostname.rstrip(".").lower(), port or default_port)


class AddressGuard:
    """Checks caller URLs against the operator's allowed networks and the service's own
    sockets. `protect` adds a socket once it is known (the gRPC port after binding).
    Thread-safe."""

    def __init__(
        self,
        allowed_networks: Iterable[IPNetwork],
        resolver: HostResolver | None = None,
        protected: Iterable[ProtectedSocket] = (),
    ) -> None:
        self._allowed = tuple(allowed_networks)
        self._resolver = resolver or SystemResolver()
        self._lock = threading.Lock()
        self._protected: set[tuple[IPAddress, int]] = set()
        self._protected_ports: set[int] = set()
        for item in protected:
            self.protect(item)

    def protect(self, item: ProtectedSocket) -> None:
        """Refuse `item.port` on the addresses of `item.host`, and on every loopback and
        local address when the host is local (a service listening on all interfaces)."""
        addresses = self._resolver.addresses(item.host, item.port) if item.host else ()
        local = not addresses or any(_is_local(address) for address in addresses)
        with self._lock:
            self._protected.update((address, item.port) for address in addresses)
            if local:
                self._protected_ports.add(item.port)

    def check(self, url: str, field: str) -> None:
        """Raises InvalidArgument(field, REFUSED) unless every address of the URL's host may
        be called. The same message for every refusal, unresolvable hosts included."""
        target = CallerUrl.parse(url, field)
        if target.host in METADATA_HOST_NAMES:
            raise InvalidArgument(field, REFUSED)
        addresses = self._resolver.addresses(target.host, target.port)
        if not addresses or not all(self._may_call(a, target.port) for a in addresses):
            raise InvalidArgument(field, REFUSED)

    def connect_addresses(self, host: str, port: int) -> tuple[str, ...]:
        """The addresses a connection to `host`:`port` may use, resolved now and each
        checked as `check` does; raises OSError(REFUSED) when any may not be called. The
        HTTP client of a caller URL connects through this (`ModelEndpoint.connect_addresses`),
        so a name that resolved to an allowed address when the job was checked cannot be
        rebound to a forbidden one for the calls."""
        name = host.strip("[]").rstrip(".").lower()
        addresses = () if name in METADATA_HOST_NAMES else self._resolver.addresses(name, port)
        if not addresses or not all(self._may_call(a, port) for a in addresses):
            raise OSError(f"{name} {REFUSED}")
        return tuple(str(address) for address in addresses)

    def _may_call(self, address: IPAddress, port: int) -> bool:
        if any(form in network for form in _forms(address) for network in DENIED_NETWORKS):
            return False
        if not any(address in network for network in self._allowed):
            return False
        with self._lock:
            if (address, port) in self._protected:
                return False
            return not (port in self._protected_ports and _is_local(address))


_NAT64 = ipaddress.ip_network("64:ff9b::/96")


def _forms(address: IPAddress) -> tuple[IPAddress, ...]:
    """The address and any IPv4 address it carries (6to4, NAT64, Teredo), each of which
    routes to the IPv4 host."""
    if isinstance(address, ipaddress.IPv4Address):
        return (address,)
    carried: list[IPAddress] = [address]
    if address.sixtofour is not None:
        carried.append(address.sixtofour)
    if address.teredo is not None:
        carried.append(address.teredo[1])
    if address in _NAT64:
        carried.append(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
    return tuple(carried)


def _is_local(address: IPAddress) -> bool:
    """Loopback, unspecified, or one of this machine's own addresses."""
    if address.is_loopback or address.is_unspecified:
        return True
    return address in _own_addresses()


@functools.cache
def _own_addresses() -> frozenset[IPAddress]:
    try:
        infos = socket.getaddrinfo(socket.gethostname(), None)
    except OSError:
        return frozenset()
    return frozenset(_address(str(info[4][0])) for info in infos)


_DEFAULT_DB_PORTS = {"postgresql": 5432, "mysql": 3306, "mariadb": 3306, "mssql": 1433}


def database_socket(db_url: str) -> ProtectedSocket | None:
    """The host and port of the service database, None for a file database (SQLite)."""
    from sqlalchemy.engine import make_url

    url = make_url(db_url)
    if not url.host:
        return None
    backend = url.get_backend_name()
    port = url.port or _DEFAULT_DB_PORTS.get(backend)
    return ProtectedSocket(url.host, port) if port else None
