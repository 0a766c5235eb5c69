"""Engine settings: what the engine's services are configured with.

Plain frozen dataclasses with defaults; the CRI edge reads them from TOML
(``cri_shim.config``), validates them and passes them in. Each field's ``doc`` metadata is
the text the example config and the config reference print, so they cannot drift apart.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


def doc(text: str) -> dict[str, str]:
    """Field metadata carrying the documentation of one config key."""
    return {"doc": text}


@dataclass(frozen=True, slots=True)
class ImageSettings:
    registries_config: Path = field(
        default=Path("/etc/containers/registries.conf"),
        metadata=doc(
            "containers-registries.conf(5) v2 file: mirrors, insecure and blocked registries, "
            "location rewrites. A missing file means no rewrites."
        ),
    )
    pull_progress_timeout: float = field(
        default=300.0,
        metadata=doc("Seconds a pull may go without receiving a byte before it is cancelled (0 = never)."),
    )
    max_concurrent_downloads: int = field(
        default=3, metadata=doc("Layers downloaded in parallel per pull.")
    )
    max_layer_bytes: int = field(
        default=64 << 30,
        metadata=doc(
            "Largest uncompressed size of one layer, in bytes; a layer expanding beyond it "
            "(a decompression bomb) is refused and nothing of it is kept."
        ),
    )
    layer_unpack_timeout: float = field(
        default=1800.0,
        metadata=doc(
            "Seconds one layer may take to unpack in its worker process; a worker over it is "
            "killed, the layer discarded and the pull fails (0 = never)."
        ),
    )
    certs_dirs: tuple[Path, ...] = field(
        default=(Path("/etc/containers/certs.d"), Path("/etc/docker/certs.d")),
        metadata=doc(
            "containers-certs.d(5) directories: the first that has a <host[:port]> directory "
            "gives that registry's TLS files: *.crt CAs trusted besides the system store, "
            "*.cert + *.key client certificate pairs. A registry with a directory is verified "
            "even on loopback."
        ),
    )
    auth_file: str = field(
        default="",
        metadata=doc(
            "containers-auth.json(5) file with the node's registry credentials (\"auths\" by "
            "registry host or host/namespace, base64 user:password \"auth\", \"identitytoken\"), "
            "used when kubelet sends no credentials for the registry. Empty: none. podman login "
            "as root writes /run/containers/0/auth.json."
        ),
    )
    https_proxy: str = field(
        default="",
        repr=False,  # may carry a password
        metadata=doc(
            "Proxy for HTTPS registry traffic (http://[user:pass@]host:port). Empty: the daemon's "
            "HTTPS_PROXY/https_proxy environment variable, as containerd and CRI-O read it."
        ),
    )
    http_proxy: str = field(
        default="",
        repr=False,
        metadata=doc("Proxy for plain-HTTP registry traffic. Empty: HTTP_PROXY/http_proxy from the environment."),
    )
    no_proxy: str = field(
        default="",
        metadata=doc(
            "Hosts reached without the proxy, as Go reads NO_PROXY: comma-separated host names "
            "(and their sub-domains), .domain (sub-domains only), IPs, CIDRs, optional :port, or "
            "*. localhost and loopback IPs never use the proxy. Empty: NO_PROXY/no_proxy from "
            "the environment."
        ),
    )
    signature_policy: Path = field(
        default=Path("/etc/containers/policy.json"),
        metadata=doc(
            "containers-policy.json(5) file deciding which images a pull accepts, by registry "
            "and repository scope (transports.docker; the longest scope wins, then default): "
            "insecureAcceptAnything, reject, or sigstoreSigned with public keys (cosign "
            "signatures stored in the registry as sha256-<digest>.sig). signedBy (GPG) and "
            "Fulcio/Rekor are refused as unsupported. A missing file accepts every image."
        ),
    )
    gc_grace_period: float = field(
        default=300.0,
        metadata=doc(
            "Seconds the layers and blobs of a removed image (RemoveImage, or the last container of "
            "an image removed while in use) stay on disk before they are deleted, so that pulling "
            "the image again within that time downloads and unpacks nothing (containerd's content "
            "store likewise keeps content until its garbage collector runs). Content an image, a "
            "container or a pull uses is never deleted. 0: deleted right after RemoveImage (still "
            "in the background). ImageFsInfo counts the content while it is kept."
        ),
    )
    gc_grace_disk_limit: float = field(
        default=80.0,
        metadata=doc(
            "Percent of the image filesystem in use from which removed images' content is deleted "
            "at once instead of after gc_grace_period (checked at every removal and every 10 s "
            "while content is kept). kubelet's image garbage collection starts at 85 and aims at "
            "80 (imageGCHighThresholdPercent, imageGCLowThresholdPercent). 100: never early."
        ),
    )
    pinned_images: tuple[str, ...] = field(
        default=(),
        metadata=doc(
            "Images kubelet's image garbage collection must keep (CRI Image.pinned), as CRI-O's "
            "pinned_images: an exact name (\"registry.k8s.io/pause:3.10\"; short names are "
            "normalised), a glob with a trailing * (\"registry.k8s.io/*\", from the start of the "
            "name) or a keyword between two * (\"*pause*\"), compared case-insensitively with "
            "every tag and digest name of an image. RemoveImage still removes a pinned image."
        ),
    )


@dataclass(frozen=True, slots=True)
class NetworkSettings:
    pod_cidr: str = field(
        default="10.88.0.0/16",
        metadata=doc(
            "CIDR the built-in network allocates pod IPs from: IPv4, IPv6, or both "
            "comma-separated for dual stack (\"10.88.0.0/16,fd00:10:88::/64\"; the first "
            "family is a pod's primary IP). UpdateRuntimeConfig from kubelet (its --pod-cidr / "
            "the node's podCIDRs) replaces it. Empty: none until kubelet sends the node's (a "
            "cluster node: NetworkReady is false and no pod starts until then)."
        ),
    )
    bridge: str = field(default="crishim0", metadata=doc("Name of the built-in network's bridge."))
    cni_conf_dir: Path = field(
        default=Path("/etc/cni/net.d"),
        metadata=doc(
            "Directory searched for a CNI network config list (*.conflist, *.conf, *.json). "
            "When one is present, pods are networked by those CNI plugins instead of the "
            "built-in bridge."
        ),
    )
    cni_bin_dirs: tuple[Path, ...] = field(
        default=(Path("/opt/cni/bin"), Path("/usr/lib/cni")),
        metadata=doc("Directories searched, in order, for CNI plugin binaries."),
    )
    cni_cache_dir: Path = field(
        default=Path("/var/lib/cni"),
        metadata=doc("CNI result cache (lets DEL work after a restart), as libcni uses it."),
    )
    mode: str = field(
        default="auto",
        metadata=doc(
            "How pods are networked: \"auto\" (CNI when cni_conf_dir holds a usable network "
            "config, else the built-in bridge), \"builtin\" (always the bridge) or \"cni\" "
            "(only CNI: NetworkReady stays false until a config and its plugins are installed)."
        ),
    )
    no_masquerade_cidrs: tuple[str, ...] = field(
        default=(),
        metadata=doc(
            "Destinations that pod traffic reaches with the pod's own address, not masqueraded "
            "to the node's, besides the node's pod subnets: on a cluster, its whole pod range "
            "(kube-controller-manager's --cluster-cidr), so that a pod on another node sees the "
            "client pod's IP, as the Kubernetes network model asks (ip-masq-agent's "
            "nonMasqueradeCIDRs). IPv4 and IPv6 CIDRs; empty: only the pod subnets."
        ),
    )
    nft_table: str = field(
        default="cri_shim",
        metadata=doc(
            "Name of the built-in network's own nftables table (\"table ip <name>\": masquerade "
            "and hostPort DNAT). Replaced as a whole on every change; deleted with the last pod."
        ),
    )


#: the values of pods.ksm (runtime.shim.ksm)
KSM_SETTINGS = ("auto", "start", "off")


@dataclass(frozen=True, slots=True)
class PodSettings:
    cgroup_parent: str = field(
        default="/cri-shim",
        metadata=doc(
            "cgroupfs driver: the path under which a pod gets its own cgroup (<cgroup_parent>/<pod id>) "
            "when kubelet names none (crictl). With kubelet's cgroup_parent, kubelet's cgroup is "
            "used. (The systemd driver uses cgroups.systemd_slice instead.)"
        ),
    )
    shm_size: int = field(
        default=64 << 20,
        metadata=doc("Size in bytes of each pod's /dev/shm tmpfs (containerd's default: 64 MiB)."),
    )
    ksm: str = field(
        default="auto",
        metadata=doc(
            "Kernel same-page merging of the pod shims' memory (KSM): \"auto\" offers it to ksmd "
            "only when ksmd already runs, \"start\" also starts ksmd (/sys/kernel/mm/ksm/run, a "
            "host-wide switch that serves virtual machines and other software on the node too; it "
            "is left running) when it is stopped, \"off\" leaves KSM alone. ksmd scans only memory "
            "offered to it. Chosen when the daemon starts; the log and Status verbose info (\"ksm\") "
            "say what was found and done."
        ),
    )
    pods_per_shim: int = field(
        default=8,
        metadata=doc(
            "Pods one shim process hosts at most (1: a shim process per pod, as containerd's "
            "shims). Each pod keeps its own socket and state in it; the process's fixed cost, "
            "about 4 MB of memory, is shared by its pods, but a crash or kill of that process "
            "loses the output and exit records of all their containers together, and their "
            "pods become not ready together. Applies to pods started after a change."
        ),
    )
    stop_kill_timeout: float = field(
        default=30.0,
        metadata=doc(
            "Seconds StopContainer waits for a process to die after SIGKILL before it gives up "
            "with an error (a process stuck in the kernel)."
        ),
    )
    userns_first_id: int = field(
        default=1 << 31,
        metadata=doc(
            "First host uid/gid of the range from which a runtime handler with user_namespace = true "
            "gives each pod 65536 ids (when kubelet sends no mapping of its own). Keep it apart from "
            "kubelet's range for hostUsers: false pods (kubelet's /etc/subuid entry) and from real users."
        ),
    )
    userns_last_id: int = field(
        default=(1 << 32) - 2,
        metadata=doc("Last host uid/gid of that range (at most 4294967294)."),
    )
    pause_binary: Path = field(
        default=Path("/usr/local/libexec/cri-shim/pause"),
        metadata=doc(
            "The pid 1 of a pod that shares one PID namespace (shareProcessNamespace): a static "
            "binary that reaps orphans, built by `python -m runtime.shim.pause build --out PATH` "
            "(scripts/install.sh builds the default). The daemon refuses to start without it "
            "(it must be root's, executable and writable by no one else); each pod runs a "
            "sealed in-memory copy."
        ),
    )


@dataclass(frozen=True, slots=True)
class CgroupSettings:
    driver: str = field(
        default="auto",
        metadata=doc(
            "Who creates pod and container cgroups: \"systemd\" (transient slices and scopes through "
            "systemd's D-Bus API; kubelet's cgroupDriver: systemd, kubeadm's default), \"cgroupfs\" "
            "(directories in /sys/fs/cgroup; kubelet's cgroupDriver: cgroupfs) or \"auto\" (systemd "
            "when PID 1 is systemd on cgroup v2, else cgroupfs). RuntimeConfig reports the choice, "
            "so kubelet >= 1.28 follows it."
        ),
    )
    systemd_slice: str = field(
        default="cri_shim.slice",
        metadata=doc(
            "systemd driver: the slice under which a pod kubelet names no parent for (crictl) gets "
            "a slice of its own, <name>-<pod id>.slice. A '-' in the name nests it (a-b.slice is "
            "inside a.slice)."
        ),
    )


@dataclass(frozen=True, slots=True)
class CdiSettings:
    spec_dirs: tuple[Path, ...] = field(
        default=(Path("/etc/cdi"), Path("/var/run/cdi")),
        metadata=doc(
            "Directories of CDI (Container Device Interface) spec files, lowest priority first: a "
            "device defined in a later directory overrides one of the same name in an earlier one. "
            "CreateContainer resolves the container's CDI devices (CRI CDI_devices and cdi.k8s.io/* "
            "annotations) against the *.json and *.yaml specs here; an unknown device fails the request."
        ),
    )


@dataclass(frozen=True, slots=True)
class CheckpointSettings:
    criu_path: str = field(
        default="criu",
        metadata=doc(
            "The criu binary CheckpointContainer runs (a path, or a name looked up on PATH; Debian: "
            "apt-get install criu). Probed with `criu check` at start: Status's verbose info says "
            "whether it works on this kernel, and checkpoint RPCs answer FailedPrecondition with "
            "criu's reason where it does not."
        ),
    )


@dataclass(frozen=True, slots=True)
class RuntimeHandlerSettings:
    """One runtime handler (the ``handler`` of a RuntimeClass) besides the built-in ones."""

    name: str = field(
        default="",
        metadata=doc(
            "The handler name a RuntimeClass gives (a lowercase RFC 1123 label), other than the "
            "built-in \"\" and \"cri-shim\"."
        ),
    )
    user_namespace: bool = field(
        default=False,
        metadata=doc(
            "Run every pod of this handler in its own user namespace, as hostUsers: false does; when "
            "kubelet sends no mapping, the pod gets 65536 host ids of pods.userns_first_id.."
            "pods.userns_last_id. Pods on the node's network, PID or IPC namespace and privileged "
            "pods are refused."
        ),
    )
    default_seccomp_profile: str = field(
        default="",
        metadata=doc(
            "Seccomp profile of this handler's containers that ask for none, Unconfined or "
            "RuntimeDefault: \"runtime/default\" or the absolute path of a profile (JSON, as a "
            "Localhost profile). A Localhost profile the pod names is kept; privileged containers "
            "stay unconfined. Empty: as the default handler."
        ),
    )
    oci_runtime_path: str = field(
        default="",
        metadata=doc(
            "Absolute path of an OCI runtime binary (runc, crun) that runs the containers of this "
            "handler's pods: each container gets an OCI bundle generated from its plan (same "
            "capabilities, seccomp, masked and read-only paths, mounts, cgroup) and is made with "
            "`create`/`start`, exec'd with `exec`, removed with `delete`, the runtime's state under "
            "<state>/oci/<handler>. The pod itself (namespaces, network, PID holder) stays cri-shim's. "
            "A tty is the runtime's terminal, its master sent to the shim's console socket. Not with "
            "user_namespace. Empty: cri-shim runs them."
        ),
    )


@dataclass(frozen=True, slots=True)
class RuntimeSettings:
    """Everything the engine needs; paths are absolute."""

    root: Path = Path("/var/lib/cri-shim")
    state: Path = Path("/run/cri-shim")
    image: ImageSettings = field(default_factory=ImageSettings)
    network: NetworkSettings = field(default_factory=NetworkSettings)
    cgroup_root: Path = Path("/sys/fs/cgroup")
    #: KSM's sysfs directory (kernel Documentation/admin-guide/mm/ksm.rst); not a config key
    ksm_root: Path = Path("/sys/kernel/mm/ksm")
    pods: PodSettings = field(default_factory=PodSettings)
    cgroups: CgroupSettings = field(default_factory=CgroupSettings)
    cdi: CdiSettings = field(default_factory=CdiSettings)
    runtime_handlers: tuple[RuntimeHandlerSettings, ...] = ()
    checkpoint: CheckpointSettings = field(default_factory=CheckpointSettings)
