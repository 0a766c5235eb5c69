"""The uid, gid and supplemental groups a container runs with, from CRI and the image.

Rules, as containerd's CRI plugin applies them (``generateUserString``, ``oci.WithUser``,
``WithAdditionalGIDs``, ``WithSupplementalGroups``):

1. The user string is ``run_as_username`` or else ``run_as_user``, plus ``:run_as_group``
   when given; without either, the image config's ``User`` ("", "1000", "app", "app:staff",
   "1000:50"). ``run_as_group`` without a user is refused.
2. A user name must exist in the image's /etc/passwd (InvalidArgument otherwise, so
   CreateContainer fails with a clear message); a numeric uid need not: its primary gid is
   the passwd entry's when there is one, else 0. A group name must exist in /etc/group; a
   numeric gid need not.
3. Supplemental groups, with SupplementalGroupsPolicy Merge (the default): the primary gid,
   then every /etc/group entry listing the user's name as a member, then the requested
   ``supplemental_groups``. With Strict: the primary gid and the requested groups only.
   Duplicates are dropped, order kept.
4. HOME is the passwd entry's home directory, "/" when there is none (runc's rule).

The result is what ContainerStatus reports as ``user`` (CRI ContainerUser).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from runtime.errors import InvalidArgument
from runtime.model.container import ContainerSecurity, ContainerUser
from runtime.model.sandbox import SupplementalGroupsPolicy

MAX_ID = 0xFFFFFFFE  # kernel: (uid_t)-1 means "unchanged", not an id

#: Reads a file of the image's root filesystem: ``read("/etc/passwd") -> bytes | None``
#: (e.g. ``LayeredRootfs(layers).read_file``).
FileReader = Callable[[str], bytes | None]


@dataclass(frozen=True, slots=True)
class PasswdEntry:
    name: str
    uid: int
    gid: int
    home: str


@dataclass(frozen=True, slots=True)
class GroupEntry:
    name: str
    gid: int
    members: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ResolvedUser:
    """The process identity; ``user`` is what ContainerStatus reports."""

    uid: int
    gid: int
    additional_gids: tuple[int, ...]
    home: str = "/"
    username: str = ""

    @property
    def user(self) -> ContainerUser:
        return ContainerUser(uid=self.uid, gid=self.gid, supplemental_groups=self.additional_gids)


def _id(text: str) -> int | None:
    if not text.isdigit():
        return None
    value = int(text)
    return value if value <= MAX_ID else None


def parse_passwd(data: bytes) -> list[PasswdEntry]:
    """passwd(5) lines; malformed lines are skipped (as glibc's parser does)."""
    out: list[PasswdEntry] = []
    for line in data.decode(errors="replace").splitlines():
        if not line or line.startswith("#"):
            continue
        f = line.split(":")
        if len(f) < 4:
            continue
        uid, gid = _id(f[2]), _id(f[3])
        if uid is None or gid is None or not f[0]:
            continue
        out.append(PasswdEntry(f[0], uid, gid, f[5] if len(f) > 5 and f[5] else "/"))
    return out


def parse_group(data: bytes) -> list[GroupEntry]:
    """group(5) lines; malformed lines are skipped."""
    out: list[GroupEntry] = []
    for line in data.decode(errors="replace").splitlines():
        if not line or line.startswith("#"):
            continue
        f = line.split(":")
        if len(f) < 3:
            continue
        gid = _id(f[2])
        if gid is None or not f[0]:
            continue
        members = tuple(m.strip() for m in f[3].split(",") if m.strip()) if len(f) > 3 else ()
        out.append(GroupEntry(f[0], gid, members))
    return out


def _check_id(value: int, what: str) -> int:
    if not 0 <= value <= MAX_ID:
        raise InvalidArgument(f"{what} {value} is out of range [0, {MAX_ID}]")
    return value


def user_string(security: ContainerSecurity, image_user: str) -> str:
    """The "user[:group]" to resolve (rule 1)."""
    user = ""
    if security.run_as_user is not None:
        user = str(_check_id(security.run_as_user, "run_as_user"))
    if security.run_as_username:
        user = security.run_as_username
    group = ""
    if security.run_as_group is not None:
        group = str(_check_id(security.run_as_group, "run_as_group"))
    if not user:
        if group:
            raise InvalidArgument(f"run_as_group {group} is specified without a user (run_as_user or run_as_username)")
        return image_user
    return f"{user}:{group}" if group else user


def resolve_user(
    security: ContainerSecurity,
    image_user: str,
    read_file: FileReader,
) -> ResolvedUser:
    """Resolve the container's identity against the image's /etc/passwd and /etc/group.

    ``read_file`` reads a file of the image rootfs (None when absent). Raises
    InvalidArgument for an unknown user or group name or a malformed user string.
    """
    spec = user_string(security, image_user)
    user_part, sep, group_part = spec.partition(":")
    if ":" in group_part or (sep and not group_part) or (sep and not user_part):
        raise InvalidArgument(f"invalid user {spec!r}: want USER, UID, USER:GROUP or UID:GID")
    passwd_data = read_file("/etc/passwd")
    passwd = parse_passwd(passwd_data) if passwd_data else []
    entry: PasswdEntry | None = None
    numeric = _id(user_part) if user_part else 0
    if numeric is not None:
        uid = numeric
        entry = next((p for p in passwd if p.uid == uid), None)
        gid = entry.gid if entry else 0
    else:
        entry = next((p for p in passwd if p.name == user_part), None)
        if entry is None:
            where = "/etc/passwd" if passwd_data is not None else "/etc/passwd (the image has none)"
            raise InvalidArgument(f"user {user_part!r} not found in the image's {where}")
        uid, gid = entry.uid, entry.gid
    groups: list[GroupEntry] | None = None

    def load_groups() -> list[GroupEntry]:
        nonlocal groups
        if groups is None:
            data = read_file("/etc/group")
            groups = parse_group(data) if data else []
        return groups

    if group_part:
        g = _id(group_part)
        if g is not None:
            gid = g
        else:
            match = next((x for x in load_groups() if x.name == group_part), None)
            if match is None:
                raise InvalidArgument(f"group {group_part!r} not found in the image's /etc/group")
            gid = match.gid
    additional: list[int] = [gid]
    if security.supplemental_groups_policy is SupplementalGroupsPolicy.MERGE and entry is not None:
        name = entry.name
        additional += [x.gid for x in load_groups() if x.name != name and name in x.members]
    for g in security.supplemental_groups:
        additional.append(_check_id(g, "supplemental group"))
    return ResolvedUser(
        uid=uid,
        gid=gid,
        additional_gids=tuple(dict.fromkeys(additional)),
        home=entry.home if entry else "/",
        username=entry.name if entry else "",
    )
