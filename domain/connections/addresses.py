"""Where a connection may send requests: the guard against server-side
request forgery. Workers and the API call external endpoints with a user's
URL, so a URL must never reach what only the server can reach.

- Link-local addresses (169.254.0.0/16, fe80::/10), cloud metadata services
  (169.254.169.254, fd00:ec2::254, 100.100.100.200, metadata.google.internal,
  ...), unspecified, multicast and broadcast addresses are always refused.
- Other addresses that are not globally routable (loopback, private ranges,
  CGNAT, ...) are allowed when TUNEHOUSE_CONNECTION_ALLOW_PRIVATE is true (the
  embedded default: a local Ollama or vLLM), else only for hosts, addresses or
  ranges listed in TUNEHOUSE_CONNECTION_ALLOWED_HOSTS.
- A host name is resolved and every address it resolves to is checked (one
  refused address refuses the host); the caller then connects to the checked
  address itself (`pin`), so DNS cannot answer differently between the check
  and the connection (rebinding). IPv4 addresses inside IPv6 ones
  (::ffff:a.b.c.d, 6to4, NAT64, Teredo) are checked as IPv4 too.

Checked at registration and again before every request and every redirect
hop (domain/connections/client.py). No HTTP here, only addresses."""

import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

from domain.settings import Settings

Address = ipaddress.IPv4Address | ipaddress.IPv6Address

_ALWAYS_REFUSED_NETWORKS = [
    ipaddress.ip_network(network)
    for network in (
        "169.254.0.0/16",  # link-local, where AWS, GCP, Azure, OCI, DigitalOcean ... serve metadata
        "fe80::/10",  # IPv6 link-local
        "fd00:ec2::254/128",  # AWS metadata over IPv6
        "100.100.100.200/32",  # Alibaba Cloud metadata
        "192.0.0.192/32",  # Oracle Cloud metadata (classic)
        "0.0.0.0/8",  # "this host": connecting to 0.0.0.0 reaches the machine itself
        "::/128",
        "224.0.0.0/4",  # multicast
        "ff00::/8",
        "255.255.255.255/32",
    )
]
_ALWAYS_REFUSED_NAMES = {
    "metadata", "metadata.google.internal", "metadata.goog", "metadata.azure.internal", "instance-data",
    "instance-data.ec2.internal", "metadata.tencentyun.com", "metadata.platformequinix.com",
}
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


class RefusedAddress(Exception):
    """The URL's host is, or resolves to, an address connections may not reach."""


@dataclass(frozen=True)
class PinnedTarget:
    """Where to send one request: the URL with its host replaced by the
    checked address, and what the server must still see (Host, TLS name)."""

    url: str
    host: str  # the host name as given (Host header, TLS SNI and certificate check)
    host_header: str


def check_url_shape(url: str) -> str:
    """The base URL as it is stored: http(s), a host, no credentials, no
    query or fragment, no trailing slash. ValueError says what is wrong."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https"):
        raise ValueError("base_url must start with http:// or https://")
    if not parts.hostname:
        raise ValueError("base_url has no host")
    if parts.username is not None or parts.password is not None:
        raise ValueError("base_url must not hold credentials; give the key as api_key")
    if parts.query or parts.fragment:
        raise ValueError("base_url must not have a query or a fragment")
    try:
        parts.port  # noqa: B018 (raises on a port out of range)
    except ValueError:
        raise ValueError("base_url has an invalid port") from None
    return f"{parts.scheme}://{parts.netloc}{parts.path.rstrip('/')}"


def _embedded_ipv4(address: Address) -> ipaddress.IPv4Address | None:
    if isinstance(address, ipaddress.IPv4Address):
        return None
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def _allow_listed(host: str, address: Address, settings: Settings) -> bool:
    for entry in settings.connection_allowed_hosts:
        entry = entry.strip().lower()
        if entry == host:
            return True
        try:
            if address in ipaddress.ip_network(entry, strict=False):
                return True
        except ValueError:  # a host name, not this one
            continue
    return False


def check_address(host: str, address: Address, settings: Settings) -> None:
    """RefusedAddress unless a connection may reach `address` (of `host`)."""
    addresses = [address] + ([inner] if (inner := _embedded_ipv4(address)) is not None else [])
    for candidate in addresses:
        if any(candidate in network for network in _ALWAYS_REFUSED_NETWORKS if candidate.version == network.version):
            raise RefusedAddress(
                f"'{host}' is or resolves to {address}, a link-local or cloud metadata address; "
                "connections never reach those."
            )
    if settings.connection_allow_private or all(candidate.is_global for candidate in addresses):
        return
    if not _allow_listed(host, address, settings):
        raise RefusedAddress(
            f"'{host}' is or resolves to {address}, a loopback or private address; this deployment "
            "allows those only for hosts listed in TUNEHOUSE_CONNECTION_ALLOWED_HOSTS."
        )


def resolve(host: str, port: int, settings: Settings) -> Address:
    """The address to connect to: every address `host` resolves to is
    checked, then the first is used."""
    name = host.strip("[]").lower().rstrip(".")
    if name in _ALWAYS_REFUSED_NAMES:
        raise RefusedAddress(f"'{host}' is a cloud metadata service; connections never reach those.")
    try:
        addresses = [ipaddress.ip_address(name)]
    except ValueError:
        try:
            infos = socket.getaddrinfo(name, port, type=socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError) as exc:
            raise OSError(f"cannot resolve '{host}': {exc}") from None
        # Scope ids ("fe80::1%eth0") dropped: the address alone decides.
        addresses = list(dict.fromkeys(ipaddress.ip_address(info[4][0].split("%")[0]) for info in infos))
    if not addresses:
        raise OSError(f"cannot resolve '{host}'")
    for address in addresses:
        check_address(name, address, settings)
    return addresses[0]


def check_url(url: str, settings: Settings) -> None:
    """Registration: the URL's host must resolve, and only to addresses
    connections may reach (RefusedAddress; OSError when it does not resolve)."""
    parts = urlsplit(url)
    resolve(parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80), settings)


def pin(url: str, settings: Settings) -> PinnedTarget:
    """`url` with its host replaced by the checked address it resolves to."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise RefusedAddress(f"not an http(s) URL: '{url[:200]}'")
    default_port = 443 if parts.scheme == "https" else 80
    port = parts.port or default_port
    address = resolve(parts.hostname, port, settings)
    literal = f"[{address}]" if address.version == 6 else str(address)
    netloc = literal if port == default_port else f"{literal}:{port}"
    pinned = parts._replace(netloc=netloc).geturl()
    host_header = parts.hostname if port == default_port else f"{parts.hostname}:{port}"
    if ":" in parts.hostname:  # an IPv6 literal keeps its brackets in Host
        host_header = f"[{parts.hostname}]" + ("" if port == default_port else f":{port}")
    return PinnedTarget(url=pinned, host=parts.hostname, host_header=host_header)
