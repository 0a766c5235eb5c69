"""CRI ImageService: PullImage, ImageStatus, ListImages, StreamImages, RemoveImage, ImageFsInfo.

Only protobuf ⇄ model translation and one engine call per method; errors raised by the
engine are mapped to status codes by the dispatcher's single table.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import grpc

from cri_shim.api.chunks import chunks, within_limit
from cri_shim.api.gen import api_pb2 as pb
from cri_shim.api.replycache import ReplyCache
from runtime.engine import Engine
from runtime.errors import InvalidArgument
from runtime.image.auth import RegistryAuth
from runtime.image.model import FilesystemUsage, Image

Ctx = grpc.aio.ServicerContext[Any, Any]


def auth_from_pb(auth: pb.AuthConfig | None) -> RegistryAuth | None:
    if auth is None:
        return None
    a = RegistryAuth(
        username=auth.username,
        password=auth.password,
        auth=auth.auth,
        server_address=auth.server_address,
        identity_token=auth.identity_token,
        registry_token=auth.registry_token,
    )
    return None if a.is_empty() else a


def user_of(user: str) -> tuple[int | None, str]:
    """CRI Image.uid / username from the config's User (containerd's getUserFromImage):
    "1000" or "1000:1000" → uid 1000; "app" or "app:staff" → username "app"; "" → neither."""
    if not user:
        return None, ""
    name = user.split(":", 1)[0]
    try:
        return int(name), ""
    except ValueError:
        return None, name


def image_to_pb(image: Image) -> pb.Image:
    uid, username = user_of(image.config.user)
    out = pb.Image(
        id=image.id,
        repo_tags=list(image.repo_tags),
        repo_digests=list(image.repo_digests),
        size=image.size,
        username=username,
        spec=pb.ImageSpec(image=image.id),
        pinned=image.pinned,
    )
    if uid is not None:
        out.uid.value = uid
    return out


def verbose_info(image: Image) -> dict[str, str]:
    """ImageStatus verbose ``info``: like containerd, one "info" key holding JSON."""
    try:
        spec: Any = json.loads(image.config_json)
    except ValueError:
        spec = {}
    info = {
        "chainID": image.chain_ids[-1] if image.chain_ids else "",
        "chainIDs": list(image.chain_ids),
        "manifestDigest": image.manifest_digest,
        "imageSpec": spec,
    }
    return {"info": json.dumps(info)}


def fs_usage_to_pb(u: FilesystemUsage) -> pb.FilesystemUsage:
    out = pb.FilesystemUsage(timestamp=u.timestamp_ns, fs_id=pb.FilesystemIdentifier(mountpoint=u.mountpoint))
    out.used_bytes.value = u.used_bytes
    out.inodes_used.value = u.inodes_used
    return out


def _image_name(spec: pb.ImageSpec | None, method: str) -> str:
    name = spec.image.strip() if spec is not None else ""
    if not name:
        raise InvalidArgument(f"{method}: image must not be empty")
    return name


class ImageHandlers:
    """The CRI image service over ``engine.images``."""

    def __init__(self, engine: Engine) -> None:
        self._images = engine.images
        # ImageStatus / ListImages: one message per image while its index entry is unchanged;
        # entries of removed images go at the next unfiltered list (kubelet's image GC lists)
        self._image_pb = ReplyCache(image_to_pb)

    async def PullImage(self, request: pb.PullImageRequest, context: Ctx) -> pb.PullImageResponse:
        name = _image_name(request.image, "PullImage")
        auth = auth_from_pb(request.auth if request.HasField("auth") else None)
        image = await self._images.pull(name, auth)
        return pb.PullImageResponse(image_ref=image.id)

    async def ImageStatus(self, request: pb.ImageStatusRequest, context: Ctx) -> pb.ImageStatusResponse:
        name = _image_name(request.image, "ImageStatus")
        image = await self._images.status(name)
        if image is None:
            return pb.ImageStatusResponse()  # CRI: a missing image is an empty answer, not an error
        info = verbose_info(image) if request.verbose else {}
        return pb.ImageStatusResponse(image=self._image_pb.get(image.id, image), info=info)

    async def _images_of(self, f: pb.ImageFilter | None) -> list[pb.Image]:
        wanted = f.image.image if f is not None and f.HasField("image") else ""
        images = await self._images.list(wanted or None)
        if not wanted:
            self._image_pb.retain({i.id for i in images})
        return [self._image_pb.get(i.id, i) for i in images]

    async def ListImages(self, request: pb.ListImagesRequest, context: Ctx) -> pb.ListImagesResponse:
        images = await self._images_of(request.filter if request.HasField("filter") else None)
        return within_limit(pb.ListImagesResponse(images=images), "ListImages", "StreamImages")

    async def StreamImages(
        self, request: pb.StreamImagesRequest, context: Ctx
    ) -> AsyncIterator[pb.StreamImagesResponse]:
        """ListImages' answer in bounded chunks (``cri_shim.api.chunks``)."""
        images = await self._images_of(request.filter if request.HasField("filter") else None)
        for batch in chunks(images):
            yield pb.StreamImagesResponse(images=batch)

    async def RemoveImage(self, request: pb.RemoveImageRequest, context: Ctx) -> pb.RemoveImageResponse:
        name = _image_name(request.image, "RemoveImage")
        await self._images.remove(name)  # CRI: removing an absent image succeeds
        return pb.RemoveImageResponse()

    async def ImageFsInfo(self, request: pb.ImageFsInfoRequest, context: Ctx) -> pb.ImageFsInfoResponse:
        info = await self._images.fs_info()
        return pb.ImageFsInfoResponse(
            image_filesystems=[fs_usage_to_pb(u) for u in info.image_filesystems],
            container_filesystems=[fs_usage_to_pb(u) for u in info.container_filesystems],
        )
