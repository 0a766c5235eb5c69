"""scripts/cluster.sh: a Kubernetes v1.37 control plane and two cri-shim nodes on this machine.

Modules, one concern each: ``layout`` (names, addresses, paths, versions), ``state`` (what ``up``
made, for ``status`` and ``down``), ``pki`` (the CA, certificates, kubeconfigs), ``host`` (bridge,
namespaces, cgroups, processes), ``configs`` (command lines and config files of the components),
``addons`` (registry images, CoreDNS), ``up`` and ``down``; for scripts/cluster-e2e.sh,
``e2eimages`` (the images the upstream e2e specs pull) and ``e2ereport`` (its summary).
"""
