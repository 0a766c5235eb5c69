"""Restore of container checkpoints: what cri-shim does not do yet, said clearly.

CRI-O and containerd restore a container when CreateContainer's image is the path of a
checkpoint archive (or an OCI image holding one): kubelet's "restore" is a plain
CreateContainer. cri-shim cannot yet make a restored criu tree the child of a pod shim (criu
restore with the pod's namespaces, the shim's stdio pipes handed in with --inherit-fd and
the external mounts mapped to the new pod's files), so such a request is refused naming what
is missing rather than read as an image reference (which would answer a misleading "image not
found").
"""

from __future__ import annotations

from runtime import errors


def refuse_checkpoint_image(image: str) -> None:
    """Raise Unimplemented when ``image`` is a path (how CRI-O and containerd are handed a
    checkpoint archive to restore). No image reference starts with "/", and the path is never
    opened: the image field comes from the pod spec, whose author must not learn which host
    files exist."""
    if image.startswith("/"):
        raise errors.Unimplemented(
            f"image {image!r} is a path: restoring a container checkpoint archive through CreateContainer "
            "is not implemented by cri-shim yet (criu restore into a pod shim is missing); archives written "
            "by CheckpointContainer restore by hand with `criu restore` (see cri-shim.json in the archive)"
        )
