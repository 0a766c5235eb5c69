"""Images: references, registry client, content store, layer unpacking and overlay snapshots.

The service (:class:`runtime.image.service.ImageService`) is what the rest of the engine
uses; the modules below it are mechanisms with narrow contracts:

- ``reference``   parse and normalise image references (docker.io/library/NAME:latest)
- ``registries``  containers-registries.conf(5) v2: mirrors, insecure, blocked, rewrites
- ``auth``        kubelet AuthConfig and WWW-Authenticate challenges
- ``registry``    the distribution v2 client (httpx, async)
- ``manifest``    OCI / Docker manifests, indexes and platform choice
- ``content``     blobs by digest, verified before they become visible
- ``applier``     a layer tar applied into an empty directory, never writing outside it
- ``snapshot``    one directory per layer chain id, container overlay descriptions
- ``metadata``    the image tables in the store
- ``pull``        the pull pipeline (parallel downloads, coalescing, progress)
- ``archive``     ``docker save`` and OCI layout archives (air-gapped import)
"""
