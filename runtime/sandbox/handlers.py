"""Runtime handlers: what a RuntimeClass ``handler`` selects on this runtime.

kubelet sends the RuntimeClass's handler as RunPodSandboxRequest.runtime_handler. The built-in
handlers, "" (the default) and "cri-shim" (k8s-manifests/runtimeclass.yaml), run pods as
configured; the node's config may declare more (``[[runtime_handlers]]``,
:class:`runtime.config.RuntimeHandlerSettings`), each with its own defaults:

- ``user_namespace``: every pod gets its own user namespace. A pod kubelet already gave one
  (hostUsers: false) keeps kubelet's mapping; any other gets 65536 host ids from the configured
  range (:func:`allocate_ids`: the lowest free, aligned block not used by any other pod's
  mapping, kubelet's included). Such a pod must meet hostUsers: false's rules (its own
  network, PID and IPC namespaces, not privileged): the sandbox validation refuses the rest.
- ``default_seccomp_profile``: containers asking for no profile, Unconfined or
  RuntimeDefault get this profile instead (:meth:`RuntimeHandlers.container_seccomp`).
- ``oci_runtime_path``: the pod's containers run through that OCI runtime (runc, crun:
  runtime.container.oci, runtime.shim.ociproc), also in a pod with its own user namespace.

An unknown handler is InvalidArgument listing the known ones (kubelet reports it as a pod
event; CRI-O and containerd refuse it the same way).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import replace

from runtime.config import RuntimeHandlerSettings
from runtime.errors import InvalidArgument, ResourceExhausted
from runtime.model.sandbox import (
    IDMapping,
    NamespaceMode,
    ProfileType,
    SandboxConfig,
    SecurityProfile,
    UserNamespaceOption,
)

#: handlers every cri-shim serves: the default and its name (k8s-manifests/runtimeclass.yaml)
BUILT_IN: tuple[str, ...] = ("", "cri-shim")
#: ids per pod: kubelet's size for hostUsers: false (KEP-127)
IDS_PER_POD = 65536


def allocate_ids(used: Iterable[tuple[int, int]], first: int, last: int, size: int = IDS_PER_POD) -> int:
    """The lowest host id ``h`` with ``h = first + k * size``, ``h + size - 1 <= last``, whose
    block overlaps none of the ``used`` (start, length) ranges. ResourceExhausted if none."""
    taken = sorted((s, s + n) for s, n in used if n > 0)
    start = first
    for lo, hi in taken:
        if hi <= start:
            continue
        if lo >= start + size:
            break
        # overlap: the next aligned block past this range
        start = first + -(-(hi - first) // size) * size
    if start + size - 1 > last:
        raise ResourceExhausted(
            f"no free block of {size} host ids left in {first}..{last} for a pod's user namespace"
        )
    return start


def mapped_ranges(configs: Iterable[SandboxConfig]) -> list[tuple[int, int]]:
    """The host id ranges (start, length) the user namespaces of ``configs`` map."""
    out = []
    for cfg in configs:
        userns = cfg.user_namespace
        if userns is not None:
            out += [(m.host_id, m.length) for m in (*userns.uids, *userns.gids)]
    return out


class RuntimeHandlers:
    """The handlers of this node: the built-in ones and ``configured``."""

    def __init__(self, configured: tuple[RuntimeHandlerSettings, ...] = (), *,
                 first_id: int = 1 << 31, last_id: int = (1 << 32) - 2) -> None:
        self._configured = {h.name: h for h in configured}
        self.first_id = first_id
        self.last_id = last_id

    @property
    def names(self) -> tuple[str, ...]:
        return (*BUILT_IN, *self._configured)

    def get(self, name: str) -> RuntimeHandlerSettings:
        """The settings of handler ``name`` (the built-ins: all defaults); InvalidArgument
        listing the known handlers for any other name."""
        if name in BUILT_IN:
            return RuntimeHandlerSettings(name=name)
        handler = self._configured.get(name)
        if handler is None:
            known = ", ".join(repr(n) for n in self.names)
            raise InvalidArgument(f"runtime handler {name!r} is not configured on this node (known: {known})")
        return handler

    def sandbox_config(self, config: SandboxConfig, used: Iterable[tuple[int, int]]) -> SandboxConfig:
        """``config`` with its handler's defaults applied: for a ``user_namespace`` handler
        a pod without a user namespace of its own gets one, mapping container ids 0..65535 to
        a free block (``used``: the ranges other pods map). Raises InvalidArgument for an
        unknown handler or, under a ``user_namespace`` handler, a pod that shares a namespace
        with the node or is privileged; ResourceExhausted when the range is full."""
        handler = self.get(config.runtime_handler)
        if not handler.user_namespace or config.user_namespace is not None:
            return config
        ns = config.security.namespaces
        shared = [kind for kind, mode in (("network", ns.network), ("PID", ns.pid), ("IPC", ns.ipc))
                  if mode is NamespaceMode.NODE]
        if shared or config.security.privileged:
            what = f"uses the node's {' and '.join(shared)} namespace" if shared else "is privileged"
            raise InvalidArgument(f"runtime handler {handler.name!r} runs every pod in its own user namespace, "
                                  f"and this pod {what}")
        start = allocate_ids(used, self.first_id, self.last_id)
        mapping = (IDMapping(host_id=start, container_id=0, length=IDS_PER_POD),)
        userns = UserNamespaceOption(NamespaceMode.POD, uids=mapping, gids=mapping)
        return replace(config, security=replace(config.security, namespaces=replace(ns, userns=userns)))

    def container_seccomp(self, handler_name: str, requested: SecurityProfile | None) -> SecurityProfile | None:
        """The seccomp profile a container of a pod of ``handler_name`` gets: the handler's
        ``default_seccomp_profile`` in place of none, Unconfined or RuntimeDefault; a
        Localhost request, and every request under a handler without one, unchanged."""
        handler = self.get(handler_name)
        profile = handler.default_seccomp_profile
        if not profile or (requested is not None and requested.type is ProfileType.LOCALHOST):
            return requested
        return default_profile(profile)


def default_profile(text: str) -> SecurityProfile:
    """A handler's ``default_seccomp_profile`` value as a profile; InvalidArgument if it is
    neither "runtime/default" nor an absolute path."""
    if text == "runtime/default":
        return SecurityProfile(ProfileType.RUNTIME_DEFAULT)
    if not os.path.isabs(text):
        raise InvalidArgument(f"default_seccomp_profile {text!r} is neither runtime/default nor an absolute path")
    return SecurityProfile(ProfileType.LOCALHOST, localhost_ref=text)
