"""Names, addresses, paths and versions of the cluster: one place, so ``down`` undoes exactly what
``up`` made.

Addresses exist only on the cluster bridge and inside the namespaces the script makes:
``BRIDGE`` on the host holds ``HOST_IP`` (the apiserver and the registry listen there), each
node's network namespace holds ``eth0`` with its ``ip`` (kubelet and kube-proxy run there, and
its cri-shim makes its pod bridge there). Pods get addresses from the node's range of
``CLUSTER_CIDR`` (the controller-manager allocates it; kubelet hands it to cri-shim through
UpdateRuntimeConfig); services from ``SERVICE_CIDR``. No default route leaves a node: it routes
only the cluster's own ranges, so nothing a pod sends can leave the machine.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
K8S_VERSION = "v1.37.2"
ETCD_VERSION = "v3.6.17"
COREDNS_VERSION = "v1.14.7"
#: the binaries of scripts/cluster-build.sh (CRI_SHIM_K8S_CACHE: a cache shared by checkouts)
CACHE = Path(os.environ.get("CRI_SHIM_K8S_CACHE", REPO / ".cache" / "k8s"))
K8S_BIN = CACHE / f"kubernetes-{K8S_VERSION}"
KUBELET = CACHE / f"kubelet-{K8S_VERSION}"
ETCD = CACHE / f"etcd-{ETCD_VERSION}" / "etcd"
COREDNS = CACHE / f"coredns-{COREDNS_VERSION}" / "coredns"
KUBECTL = K8S_BIN / "kubectl"
REGISTRY_BIN = Path("/usr/bin/docker-registry")

#: Everything the cluster writes, removed by ``down``; CRI_SHIM_CLUSTER_DIR moves it.
BASE = Path(os.environ.get("CRI_SHIM_CLUSTER_DIR", "/var/lib/cri-shim-cluster"))
STATE_FILE = BASE / "state.json"
PKI = BASE / "pki"
NS_DIR = BASE / "ns"  # a private bind mount: the mount namespaces' pins live here
KUBECONFIG = PKI / "admin.kubeconfig"

BRIDGE = "crishimk8s0"
NETWORK = ipaddress.IPv4Network("10.250.0.0/24")
HOST_IP = "10.250.0.1"
CLUSTER_CIDR = "10.244.0.0/16"
SERVICE_CIDR = "10.96.0.0/16"
KUBERNETES_SERVICE_IP = "10.96.0.1"
DNS_SERVICE_IP = "10.96.0.10"
CLUSTER_DOMAIN = "cluster.local"
APISERVER_PORT = 6443
REGISTRY_PORT = 5000
APISERVER_URL = f"https://{HOST_IP}:{APISERVER_PORT}"
REGISTRY = f"{HOST_IP}:{REGISTRY_PORT}"

#: cgroup (in every v1 hierarchy, or the v2 tree) holding everything the cluster runs.
CGROUP = "cri-shim-cluster"
CONTROL_CGROUP = f"{CGROUP}/control"

#: kubelet's fixed paths, a tmpfs on each in each node's mount namespace: the device-plugin
#: socket dir under /var/lib/kubelet, and /var/log/containers, where kubelet links container logs
#: and removes links to containers its runtime does not know (another node's, or the host's)
KUBELET_FIXED_DIRS = (Path("/var/lib/kubelet"), Path("/var/log/containers"))


@dataclass(frozen=True, slots=True)
class Node:
    """One node: a network and a mount namespace running cri-shim, kubelet and kube-proxy."""

    name: str
    ip: str

    @property
    def dir(self) -> Path:
        return BASE / self.name

    @property
    def netns(self) -> str:
        """Name of the network namespace (``ip netns``, pinned at /run/netns/NAME)."""
        return f"crishimk8s-{self.name}"

    @property
    def netns_path(self) -> Path:
        return Path("/run/netns") / self.netns

    @property
    def mntns_path(self) -> Path:
        return NS_DIR / f"{self.name}.mnt"

    @property
    def utsns_path(self) -> Path:
        return NS_DIR / f"{self.name}.uts"

    @property
    def veth(self) -> str:
        """Host end of the node's veth pair (15 characters at most)."""
        return f"csk8s-{self.name}"

    @property
    def cgroup(self) -> str:
        """kubelet's --cgroup-root: the node's pods go below it (kubepods/...)."""
        return f"{CGROUP}/{self.name}"

    @property
    def system_cgroup(self) -> str:
        """cri-shim (and so its pod shims), kubelet and kube-proxy of the node."""
        return f"{CGROUP}/{self.name}/system"

    @property
    def cri_socket(self) -> Path:
        return self.dir / "cri.sock"


NODES = (Node("node-a", "10.250.0.2"), Node("node-b", "10.250.0.3"))
