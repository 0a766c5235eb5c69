"""Choosing, loading and compiling a container's seccomp program, with a compile cache.

CRI's ``LinuxContainerSecurityContext.seccomp`` picks the profile:

- ``RuntimeDefault``: our allow-list (``runtime_default.json``), resolved against the
  container's bounding capabilities (admin syscalls only when CAP_SYS_ADMIN is granted, ...);
- ``Unconfined``: no filter;
- ``Localhost``: the JSON profile at ``localhost_ref``, an absolute host path (kubelet joins
  its seccomp root with the pod's ``localhostProfile``);
- not set: no filter, as containerd does unless configured otherwise
  (``unset_is_runtime_default`` mirrors containerd's ``unset_seccomp_profile``);
- privileged containers get no filter whatever was asked (containerd and CRI-O do the same).

Compilation happens here, in the daemon (never in the forked child). Compiled programs are
cached by the SHA-256 of the profile text plus everything the resolution depends on, so the
hundredth container with the same profile costs a dictionary lookup. All methods block
(file reads, compiling): call them from a worker thread.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from runtime.errors import InvalidArgument
from runtime.linux import seccomp as kseccomp
from runtime.model.sandbox import ProfileType, SecurityProfile
from runtime.security.seccomp.bpf import compile_filter
from runtime.security.seccomp.profile import Profile, ProfileContext, SeccompFilter, parse_profile

RUNTIME_DEFAULT_FILE = Path(__file__).with_name("runtime_default.json")


@dataclass(frozen=True, slots=True)
class SeccompChoice:
    """What a container gets: ``bpf`` empty means no filter. ``profile`` names it for logs
    and status ("unconfined", "runtime/default", "localhost/<path>"); ``digest`` is the
    cache key of the compiled program ("" without a filter)."""

    profile: str
    bpf: bytes = b""
    digest: str = ""
    #: the profile's text and the context it was resolved in: what an OCI runtime, which
    #: takes the JSON form, is given (:meth:`SeccompProfiles.resolved`)
    text: bytes = field(default=b"", repr=False, compare=False)
    context: ProfileContext | None = field(default=None, compare=False)


def kernel_version(release: str | None = None) -> tuple[int, int]:
    """(major, minor) of a kernel release string ("6.18.44-fc" -> (6, 18))."""
    rel = release if release is not None else os.uname().release
    parts = rel.split(".")
    try:
        return int(parts[0]), int("".join(ch for ch in parts[1] if ch.isdigit()) or 0)
    except (IndexError, ValueError):
        return (0, 0)


class SeccompProfiles:
    """Seccomp programs for containers. Thread-safe; construction does no I/O."""

    def __init__(
        self,
        *,
        native_arch: str | None = None,
        kernel: tuple[int, int] | None = None,
        runtime_default_file: Path = RUNTIME_DEFAULT_FILE,
        unset_is_runtime_default: bool = False,
        cache_size: int = 128,
    ) -> None:
        self.native_arch = native_arch or kseccomp.native_arch()
        self.kernel = kernel or kernel_version()
        self.runtime_default_file = runtime_default_file
        self.unset_is_runtime_default = unset_is_runtime_default
        self._cache_size = cache_size
        self._programs: OrderedDict[str, bytes] = OrderedDict()
        self._parsed: dict[str, Profile] = {}
        self._lock = threading.Lock()
        self.compiles = 0  # programs compiled (cache misses), for tests and metrics

    def choose(
        self,
        requested: SecurityProfile | None,
        *,
        privileged: bool,
        bounding_caps: Iterable[str],
    ) -> SeccompChoice:
        """The program for a container. ``bounding_caps`` are "CAP_*" names.

        Raises InvalidArgument for a Localhost profile that is missing, unreadable or invalid,
        and for an unknown profile type.
        """
        if privileged:
            return SeccompChoice("unconfined")
        if requested is None:
            if not self.unset_is_runtime_default:
                return SeccompChoice("unconfined")
            requested = SecurityProfile(ProfileType.RUNTIME_DEFAULT)
        if requested.type is ProfileType.UNCONFINED:
            return SeccompChoice("unconfined")
        if requested.type is ProfileType.RUNTIME_DEFAULT:
            text = self._read(self.runtime_default_file, "RuntimeDefault")
            name = "runtime/default"
        elif requested.type is ProfileType.LOCALHOST:
            ref = requested.localhost_ref
            if not ref or not os.path.isabs(ref):
                raise InvalidArgument(f"seccomp Localhost profile needs an absolute host path, got {ref!r}")
            text = self._read(Path(ref), "Localhost")
            name = f"localhost/{ref}"
        else:  # pragma: no cover - StrEnum exhausted
            raise InvalidArgument(f"unknown seccomp profile type {requested.type!r}")
        ctx = ProfileContext(frozenset(bounding_caps), self.native_arch, self.kernel)
        digest, bpf = self.compile(text, ctx, source=name)
        return SeccompChoice(name, bpf, digest, text, ctx)

    def resolved(self, choice: SeccompChoice) -> SeccompFilter | None:
        """The filter ``choice``'s program was compiled from (None: unconfined), for an OCI
        runtime's config (runtime.oci.seccomp): the same profile text resolved in the same
        context, so it holds the same rules."""
        if not choice.bpf or choice.context is None:
            return None
        digest = hashlib.sha256(choice.text).hexdigest()
        with self._lock:
            profile = self._parsed.get(digest)
        if profile is None:
            profile = parse_profile(choice.text, choice.profile)
        return profile.resolve(choice.context)

    def compile(self, text: bytes, ctx: ProfileContext, source: str = "<profile>") -> tuple[str, bytes]:
        """(cache key, program) for a profile text in a context; compiles on a cache miss."""
        text_digest = hashlib.sha256(text).hexdigest()
        key = hashlib.sha256(
            "|".join([text_digest, ctx.native_arch, f"{ctx.kernel[0]}.{ctx.kernel[1]}",
                      ",".join(sorted(ctx.capabilities))]).encode()
        ).hexdigest()
        with self._lock:
            hit = self._programs.get(key)
            if hit is not None:
                self._programs.move_to_end(key)
                return key, hit
            profile = self._parsed.get(text_digest)
        if profile is None:
            profile = parse_profile(text, source)
        program = compile_filter(profile.resolve(ctx))
        with self._lock:
            self.compiles += 1
            if len(self._parsed) >= self._cache_size:
                self._parsed.clear()
            self._parsed[text_digest] = profile
            self._programs[key] = program
            while len(self._programs) > self._cache_size:
                self._programs.popitem(last=False)
        return key, program

    @staticmethod
    def _read(path: Path, what: str) -> bytes:
        try:
            with open(path, "rb") as f:
                return f.read()
        except FileNotFoundError:
            raise InvalidArgument(f"seccomp {what} profile {path} does not exist") from None
        except IsADirectoryError:
            raise InvalidArgument(f"seccomp {what} profile {path} is a directory, not a JSON file") from None
        except OSError as exc:
            raise InvalidArgument(f"seccomp {what} profile {path} cannot be read: {exc.strerror}") from None
