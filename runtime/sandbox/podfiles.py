"""A pod's files: hostname, /etc/hosts, /etc/resolv.conf (content is pure; writing is not).

Containers get them as bind mounts (``runtime.container.spec``), as containerd does: one
copy per pod under ``<root>/sandboxes/<id>/``, so kubelet's view and every container's view
agree.
"""

from __future__ import annotations

import os
from pathlib import Path

from runtime.model.network import DnsConfig

HOSTS_HEADER = (
    "127.0.0.1\tlocalhost\n"
    "::1\tlocalhost ip6-localhost ip6-loopback\n"
    "fe00::0\tip6-localnet\n"
    "ff00::0\tip6-mcastprefix\n"
    "ff02::1\tip6-allnodes\n"
    "ff02::2\tip6-allrouters\n"
)

HOST_RESOLV_CONF = Path("/etc/resolv.conf")
HOST_HOSTS = Path("/etc/hosts")


def hosts_content(ip: str = "", hostname: str = "") -> str:
    """The pod's /etc/hosts: the standard localhost lines, plus ``ip hostname`` when known."""
    text = HOSTS_HEADER
    if ip and hostname:
        text += f"{ip}\t{hostname}\n"
    return text


def resolv_conf_content(dns: DnsConfig) -> str:
    """resolv.conf(5) from a CRI DNSConfig (kubelet already applied its own policy)."""
    lines: list[str] = []
    if dns.searches:
        lines.append("search " + " ".join(dns.searches))
    lines.extend(f"nameserver {s}" for s in dns.servers)
    if dns.options:
        lines.append("options " + " ".join(dns.options))
    return "".join(line + "\n" for line in lines)


def dns_given(dns: DnsConfig | None) -> bool:
    """CRI: an empty DNSConfig means "use the host's resolv.conf" (containerd does the same)."""
    return dns is not None and bool(dns.servers or dns.searches or dns.options)


def _replace(path: Path, data: bytes, owner: tuple[int, int] | None = None) -> None:
    """temp file + rename (readers see old or new, never half); no fsync: the files are
    rewritten from the record whenever needed and a power loss ends the pod anyway."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    tmp.chmod(0o644)
    if owner is not None:
        os.chown(tmp, *owner)
    os.rename(tmp, path)


def write_pod_files(
    directory: Path, hostname: str, dns: DnsConfig | None, host_network: bool, ip: str = "",
    owner: tuple[int, int] | None = None,
) -> None:
    """Write hostname, hosts and resolv.conf into ``directory`` (blocking; idempotent). With
    ``owner`` (host uid, gid of the root of the pod's user namespace) the files are its, so
    they are root's inside the pod rather than the unmapped "nobody"."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o711)
    _replace(directory / "hostname", f"{hostname}\n".encode(), owner)
    hosts = _read_or(HOST_HOSTS, hosts_content()) if host_network else hosts_content(ip, hostname)
    _replace(directory / "hosts", hosts.encode(), owner)
    resolv = resolv_conf_content(dns) if dns is not None and dns_given(dns) else _read_or(HOST_RESOLV_CONF, "")
    _replace(directory / "resolv.conf", resolv.encode(), owner)


def _read_or(path: Path, default: str) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return default


def node_hostname() -> str:
    return os.uname().nodename
