"""Containers run through an external OCI runtime (runc, crun): the bundle's config.json
generated from a container's launch plan (:mod:`runtime.oci.bundle`, :mod:`runtime.oci.seccomp`).
The runtime itself is run by the pod shim (runtime.shim.ociproc)."""
