"""containers-registries.conf(5): where a reference is pulled from.

Reads the v2 format (``[[registry]]`` with ``prefix``, ``location``, ``insecure``,
``blocked``, ``mirror-by-digest-only`` and ``[[registry.mirror]]`` with ``location``,
``insecure``, ``pull-from-mirror``) plus drop-ins in ``<file>.d/*.conf`` (later files
override entries with the same prefix), as CRI-O, podman and skopeo read it. The v1 tables
``[registries.insecure]`` / ``[registries.block]`` are honoured too. Short names are not
searched: they always mean docker.io (CRI and kubelet expect fully normalised names).

Matching (containers/image sysregistriesv2): the longest ``prefix`` that matches the
reference's name at a component boundary (``/``, or the end) wins; ``*.example.com``
matches any sub-domain. The matched prefix is replaced by ``location``. Mirrors are tried in
order before the (rewritten) primary location.
"""

from __future__ import annotations

import logging
import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runtime.errors import InvalidArgument
from runtime.image.reference import Reference

log = logging.getLogger(__name__)

PULL_FROM_MIRROR = ("all", "digest-only", "tag-only")


@dataclass(frozen=True, slots=True)
class Mirror:
    location: str
    insecure: bool = False
    pull_from_mirror: str = "all"


@dataclass(frozen=True, slots=True)
class RegistryEntry:
    prefix: str
    location: str
    insecure: bool = False
    blocked: bool = False
    mirror_by_digest_only: bool = False
    mirrors: tuple[Mirror, ...] = ()


@dataclass(frozen=True, slots=True)
class PullSource:
    """One place to try: ``host`` (registry host[:port]) and ``repository`` path there."""

    host: str
    repository: str
    insecure: bool
    mirror: bool

    def describe(self) -> str:
        return f"{self.host}/{self.repository}" + (" (mirror)" if self.mirror else "")


@dataclass(frozen=True, slots=True)
class RegistriesConfig:
    entries: tuple[RegistryEntry, ...] = ()
    insecure_hosts: frozenset[str] = frozenset()
    blocked_hosts: frozenset[str] = frozenset()

    def match(self, name: str) -> RegistryEntry | None:
        """The entry with the longest prefix matching ``name`` (``domain/path``), if any."""
        best: RegistryEntry | None = None
        best_len = -1
        for entry in self.entries:
            n = _match_length(entry.prefix, name)
            if n > best_len:
                best, best_len = entry, n
        return best

    def is_blocked(self, ref: Reference) -> bool:
        entry = self.match(ref.name)
        return (entry is not None and entry.blocked) or ref.domain in self.blocked_hosts

    def sources(self, ref: Reference) -> list[PullSource]:
        """Where to pull ``ref`` from, in order: eligible mirrors, then the primary location."""
        entry = self.match(ref.name)
        if entry is None:
            return [PullSource(ref.domain, ref.path, ref.domain in self.insecure_hosts, False)]
        rest = _rest_after_prefix(entry.prefix, ref.name)
        out: list[PullSource] = []
        by_digest = bool(ref.digest)
        for m in entry.mirrors:
            if entry.mirror_by_digest_only and not by_digest:
                continue
            if m.pull_from_mirror == "digest-only" and not by_digest:
                continue
            if m.pull_from_mirror == "tag-only" and by_digest:
                continue
            host, repo = _split_location(m.location + rest, entry.prefix)
            out.append(PullSource(host, repo, m.insecure or host in self.insecure_hosts, True))
        location = entry.location or entry.prefix
        if location.startswith("*."):
            host, repo = ref.domain, ref.path
        else:
            host, repo = _split_location(location + rest, entry.prefix)
        out.append(PullSource(host, repo, entry.insecure or host in self.insecure_hosts, False))
        return out


def _match_length(prefix: str, name: str) -> int:
    if prefix.startswith("*."):
        host = name.split("/", 1)[0]
        return len(prefix) if host.endswith(prefix[1:]) else -1
    if name == prefix or name.startswith(prefix + "/"):
        return len(prefix)
    return -1


def _rest_after_prefix(prefix: str, name: str) -> str:
    if prefix.startswith("*."):
        return name[len(name.split("/", 1)[0]) :]
    return name[len(prefix) :]


def _split_location(location: str, prefix: str) -> tuple[str, str]:
    host, sep, repo = location.partition("/")
    if not sep or not repo:
        raise InvalidArgument(
            f"registries.conf: location {location!r} (for prefix {prefix!r}) names no repository"
        )
    # containers/image: a location of docker.io implies the library/ namespace for one-part names.
    if host in ("docker.io", "index.docker.io") and "/" not in repo:
        repo = "library/" + repo
    return host, repo


def _entry_from_table(t: dict[str, Any], source: Path) -> RegistryEntry:
    def fail(msg: str) -> InvalidArgument:
        return InvalidArgument(f"{source}: [[registry]] {msg}")

    location = str(t.get("location", "")).rstrip("/")
    prefix = str(t.get("prefix", "") or location).rstrip("/")
    if not prefix:
        raise fail("needs a prefix or a location")
    if prefix.startswith("*.") and location and "/" in location:
        raise fail(f"wildcard prefix {prefix!r} cannot have a location with a path")
    mirrors = []
    for m in t.get("mirror", []) or []:
        if not isinstance(m, dict) or not m.get("location"):
            raise fail(f"(prefix {prefix!r}): every [[registry.mirror]] needs a location")
        pfm = str(m.get("pull-from-mirror", "all") or "all")
        if pfm not in PULL_FROM_MIRROR:
            raise fail(f"(prefix {prefix!r}): pull-from-mirror {pfm!r} is not one of {PULL_FROM_MIRROR}")
        mirrors.append(Mirror(str(m["location"]).rstrip("/"), bool(m.get("insecure", False)), pfm))
    return RegistryEntry(
        prefix=prefix,
        location=location,
        insecure=bool(t.get("insecure", False)),
        blocked=bool(t.get("blocked", False)),
        mirror_by_digest_only=bool(t.get("mirror-by-digest-only", False)),
        mirrors=tuple(mirrors),
    )


def _load_file(path: Path, entries: dict[str, RegistryEntry], insecure: set[str], blocked: set[str]) -> None:
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except tomllib.TOMLDecodeError as exc:
        raise InvalidArgument(f"registries config {path}: {exc}") from None
    for t in data.get("registry", []) or []:
        if not isinstance(t, dict):
            raise InvalidArgument(f"{path}: [[registry]] must be a table")
        entry = _entry_from_table(t, path)
        entries[entry.prefix] = entry
    v1 = data.get("registries", {})
    if isinstance(v1, dict):
        insecure.update(map(str, (v1.get("insecure", {}) or {}).get("registries", [])))
        blocked.update(map(str, (v1.get("block", {}) or {}).get("registries", [])))


def load(path: Path) -> RegistriesConfig:
    """Read ``path`` and ``<path>.d/*.conf``; a missing file means no rewrites.

    Raises InvalidArgument naming the file and entry when the config is malformed.
    """
    entries: dict[str, RegistryEntry] = {}
    insecure: set[str] = set()
    blocked: set[str] = set()
    files = [path] if path.is_file() else []
    dropin = path.parent / (path.name + ".d")
    if dropin.is_dir():
        files += sorted(p for p in dropin.iterdir() if p.suffix == ".conf" and p.is_file())
    for f in files:
        _load_file(f, entries, insecure, blocked)
    return RegistriesConfig(tuple(entries.values()), frozenset(insecure), frozenset(blocked))


class RegistriesConfigCache:
    """Re-reads the config when a file's mtime/size changes (CRI-O reloads on SIGHUP; we on use)."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._stamp: tuple[tuple[str, int, int], ...] | None = None
        self._config = RegistriesConfig()

    @property
    def path(self) -> Path:
        return self._path

    def _current_stamp(self) -> tuple[tuple[str, int, int], ...]:
        out = []
        candidates = [self._path]
        dropin = self._path.parent / (self._path.name + ".d")
        if dropin.is_dir():
            candidates += sorted(dropin.iterdir())
        for p in candidates:
            try:
                st = os.stat(p)
            except OSError:
                continue
            out.append((str(p), st.st_mtime_ns, st.st_size))
        return tuple(out)

    def get(self) -> RegistriesConfig:
        """The current config (blocking file reads: call from a thread or at low rate)."""
        stamp = self._current_stamp()
        if stamp != self._stamp:
            self._config = load(self._path)
            self._stamp = stamp
            log.info("registries config %s loaded: %d entries", self._path, len(self._config.entries))
        return self._config
