"""image.pinned_images: ListImages and ImageStatus say ``pinned`` (kubelet's image GC keeps
those images), RemoveImage still removes a pinned image (CRI: "the runtime must oblige")."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from cri_shim.api.gen import api_pb2 as pb
from tests.support import imagebuilder as ib
from tests.support.daemon import running_daemon
from tests.support.names import unique
from tests.support.registry import Registry, running_registry

pytestmark = [pytest.mark.service, pytest.mark.peers, pytest.mark.root, pytest.mark.timeout(180)]


def tiny_image(text: str) -> ib.BuiltImage:
    return ib.build_image([ib.Layer().file("hello.txt", text)], config={"Cmd": ["/hello"]})


@pytest.fixture(scope="module")
def reg(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    with running_registry(tmp_path_factory.mktemp("reg")) as r:
        yield r


def spec(ref: str) -> pb.ImageSpec:
    return pb.ImageSpec(image=ref)


def test_pinned_flag_in_list_and_status_and_remove_obliges(tmp_path: Path, reg: Registry) -> None:
    ns = unique("pin")
    exact, globbed, keyword, free = (f"{ns}/exact", f"{ns}/glob/app", f"{ns}/any-keepme-x", f"{ns}/free")
    images = {name: tiny_image(name) for name in (exact, globbed, keyword, free)}
    for name, img in images.items():
        reg.push(name, "v1", img)
    pins = [reg.ref(exact, "v1"), f"{reg.host}/{ns}/glob/*", "*KEEPME*"]
    config = "[image]\npinned_images = [" + ", ".join(f'"{p}"' for p in pins) + "]\n"
    with running_daemon(tmp_path / "d", extra_config=config) as d:
        for name in images:
            d.images.PullImage(pb.PullImageRequest(image=spec(reg.ref(name, "v1"))), timeout=60)
        listed = {i.id: i.pinned for i in d.images.ListImages(pb.ListImagesRequest(), timeout=10).images}
        assert listed == {images[exact].id: True, images[globbed].id: True, images[keyword].id: True,
                          images[free].id: False}
        for name, pinned in ((exact, True), (globbed, True), (keyword, True), (free, False)):
            by_ref = d.images.ImageStatus(pb.ImageStatusRequest(image=spec(reg.ref(name, "v1"))), timeout=10)
            by_id = d.images.ImageStatus(pb.ImageStatusRequest(image=spec(images[name].id)), timeout=10)
            assert (by_ref.image.pinned, by_id.image.pinned) == (pinned, pinned), name
        # kubelet's GC skips pinned images, but an explicit RemoveImage must still remove one.
        d.images.RemoveImage(pb.RemoveImageRequest(image=spec(reg.ref(exact, "v1"))), timeout=30)
        gone = d.images.ImageStatus(pb.ImageStatusRequest(image=spec(images[exact].id)), timeout=10)
        assert not gone.HasField("image")
        assert images[exact].id not in {i.id for i in d.images.ListImages(pb.ListImagesRequest(), timeout=10).images}
