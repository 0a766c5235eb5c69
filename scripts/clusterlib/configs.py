"""Command lines and config files of the components (pure: text and argv, no side effects).

Ports: the control plane listens on ``HOST_IP`` (the apiserver) or on host loopback at ports
chosen free at ``up`` (etcd); the controller-manager and scheduler serve nothing (secure port 0),
so nothing collides with another cluster or kubelet on this machine. Inside a node's network
namespace the usual fixed ports are private to the node (kubelet 10250 on the node's address,
healthz and cri-shim's streaming and metrics on the node's own loopback).
"""

from __future__ import annotations

from pathlib import Path

from clusterlib import layout

PKI = layout.PKI


def etcd_argv(data: Path, client_port: int, peer_port: int) -> list[str]:
    client, peer = f"http://127.0.0.1:{client_port}", f"http://127.0.0.1:{peer_port}"
    return [str(layout.ETCD), "--name=cluster", f"--data-dir={data}", f"--listen-client-urls={client}",
            f"--advertise-client-urls={client}", f"--listen-peer-urls={peer}",
            f"--initial-advertise-peer-urls={peer}", f"--initial-cluster=cluster={peer}",
            "--listen-metrics-urls=", "--log-level=warn", "--quota-backend-bytes=1073741824"]


def apiserver_argv(etcd_port: int) -> list[str]:
    return [
        str(layout.K8S_BIN / "kube-apiserver"),
        f"--etcd-servers=http://127.0.0.1:{etcd_port}",
        f"--advertise-address={layout.HOST_IP}", f"--bind-address={layout.HOST_IP}",
        f"--secure-port={layout.APISERVER_PORT}",
        f"--service-cluster-ip-range={layout.SERVICE_CIDR}",
        "--authorization-mode=Node,RBAC", "--enable-admission-plugins=NodeRestriction",
        f"--client-ca-file={PKI / 'ca.crt'}",
        f"--tls-cert-file={PKI / 'apiserver.crt'}", f"--tls-private-key-file={PKI / 'apiserver.key'}",
        f"--kubelet-client-certificate={PKI / 'apiserver-kubelet-client.crt'}",
        f"--kubelet-client-key={PKI / 'apiserver-kubelet-client.key'}",
        "--kubelet-preferred-address-types=InternalIP",
        f"--service-account-issuer=https://kubernetes.default.svc.{layout.CLUSTER_DOMAIN}",
        f"--service-account-key-file={PKI / 'sa.pub'}",
        f"--service-account-signing-key-file={PKI / 'sa.key'}",
        "--allow-privileged=true", "--profiling=false", "--v=1",
        # webhooks and aggregated APIs reached at their endpoints' pod addresses (routed to the
        # nodes), not at a service address, which only the nodes' kube-proxy translates: from
        # the host it would follow the default route off the machine
        "--enable-aggregator-routing=true",
    ]


def controller_manager_argv() -> list[str]:
    kc = str(PKI / "controller-manager.kubeconfig")
    return [
        str(layout.K8S_BIN / "kube-controller-manager"),
        f"--kubeconfig={kc}", f"--authentication-kubeconfig={kc}", f"--authorization-kubeconfig={kc}",
        "--leader-elect=false", "--secure-port=0", "--use-service-account-credentials=true",
        f"--root-ca-file={PKI / 'ca.crt'}", f"--service-account-private-key-file={PKI / 'sa.key'}",
        f"--cluster-signing-cert-file={PKI / 'ca.crt'}", f"--cluster-signing-key-file={PKI / 'ca.key'}",
        "--allocate-node-cidrs=true", f"--cluster-cidr={layout.CLUSTER_CIDR}", "--node-cidr-mask-size=24",
        f"--service-cluster-ip-range={layout.SERVICE_CIDR}", "--profiling=false", "--v=1",
    ]


def scheduler_argv() -> list[str]:
    kc = str(PKI / "scheduler.kubeconfig")
    return [str(layout.K8S_BIN / "kube-scheduler"), f"--kubeconfig={kc}", f"--authentication-kubeconfig={kc}",
            f"--authorization-kubeconfig={kc}", "--leader-elect=false", "--secure-port=0", "--profiling=false",
            "--v=1"]


def registry_config(storage: Path) -> str:
    """docker-registry on the bridge address, plain HTTP, anonymous push and pull."""
    return f"""version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: {storage}
  delete:
    enabled: true
http:
  addr: {layout.REGISTRY}
"""


#: public registries whose images (the e2e suite's, scripts/clusterlib/e2eimages.py) the cluster
#: registry holds under the same name: REGISTRY/registry.k8s.io/e2e-test-images/agnhost:2.66.1
REWRITTEN_REGISTRIES = ("registry.k8s.io",)
#: names the e2e suite pulls to see a pull fail: refused here, never looked up
BLOCKED_PREFIXES = ("invalid.registry.k8s.io", "gcr.io/k8s-authenticated-test")


def registries_conf() -> str:
    """containers-registries.conf(5) for the nodes' cri-shim: the cluster registry over HTTP;
    ``registry.k8s.io/NAME`` rewritten to it (a location, not a mirror: nothing falls back to
    the real host); the e2e suite's unreachable registries blocked."""
    out = f'[[registry]]\nlocation = "{layout.REGISTRY}"\ninsecure = true\n'
    for prefix in REWRITTEN_REGISTRIES:
        out += f'\n[[registry]]\nprefix = "{prefix}"\nlocation = "{layout.REGISTRY}/{prefix}"\ninsecure = true\n'
    for prefix in BLOCKED_PREFIXES:
        out += f'\n[[registry]]\nprefix = "{prefix}"\nblocked = true\n'
    return out


def cri_shim_config(node: layout.Node) -> str:
    """cri-shim of ``node``: the built-in bridge network (the pod range arrives from kubelet
    through UpdateRuntimeConfig; traffic to the cluster's pod range keeps the pod's address),
    cgroupfs under the node's cgroup, its registries.conf."""
    d = node.dir
    return f"""address = "{node.cri_socket}"
root = "{d / 'cri-root'}"
state = "{d / 'cri-state'}"
log_level = "info"

[streaming]
address = "127.0.0.1:0"

[metrics]
address = "127.0.0.1:9472"

[image]
registries_config = "{layout.BASE / 'registries.conf'}"

[network]
mode = "builtin"
pod_cidr = ""  # the node's range, from kubelet: no pod starts before it
no_masquerade_cidrs = ["{layout.CLUSTER_CIDR}"]
cni_conf_dir = "{d / 'cni-none'}"
cni_cache_dir = "{d / 'cni-cache'}"

[pods]
cgroup_parent = "/{node.cgroup}/crictl"
ksm = "off"  # the host's KSM switch is host-wide: left alone

[cgroups]
driver = "cgroupfs"
"""


def kubelet_config(node: layout.Node) -> str:
    """No cgroupDriver: kubelet takes it from cri-shim's RuntimeConfig (KubeletCgroupDriverFromCRI,
    GA in 1.34; its log says "Using cgroup driver setting received from the CRI runtime")."""
    d = node.dir
    return f"""apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
containerRuntimeEndpoint: unix://{node.cri_socket}
address: {node.ip}
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
authentication:
  anonymous:
    enabled: false
  webhook:
    enabled: true
  x509:
    clientCAFile: {PKI / 'ca.crt'}
authorization:
  mode: Webhook
clusterDomain: {layout.CLUSTER_DOMAIN}
clusterDNS:
- {layout.DNS_SERVICE_IP}
resolvConf: ""
featureGates:
  PodAndContainerStatsFromCRI: true
  CRIListStreaming: true  # kubelet lists pods and containers through the Stream* RPCs
cgroupRoot: /{node.cgroup}
cgroupsPerQOS: true
enforceNodeAllocatable:
- pods
failSwapOn: false
failCgroupV1: false
podLogsDir: {d / 'pod-logs'}
evictionHard:
  memory.available: "100Mi"
  nodefs.available: "2%"
  imagefs.available: "2%"
  nodefs.inodesFree: "2%"
shutdownGracePeriod: 0s
maxPods: 50
syncFrequency: 10s
"""


def kubelet_argv(node: layout.Node) -> list[str]:
    d = node.dir
    return [str(layout.KUBELET), f"--config={d / 'kubelet.yaml'}", f"--kubeconfig={d / 'kubelet.kubeconfig'}",
            f"--root-dir={d / 'kubelet'}", f"--cert-dir={d / 'kubelet-pki'}", f"--hostname-override={node.name}",
            f"--config-dir={d / 'kubelet.conf.d'}",
            f"--node-ip={node.ip}", "--v=1"]


def kube_proxy_config(node: layout.Node) -> str:
    # conntrack sizes are host-wide sysctls: 0 leaves them alone (kube-proxy in a netns cannot
    # set them, and must not change the host's)
    return f"""apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection:
  kubeconfig: {node.dir / 'kube-proxy.kubeconfig'}
mode: nftables
clusterCIDR: {layout.CLUSTER_CIDR}
hostnameOverride: {node.name}
bindAddress: {node.ip}
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
conntrack:
  maxPerCore: 0
  min: 0
  tcpEstablishedTimeout: 0s
  tcpCloseWaitTimeout: 0s
"""


def kube_proxy_argv(node: layout.Node) -> list[str]:
    return [str(layout.K8S_BIN / "kube-proxy"), f"--config={node.dir / 'kube-proxy.yaml'}", "--v=1"]
