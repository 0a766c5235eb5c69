"""The user a container runs as, resolved from the image's /etc/passwd and /etc/group.

The files are read from the container's layers (upper first, then the image's layers top
first, honouring overlay whiteouts) without mounting anything. Rules, as containerd applies
them for CRI:

- ``run_as_user`` (a uid) wins; else ``run_as_username``; else the image's ``User``
  ("", "uid", "name", "uid:gid", "name:group").
- The gid is ``run_as_group`` if set, else the one after ':' in the image's User, else the
  user's primary group from /etc/passwd, else 0.
- Supplementary groups: the primary gid first (containerd since CVE-2023-25173: a process must
  not keep group access it was not given, nor lack its own group), then with policy MERGE
  every /etc/group entry that lists the user, then the requested ``supplemental_groups``;
  with STRICT no /etc/group entries.
A name that the image does not know is refused (InvalidArgument); a numeric id needs no entry.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass

from runtime.errors import InvalidArgument
from runtime.model.container import ContainerSecurity, ContainerUser
from runtime.model.sandbox import SupplementalGroupsPolicy

MAX_FILE = 4 << 20


@dataclass(frozen=True, slots=True)
class PasswdEntry:
    name: str
    uid: int
    gid: int
    home: str = ""


@dataclass(frozen=True, slots=True)
class GroupEntry:
    name: str
    gid: int
    members: tuple[str, ...] = ()


def read_layered_file(layers: tuple[str, ...], rel: str) -> str | None:
    """``rel`` (e.g. "etc/passwd") as the overlay of ``layers`` (top first) would show it;
    None when absent, deleted by a whiteout, or not a regular file."""
    parts = rel.strip("/").split("/")
    for layer in layers:
        # an opaque parent directory hides everything below this layer
        path = os.path.join(layer, *parts)
        try:
            st = os.lstat(path)
        except (FileNotFoundError, NotADirectoryError):
            if _opaque(layer, parts[:-1]):
                return None
            continue
        if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
            return None  # overlay whiteout
        if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_FILE:
            return None
        with open(path, "rb") as f:
            return f.read(MAX_FILE).decode(errors="replace")
    return None


def _opaque(layer: str, dirs: list[str]) -> bool:
    for i in range(1, len(dirs) + 1):
        d = os.path.join(layer, *dirs[:i])
        try:
            if os.getxattr(d, "trusted.overlay.opaque") == b"y":
                return True
        except OSError:
            continue
    return False


def parse_passwd(text: str | None) -> list[PasswdEntry]:
    out = []
    for line in (text or "").splitlines():
        f = line.split(":")
        if len(f) < 4 or line.startswith("#"):
            continue
        try:
            out.append(PasswdEntry(f[0], int(f[2]), int(f[3]), f[5] if len(f) > 5 else ""))
        except ValueError:
            continue
    return out


def parse_group(text: str | None) -> list[GroupEntry]:
    out = []
    for line in (text or "").splitlines():
        f = line.split(":")
        if len(f) < 3 or line.startswith("#"):
            continue
        try:
            members = tuple(m for m in (f[3].split(",") if len(f) > 3 else []) if m)
            out.append(GroupEntry(f[0], int(f[2]), members))
        except ValueError:
            continue
    return out


def resolve_user(
    security: ContainerSecurity,
    image_user: str,
    passwd: list[PasswdEntry],
    groups: list[GroupEntry],
) -> ContainerUser:
    """The uid, gid and supplementary groups of the container process (rules above)."""
    group_part = ""
    entry: PasswdEntry | None = None
    if security.run_as_user is not None:
        uid = security.run_as_user
        entry = next((p for p in passwd if p.uid == uid), None)
    elif security.run_as_username:
        entry = _by_name(passwd, security.run_as_username)
        uid = entry.uid
    else:
        user_part, _, group_part = image_user.partition(":")
        if not user_part:
            uid = 0
            entry = next((p for p in passwd if p.uid == 0), None)
        elif user_part.isdigit():
            uid = int(user_part)
            entry = next((p for p in passwd if p.uid == uid), None)
        else:
            entry = _by_name(passwd, user_part)
            uid = entry.uid
    if uid < 0 or uid > 0xFFFFFFFE:
        raise InvalidArgument(f"uid {uid} is out of range")
    if security.run_as_group is not None:
        gid = security.run_as_group
    elif group_part:
        if group_part.isdigit():
            gid = int(group_part)
        else:
            named = next((g for g in groups if g.name == group_part), None)
            if named is None:
                raise InvalidArgument(f"group {group_part!r} of the image's user is not in its /etc/group")
            gid = named.gid
    else:
        gid = entry.gid if entry is not None else 0
    extra: list[int] = [gid]
    if security.supplemental_groups_policy is SupplementalGroupsPolicy.MERGE and entry is not None:
        extra.extend(g.gid for g in groups if entry.name in g.members)
    extra.extend(security.supplemental_groups)
    seen: list[int] = []
    for gid_extra in extra:
        if gid_extra not in seen:
            seen.append(gid_extra)
    return ContainerUser(uid=uid, gid=gid, supplemental_groups=tuple(seen))


def _by_name(passwd: list[PasswdEntry], name: str) -> PasswdEntry:
    entry = next((p for p in passwd if p.name == name), None)
    if entry is None:
        raise InvalidArgument(f"user {name!r} is not in the image's /etc/passwd")
    return entry


def user_from_layers(layers: tuple[str, ...], security: ContainerSecurity, image_user: str) -> ContainerUser:
    """Blocking: read the image's passwd/group from ``layers`` (top first) and resolve."""
    passwd = parse_passwd(read_layered_file(layers, "etc/passwd"))
    groups = parse_group(read_layered_file(layers, "etc/group"))
    return resolve_user(security, image_user, passwd, groups)
