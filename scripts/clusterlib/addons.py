"""The images the cluster uses, built by the project's own image tooling and pushed to the
cluster registry, and the CoreDNS add-on (cluster DNS at ``DNS_SERVICE_IP``).

Images (``REGISTRY/cluster/NAME:TAG``): ``busybox`` (a busybox-static rootfs, ``sh``), ``httpd``
(busybox httpd on port 8080 serving a static page), ``coredns`` (the CoreDNS binary built by
scripts/cluster-build.sh, alone with /etc/passwd, as upstream's distroless image runs it).
CoreDNS answers only for the cluster domain and reverse zones: it forwards nothing, so no
query leaves the machine.
"""

from __future__ import annotations

from clusterlib import layout
from tests.support import imagebuilder as ib

BUSYBOX = f"{layout.REGISTRY}/cluster/busybox:1.0"
HTTPD = f"{layout.REGISTRY}/cluster/httpd:1.0"
COREDNS_IMAGE = f"{layout.REGISTRY}/cluster/coredns:{layout.COREDNS_VERSION}"


#: busybox applets of the cluster's busybox image: the test images' set, and tar for kubectl cp
APPLETS = (*ib.DEFAULT_APPLETS, "tar")


def busybox_image() -> ib.BuiltImage:
    env = ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]
    return ib.build_image([ib.busybox_layer(APPLETS)], config={"Cmd": ["sh"], "Env": env})


def coredns_image() -> ib.BuiltImage:
    layer = ib.Layer().dir("etc").dir("tmp", 0o1777)
    pw, gr = ib.passwd_files(users=(("nonroot", 65532, 65532, "/home/nonroot"),))
    layer.file("etc/passwd", pw).file("etc/group", gr)
    layer.file("coredns", layout.COREDNS.read_bytes(), 0o755)
    # uncompressed: gzip of the 50 MB binary would cost every up many seconds of CPU
    return ib.build_image([layer], config={"Entrypoint": ["/coredns"], "ExposedPorts": {"53/tcp": {}, "53/udp": {}}},
                          compression="none")


def push_images() -> dict[str, str]:
    """Build and push every image; returns reference -> manifest digest."""
    url = f"http://{layout.REGISTRY}"
    out = {}
    for ref, image in ((BUSYBOX, busybox_image()), (HTTPD, ib.httpd_image(8080)), (COREDNS_IMAGE, coredns_image())):
        repo, tag = ref.split("/", 1)[1].rsplit(":", 1)
        out[ref] = ib.push(url, repo, tag, image)
    return out


COREFILE = f""".:53 {{
    errors
    health {{
        lameduck 5s
    }}
    ready
    kubernetes {layout.CLUSTER_DOMAIN} in-addr.arpa ip6.arpa {{
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
        ttl 30
    }}
    prometheus :9153
    cache 30
    loop
    reload
    loadbalance
}}
"""


def _indent(text: str, spaces: int) -> str:
    return "".join(" " * spaces + line + "\n" for line in text.splitlines())


def coredns_manifests() -> str:
    """ServiceAccount, RBAC, ConfigMap, Deployment (2 replicas, spread) and the kube-dns Service,
    as kubeadm deploys them (k8s.io/kubernetes cmd/kubeadm/app/phases/addons/dns)."""
    return f"""apiVersion: v1
kind: ServiceAccount
metadata:
  name: coredns
  namespace: kube-system
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: system:coredns
rules:
- apiGroups: [""]
  resources: [endpoints, services, pods, namespaces]
  verbs: [list, watch]
- apiGroups: [discovery.k8s.io]
  resources: [endpointslices]
  verbs: [list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: system:coredns
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: ClusterRole
  name: system:coredns
subjects:
- kind: ServiceAccount
  name: coredns
  namespace: kube-system
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: coredns
  namespace: kube-system
data:
  Corefile: |
{_indent(COREFILE, 4)}---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: coredns
  namespace: kube-system
  labels: {{k8s-app: kube-dns}}
spec:
  replicas: 2
  selector:
    matchLabels: {{k8s-app: kube-dns}}
  template:
    metadata:
      labels: {{k8s-app: kube-dns}}
    spec:
      serviceAccountName: coredns
      priorityClassName: system-cluster-critical
      dnsPolicy: Default
      affinity:
        podAntiAffinity:
          preferredDuringSchedulingIgnoredDuringExecution:
          - weight: 100
            podAffinityTerm:
              topologyKey: kubernetes.io/hostname
              labelSelector:
                matchLabels: {{k8s-app: kube-dns}}
      containers:
      - name: coredns
        image: {COREDNS_IMAGE}
        args: ["-conf", "/etc/coredns/Corefile"]
        resources:
          limits: {{memory: 170Mi}}
          requests: {{cpu: 50m, memory: 70Mi}}
        ports:
        - {{containerPort: 53, name: dns, protocol: UDP}}
        - {{containerPort: 53, name: dns-tcp, protocol: TCP}}
        - {{containerPort: 9153, name: metrics, protocol: TCP}}
        volumeMounts:
        - {{name: config-volume, mountPath: /etc/coredns, readOnly: true}}
        livenessProbe:
          httpGet: {{path: /health, port: 8080}}
          initialDelaySeconds: 10
          periodSeconds: 10
          failureThreshold: 5
        readinessProbe:
          httpGet: {{path: /ready, port: 8181}}
          periodSeconds: 5
        securityContext:
          allowPrivilegeEscalation: false
          capabilities:
            add: [NET_BIND_SERVICE]
            drop: [ALL]
          readOnlyRootFilesystem: true
      volumes:
      - name: config-volume
        configMap:
          name: coredns
          items: [{{key: Corefile, path: Corefile}}]
---
apiVersion: v1
kind: Service
metadata:
  name: kube-dns
  namespace: kube-system
  labels: {{k8s-app: kube-dns, kubernetes.io/name: CoreDNS}}
spec:
  clusterIP: {layout.DNS_SERVICE_IP}
  selector: {{k8s-app: kube-dns}}
  ports:
  - {{name: dns, port: 53, protocol: UDP}}
  - {{name: dns-tcp, port: 53, protocol: TCP}}
  - {{name: metrics, port: 9153, protocol: TCP}}
"""
