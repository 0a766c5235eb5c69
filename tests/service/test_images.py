"""The CRI image service in a real daemon, driven by real crictl and the generated client."""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest

from cri_shim.api.gen import api_pb2 as pb
from tests.support import imagebuilder as ib
from tests.support.daemon import CRICTL, DaemonProcess, running_daemon
from tests.support.names import unique
from tests.support.registry import Registry, free_port, rewrite_conf, running_registry

pytestmark = [pytest.mark.service, pytest.mark.peers, pytest.mark.root, pytest.mark.timeout(180)]


@pytest.fixture(scope="module")
def reg(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    with running_registry(tmp_path_factory.mktemp("reg")) as r:
        yield r


@pytest.fixture
def conf(tmp_path: Path) -> Path:
    p = tmp_path / "registries.conf"
    p.write_text("")
    return p


@pytest.fixture
def d(tmp_path: Path, conf: Path) -> Iterator[DaemonProcess]:
    # No grace period: RemoveImage's content goes as soon as the background collector runs.
    extra = f'[image]\nregistries_config = "{conf}"\ngc_grace_period = 0.0\n'
    with running_daemon(tmp_path / "d", extra_config=extra) as dm:
        yield dm


def eventually(check: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.05)


def layer_dirs(dm: DaemonProcess) -> list[str]:
    return sorted(p for p in os.listdir(dm.root / "images/layers") if p != "empty")


def inspect(dm: DaemonProcess, ref: str) -> dict[str, object]:
    out: dict[str, object] = json.loads(dm.crictl("inspecti", "-o", "json", ref).stdout)
    return out


def test_crictl_pull_images_inspecti_rmi_imagefsinfo(d: DaemonProcess, reg: Registry) -> None:
    name = f"test/{unique('m')}"
    img = ib.multi_layer_image()
    digest = reg.push(name, "v1", img)
    ref = reg.ref(name, "v1")
    out = d.crictl("pull", ref).stdout
    assert img.id in out
    listed = json.loads(d.crictl("images", "-o", "json").stdout)["images"]
    assert [(i["id"], i["repoTags"], i["repoDigests"]) for i in listed] == [
        (img.id, [ref], [f"{reg.host}/{name}@{digest}"])]
    assert f"{reg.host}/{name}" in d.crictl("images").stdout
    status = inspect(d, ref)
    assert status["status"]["id"] == img.id  # type: ignore[index]
    assert int(status["status"]["size"]) > 0  # type: ignore[index]
    info = status["info"]
    spec = info["imageSpec"] if "imageSpec" in info else json.loads(info["info"])["imageSpec"]  # type: ignore[index,operator]
    assert spec["config"]["WorkingDir"] == "/opt"
    assert spec["rootfs"]["diff_ids"] == list(img.diff_ids)
    assert inspect(d, img.id[7:19])["status"]["id"] == img.id  # type: ignore[index]
    fs = json.loads(d.crictl("imagefsinfo", "-o", "json").stdout)["status"]
    assert fs["imageFilesystems"][0]["fsId"]["mountpoint"] == str(d.root / "images")
    assert int(fs["imageFilesystems"][0]["usedBytes"]["value"]) > 2_000_000
    assert fs["containerFilesystems"][0]["fsId"]["mountpoint"] == str(d.root / "images/containers")
    d.crictl("rmi", ref)
    assert json.loads(d.crictl("images", "-o", "json").stdout)["images"] == []
    eventually(lambda: layer_dirs(d) == [] and list((d.root / "images/content/blobs/sha256").iterdir()) == [])


def test_crictl_short_name_rewrite_and_mirror(d: DaemonProcess, reg: Registry, conf: Path) -> None:
    name = unique("bb")
    img = ib.busybox_image(config={"Labels": {"n": name}})
    reg.push(f"library/{name}", "latest", img)
    dead = f"127.0.0.1:{free_port()}"
    conf.write_text(rewrite_conf({"docker.io/library": f"{reg.host}/library"},
                                 mirrors={"mirrored.test": (f"{dead}/library", [f"{reg.host}/library"])}))
    d.crictl("pull", name)
    assert inspect(d, name)["status"]["repoTags"] == [f"docker.io/library/{name}:latest"]  # type: ignore[index]
    d.crictl("pull", f"mirrored.test/{name}:latest")
    status = inspect(d, f"mirrored.test/{name}")["status"]
    assert status["id"] == img.id  # type: ignore[index]
    assert sorted(status["repoTags"]) == sorted(  # type: ignore[index]
        [f"docker.io/library/{name}:latest", f"mirrored.test/{name}:latest"])
    d.crictl("rmi", img.id)
    assert json.loads(d.crictl("images", "-o", "json").stdout)["images"] == []


def test_second_image_extracts_only_its_own_layers(d: DaemonProcess, reg: Registry) -> None:
    name = f"test/{unique('s')}"
    middle = ib.Layer().dir("shared").file("shared/f", "shared\n")
    a = ib.build_image([ib.busybox_layer(), middle, ib.Layer().file("a", "a")])
    b = ib.build_image([ib.busybox_layer(), middle, ib.Layer().file("b", "b")])
    reg.push(name, "a", a)
    reg.push(name, "b", b)
    d.crictl("pull", reg.ref(name, "a"))
    first = layer_dirs(d)
    assert len(first) == 3
    d.crictl("pull", reg.ref(name, "b"))
    second = layer_dirs(d)
    assert len(second) == 4 and set(first) < set(second)
    assert b.layers[2].digest[7:] in os.listdir(d.root / "images/content/blobs/sha256")
    d.crictl("rmi", reg.ref(name, "a"))
    eventually(lambda: len(layer_dirs(d)) == 3)


def test_crictl_creds_basic_and_token(d: DaemonProcess, tmp_path: Path) -> None:
    for mode in ("htpasswd", "token"):
        with running_registry(tmp_path, auth=mode) as areg:  # type: ignore[arg-type]
            img = ib.busybox_image(config={"Labels": {"auth": mode}})
            areg.push("private/bb", "v1", img)
            ref = areg.ref("private/bb", "v1")
            denied = d.crictl("pull", ref, check=False)
            assert denied.returncode != 0 and "PermissionDenied" in denied.stderr
            d.crictl("pull", "--creds", f"{areg.username}:{areg.password}", ref)
            assert inspect(d, ref)["status"]["id"] == img.id  # type: ignore[index]


def test_grpc_semantics(d: DaemonProcess, reg: Registry) -> None:
    images = d.images
    empty = images.ImageStatus(pb.ImageStatusRequest(image=pb.ImageSpec(image="absent:1")), timeout=10)
    assert not empty.HasField("image")
    images.RemoveImage(pb.RemoveImageRequest(image=pb.ImageSpec(image="absent:1")), timeout=10)
    with pytest.raises(grpc.RpcError) as err:
        images.PullImage(pb.PullImageRequest(image=pb.ImageSpec(image="Not Valid")), timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as err:
        images.PullImage(pb.PullImageRequest(image=pb.ImageSpec(image=reg.ref("test/none", "x"))), timeout=30)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    name = f"test/{unique('u')}"
    img = ib.user_image("1000:2000")
    reg.push(name, "v1", img)
    resp = images.PullImage(pb.PullImageRequest(image=pb.ImageSpec(image=reg.ref(name, "v1"))), timeout=60)
    assert resp.image_ref == img.id
    st = images.ImageStatus(pb.ImageStatusRequest(image=pb.ImageSpec(image=img.id), verbose=True), timeout=10)
    assert st.image.uid.value == 1000 and st.image.username == ""
    assert json.loads(st.info["info"])["imageSpec"]["config"]["User"] == "1000:2000"
    named = ib.user_image("app")
    reg.push(name, "v2", named)
    images.PullImage(pb.PullImageRequest(image=pb.ImageSpec(image=reg.ref(name, "v2"))), timeout=60)
    st = images.ImageStatus(pb.ImageStatusRequest(image=pb.ImageSpec(image=reg.ref(name, "v2"))), timeout=10)
    assert st.image.username == "app" and not st.image.HasField("uid")
    listed = images.ListImages(pb.ListImagesRequest(filter=pb.ImageFilter(image=pb.ImageSpec(
        image=reg.ref(name, "v1")))), timeout=10)
    assert [i.id for i in listed.images] == [img.id]
    assert len(images.ListImages(pb.ListImagesRequest(), timeout=10).images) == 2


def test_kill9_during_pull_then_pull_again(tmp_path: Path, reg: Registry, conf: Path) -> None:
    name = f"test/{unique('k')}"
    big = [ib.Layer().file(f"big{i}", os.urandom(40 << 20)) for i in range(3)]
    img = ib.build_image([ib.busybox_layer(), *big], compression="none")
    reg.push(name, "v1", img)
    ref = reg.ref(name, "v1")
    with running_daemon(tmp_path / "d", extra_config=f'[image]\nregistries_config = "{conf}"\n') as dm:
        ingest = dm.root / "images/content/ingest"
        layers = dm.root / "images/layers"
        pull = subprocess.Popen([CRICTL, "--image-endpoint", dm.endpoint, "--runtime-endpoint", dm.endpoint,
                                 "pull", ref], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                busy = any(size > 0 for size in _sizes(ingest)) or (
                    layers.is_dir() and len(os.listdir(layers)) > 2)
                if busy:
                    break
                time.sleep(0.005)
            else:
                pytest.fail("the pull never started writing")
            dm.kill9()
            assert pull.wait(30) != 0
        finally:
            if pull.poll() is None:
                pull.kill()
                pull.wait()
        dm.start()
        # After recovery: no temp blobs, no half-made or unreferenced snapshots, no orphan blobs.
        assert list(ingest.iterdir()) == []
        assert layer_dirs(dm) == []
        assert list((dm.root / "images/content/blobs/sha256").iterdir()) == []
        dm.crictl("pull", ref)
        assert inspect(dm, ref)["status"]["id"] == img.id  # type: ignore[index]
        db = sqlite3.connect(dm.root / "meta.db")
        try:
            ready = {r[0] for r in db.execute("SELECT snapshot FROM layers WHERE state='ready'")}
            referenced = {r[0] for r in db.execute("SELECT digest FROM image_blobs")}
            assert db.execute("SELECT COUNT(*) FROM layers WHERE state!='ready'").fetchone()[0] == 0
        finally:
            db.close()
        assert set(layer_dirs(dm)) == ready and len(ready) == 4
        on_disk = {"sha256:" + p.name for p in (dm.root / "images/content/blobs/sha256").iterdir()}
        assert on_disk == referenced


def test_cli_import_and_ls_next_to_running_daemon(d: DaemonProcess, tmp_path: Path) -> None:
    multi, httpd = ib.multi_layer_image(), ib.httpd_image()
    ib.write_oci_archive(tmp_path / "oci.tar", {"docker.io/library/offline:1": multi})
    ib.write_docker_archive(tmp_path / "saved.tar", {"example.com/web:2": httpd})
    cli = [sys.executable, "-m", "cri_shim", "--config", str(d.config_path), "image"]
    for archive in ("oci.tar", "saved.tar"):
        res = subprocess.run([*cli, "import", str(tmp_path / archive)], capture_output=True, text=True, timeout=60)
        assert res.returncode == 0, res.stderr
    assert "imported docker.io/library/offline:1" in res.stdout or "imported example.com/web:2" in res.stdout
    listed = json.loads(d.crictl("images", "-o", "json").stdout)["images"]
    assert {i["id"]: i["repoTags"] for i in listed} == {
        multi.id: ["docker.io/library/offline:1"], httpd.id: ["example.com/web:2"]}
    ls = subprocess.run([*cli, "ls"], capture_output=True, text=True, timeout=60)
    assert ls.returncode == 0 and "offline" in ls.stdout and "example.com/web" in ls.stdout
    quiet = subprocess.run([*cli, "ls", "-q"], capture_output=True, text=True, timeout=60).stdout.split()
    assert sorted(quiet) == sorted([multi.id, httpd.id])
    bad = subprocess.run([*cli, "import", str(tmp_path / "absent.tar")], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1 and "does not exist" in bad.stderr


def _sizes(directory: Path) -> list[int]:
    """Sizes of the files in ``directory``, skipping those the pull renames or removes
    between the listing and the stat (a race, not a failure)."""
    sizes = []
    with contextlib.suppress(FileNotFoundError):
        for p in directory.iterdir():
            with contextlib.suppress(FileNotFoundError):
                sizes.append(p.stat().st_size)
    return sizes
