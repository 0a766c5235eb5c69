"""The image config merged with a ContainerConfig, by kubelet's (and containerd's) rules. Pure.

- arguments: ``command`` replaces the image's Entrypoint (and then the image's Cmd is not
  used); ``args`` replaces the image's Cmd;
- environment: the image's, then HOSTNAME, then the config's (same key: replaced in place),
  PATH defaulted, TERM=xterm with a tty;
- working dir: the config's, else the image's, else "/" (created if missing, by the shim);
- the pod's hostname/hosts/resolv.conf as bind mounts.

Everything about privileges, mounts and devices is runtime.security.container's.
"""

from __future__ import annotations

import os

from runtime.errors import InvalidArgument
from runtime.image.model import ImageConfig
from runtime.model.container import ContainerConfig
from runtime.model.launch import MountSpec

DEFAULT_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

POD_FILES = ("/etc/hostname", "/etc/hosts", "/etc/resolv.conf")


def merge_args(config: ContainerConfig, image: ImageConfig) -> tuple[str, ...]:
    """kubelet/Docker: command replaces Entrypoint (dropping the image's Cmd), args replace Cmd."""
    if config.command:
        args = (*config.command, *config.args)
    elif config.args:
        args = (*image.entrypoint, *config.args)
    else:
        args = (*image.entrypoint, *image.cmd)
    if not args or not args[0]:
        raise InvalidArgument(
            f"container {config.metadata.name!r}: no command given and the image has no Entrypoint or Cmd"
        )
    return args


def _set_env(env: list[str], key: str, value: str) -> None:
    prefix = key + "="
    for i, item in enumerate(env):
        if item == key or item.startswith(prefix):
            env[i] = prefix + value
            return
    env.append(prefix + value)


def merge_env(image: ImageConfig, config: ContainerConfig, hostname: str) -> tuple[str, ...]:
    env: list[str] = []
    for item in image.env:
        key, _, value = item.partition("=")
        _set_env(env, key, value)
    if not any(e.startswith("PATH=") for e in env):
        env.insert(0, DEFAULT_PATH)
    if hostname:
        _set_env(env, "HOSTNAME", hostname)
    for key, value in config.envs:
        if not key or "=" in key or "\0" in key or "\0" in value:
            raise InvalidArgument(f"invalid environment variable name {key!r}")
        _set_env(env, key, value)
    if config.tty and not any(e.startswith("TERM=") for e in env):
        env.append("TERM=xterm")
    return tuple(env)


def working_dir(config: ContainerConfig, image: ImageConfig) -> str:
    cwd = config.working_dir or image.working_dir or "/"
    if not cwd.startswith("/"):
        raise InvalidArgument(f"working directory {cwd!r} must be absolute")
    return cwd


def pod_file_mounts(files_dir: str, readonly: bool) -> tuple[MountSpec, ...]:
    """The pod's hostname, hosts and resolv.conf as bind mounts (CRI mounts at the same
    destination win; see runtime.security.mounts.merge_mounts)."""
    ro = ("ro",) if readonly else ()
    return tuple(
        MountSpec(dest, "bind", os.path.join(files_dir, os.path.basename(dest)), ("rbind", "rprivate", *ro))
        for dest in POD_FILES
    )
