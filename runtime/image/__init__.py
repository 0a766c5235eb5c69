"""Images: references, registry client, content store, layer unpacking and overlay snapshots.

The service (:class:`runtime.image.service.ImageService`) is what the rest of the engine
uses; the modules below it are mechanisms with narrow contracts:

- ``reference``   parse and normalise image references (docker.io/library/NAME:latest)
- ``registries``  containers-registries.conf(5) v2: mirrors, insecure, blocked, rewrites
- ``auth``        kubelet AuthConfig and WWW-Authenticate challenges
- ``authfile``    the node's containers-auth.json(5) credentials
- ``registry``    the distribution v2 client (httpx, async)
- ``certs``       TLS trust per registry: system CA store + containers-certs.d(5)
- ``proxy``       HTTPS_PROXY/HTTP_PROXY/NO_PROXY as Go reads them
- ``httppool``    one pooled HTTP client per TLS configuration, proxied per URL
- ``redirects``   where a registry may redirect us, and with which credentials
- ``policy``      containers-policy.json(5): scopes, requirements, signed identities
- ``sigstore``    cosign signatures: fetched from the registry, verified with public keys
- ``admission``   the policy applied to a pull (reject before traffic, signatures before layers)
- ``pinning``     ``pinned_images`` patterns (Image.pinned for kubelet's GC)
- ``manifest``    OCI / Docker manifests, indexes and platform choice
- ``content``     blobs by digest, verified before they become visible
- ``applier``     a layer tar applied into an empty directory, never writing outside it
- ``snapshot``    one directory per layer chain id, container overlay descriptions
- ``metadata``    the image tables in the store
- ``index``       the visible images in memory (status, list, lookups), coherent with the store
- ``retention``   what removed images leave pending, and the collection's SQL
- ``collector``   frees pending content after the grace period, off the RPC path
- ``pull``        the pull pipeline (parallel downloads, coalescing, progress)
- ``archive``     ``docker save`` and OCI layout archives (air-gapped import)
"""
