"""What the runtime passes to CNI plugins besides the config: CNI_ARGS and capability args.

As containerd's CRI plugin does (go-cni): CNI_ARGS carry ``IgnoreUnknown=1`` and the
``K8S_POD_*`` identity; capability args (``runtimeConfig``) carry port mappings, bandwidth
from the pod's ``kubernetes.io/{in,e}gress-bandwidth`` annotations, requested IPs/MAC, DNS,
the cgroup path and the pod annotations. libcni injects a capability into a plugin's
``runtimeConfig`` only when the plugin declares it under ``capabilities``.
"""

from __future__ import annotations

import re
from decimal import ROUND_CEILING, Decimal, InvalidOperation
from typing import Any

from runtime.errors import InvalidArgument
from runtime.model.network import Bandwidth, PodNetworkRequest

POD_ANNOTATIONS_CAPABILITY = "io.kubernetes.cri.pod-annotations"
INGRESS_ANNOTATION = "kubernetes.io/ingress-bandwidth"
EGRESS_ANNOTATION = "kubernetes.io/egress-bandwidth"
#: containerd sets the burst to MaxUint32 bits when only a rate is given.
DEFAULT_BURST = 2**32 - 1

_QUANTITY = re.compile(r"^([+-]?[0-9.]+)([eE][+-]?[0-9]+|[numkMGTPE]|[KMGTPE]i)?$")
_SUFFIX = {
    "n": Decimal("1e-9"), "u": Decimal("1e-6"), "m": Decimal("1e-3"), "": Decimal(1),
    "k": Decimal("1e3"), "M": Decimal("1e6"), "G": Decimal("1e9"), "T": Decimal("1e12"),
    "P": Decimal("1e15"), "E": Decimal("1e18"),
    "Ki": Decimal(2**10), "Mi": Decimal(2**20), "Gi": Decimal(2**30), "Ti": Decimal(2**40),
    "Pi": Decimal(2**50), "Ei": Decimal(2**60),
}  # fmt: skip


def parse_quantity(text: str) -> int:
    """A Kubernetes resource quantity (``10M``, ``1Gi``, ``1.5e6``) as an integer, rounded up."""
    m = _QUANTITY.match(text.strip())
    if not m:
        raise InvalidArgument(f"invalid quantity {text!r}")
    try:
        number = Decimal(m.group(1))
    except InvalidOperation:
        raise InvalidArgument(f"invalid quantity {text!r}") from None
    suffix = m.group(2) or ""
    scale = Decimal(10) ** int(suffix[1:]) if suffix[:1] in ("e", "E") else _SUFFIX[suffix]
    value = number * scale
    return int(value.to_integral_value(rounding=ROUND_CEILING))


def bandwidth_from_annotations(annotations: dict[str, str]) -> Bandwidth | None:
    """The pod's bandwidth limits (bits/s), or None when it has neither annotation."""
    ingress = annotations.get(INGRESS_ANNOTATION)
    egress = annotations.get(EGRESS_ANNOTATION)
    if ingress is None and egress is None:
        return None
    bw = Bandwidth()
    if ingress is not None:
        rate = parse_quantity(ingress)
        if rate <= 0:
            raise InvalidArgument(f"{INGRESS_ANNOTATION}={ingress!r} must be positive")
        bw = Bandwidth(rate, DEFAULT_BURST, bw.egress_rate, bw.egress_burst)
    if egress is not None:
        rate = parse_quantity(egress)
        if rate <= 0:
            raise InvalidArgument(f"{EGRESS_ANNOTATION}={egress!r} must be positive")
        bw = Bandwidth(bw.ingress_rate, bw.ingress_burst, rate, DEFAULT_BURST)
    return bw


def cni_args(req: PodNetworkRequest) -> list[tuple[str, str]]:
    """CNI_ARGS pairs (containerd's order); ``IgnoreUnknown`` lets plugins skip what they lack."""
    return [
        ("IgnoreUnknown", "1"),
        ("K8S_POD_NAMESPACE", req.namespace),
        ("K8S_POD_NAME", req.name),
        ("K8S_POD_INFRA_CONTAINER_ID", req.sandbox_id),
        ("K8S_POD_UID", req.uid),
    ]


def format_cni_args(pairs: list[tuple[str, str]]) -> str:
    for k, v in pairs:
        if ";" in k or "=" in k or ";" in v:
            raise InvalidArgument(f"CNI_ARGS value {k}={v!r} must not contain ';' (or '=' in the key)")
    return ";".join(f"{k}={v}" for k, v in pairs)


def capability_args(req: PodNetworkRequest) -> dict[str, Any]:
    """Every capability value this request provides (plugins get the ones they declare)."""
    caps: dict[str, Any] = {}
    ports = []
    for pm in req.port_mappings:
        v = pm.validated()
        if v.host_port <= 0:
            continue
        entry: dict[str, Any] = {
            "hostPort": v.host_port,
            "containerPort": v.container_port,
            "protocol": str(v.protocol),
        }
        if v.host_ip:
            entry["hostIP"] = v.host_ip
        ports.append(entry)
    if ports:
        caps["portMappings"] = ports
    bw = bandwidth_from_annotations(req.annotations)
    if bw is not None:
        caps["bandwidth"] = {
            k: v
            for k, v in (
                ("ingressRate", bw.ingress_rate),
                ("ingressBurst", bw.ingress_burst),
                ("egressRate", bw.egress_rate),
                ("egressBurst", bw.egress_burst),
            )
            if v
        }
    if req.ips:
        caps["ips"] = list(req.ips)
    if req.mac:
        caps["mac"] = req.mac
    if req.dns is not None:
        caps["dns"] = {
            "servers": list(req.dns.servers),
            "searches": list(req.dns.searches),
            "options": list(req.dns.options),
        }
    if req.cgroup_parent:
        caps["cgroupPath"] = req.cgroup_parent
    caps[POD_ANNOTATIONS_CAPABILITY] = dict(req.annotations)
    return caps


def runtime_config_for(plugin: dict[str, Any], caps: dict[str, Any]) -> dict[str, Any]:
    """libcni injectRuntimeConfig: the capability args the plugin declares ``true``."""
    declared = plugin.get("capabilities")
    if not isinstance(declared, dict):
        return {}
    return {name: caps[name] for name, on in declared.items() if on is True and name in caps}
