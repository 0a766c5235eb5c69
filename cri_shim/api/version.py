"""The k8s.io/cri-api release the stubs in ``gen/`` were generated from (see proto/VERSION)."""

CRI_API_VERSION = "v0.37.2"
