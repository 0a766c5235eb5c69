"""ImageService against a real docker-registry: pulls, names, sharing, removal, recovery."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import sqlite3
import tarfile
import time
from pathlib import Path

import pytest

from runtime.errors import DeadlineExceeded, InvalidArgument, NotFound, PermissionDenied
from runtime.image.applier import LayerRejected
from runtime.image.auth import RegistryAuth
from runtime.image.content import owner_tag
from tests.root.image.conftest import Env
from tests.support import imagebuilder as ib
from tests.support.names import unique
from tests.support.registry import Registry, free_port, rewrite_conf, running_registry

pytestmark = [pytest.mark.root, pytest.mark.peers, pytest.mark.timeout(120)]


def repo() -> str:
    return f"test/{unique('r')}"


def layered(extra: ib.Layer | None = None, tag: str = "") -> ib.BuiltImage:
    """busybox + a shared middle layer + an optional own layer."""
    middle = ib.Layer().dir("shared").file("shared/file", "shared content\n")
    layers = [ib.busybox_layer(), middle] + ([extra] if extra is not None else [])
    return ib.build_image(layers, config={"Cmd": ["sh"], "Labels": {"t": tag}})


async def test_pull_names_and_lookups(env: Env, reg: Registry) -> None:
    name = repo()
    img = ib.multi_layer_image()
    digest = reg.push(name, "v1", img)
    image = await env.service.pull(reg.ref(name, "v1"))
    assert image.id == img.id
    assert image.chain_ids == img.chain_ids
    assert image.repo_tags == (f"{reg.host}/{name}:v1",)
    assert image.repo_digests == (f"{reg.host}/{name}@{digest}",)
    assert image.config.working_dir == "/opt" and image.config.cmd == ("sh",)
    assert image.size > len(ib.BUSYBOX.read_bytes())
    for form in (img.id, img.id[7:], img.id[7:19], f"{reg.host}/{name}:v1", f"{reg.host}/{name}@{digest}",
                 f"{reg.host}/{name}:other@{digest}"):
        found = await env.service.status(form)
        assert found is not None and found.id == img.id, form
    assert await env.service.status(f"{reg.host}/{name}:v2") is None
    assert [i.id for i in await env.service.list()] == [img.id]
    assert [i.id for i in await env.service.list(f"{reg.host}/{name}:v1")] == [img.id]
    assert await env.service.list(f"{reg.host}/{name}:nope") == []
    assert len(env.layer_dirs()) == 4
    report = env.recorder.finished[-1]
    assert (report.result, report.layers_total, report.layers_reused) == ("success", 4, 0)
    assert report.bytes_downloaded == sum(b.size for b in img.layers)
    with pytest.raises(NotFound):
        await env.service.get("sha256:" + "0" * 64)


async def test_short_name_by_location_rewrite_and_pull_by_digest(env: Env, reg: Registry) -> None:
    name = unique("bb")
    img = ib.busybox_image()
    digest = reg.push(f"library/{name}", "latest", img)
    env.conf.write_text(rewrite_conf({"docker.io/library": f"{reg.host}/library"}))
    image = await env.service.pull(name)
    assert image.repo_tags == (f"docker.io/library/{name}:latest",)
    assert image.repo_digests == (f"docker.io/library/{name}@{digest}",)
    by_digest = await env.service.pull(f"{name}@{digest}")
    assert by_digest.id == img.id and by_digest.repo_tags == image.repo_tags
    assert (await env.service.get(name)).repo_tags == (f"docker.io/library/{name}:latest",)


async def test_mirror_first_then_primary(env: Env, reg: Registry, tmp_path: Path) -> None:
    name = unique("m")
    img = ib.busybox_image(config={"Labels": {"n": name}})
    reg.push(name, "latest", img)
    dead = f"127.0.0.1:{free_port()}"
    env.conf.write_text(rewrite_conf({}, mirrors={"mirrored.test": (dead, [reg.host])}))
    image = await env.service.pull(f"mirrored.test/{name}")
    assert image.id == img.id
    assert image.repo_tags == (f"mirrored.test/{name}:latest",)
    assert env.recorder.finished[-1].source == f"{reg.host}/{name} (mirror)"
    # A mirror without the image: the primary location serves it.
    with running_registry(tmp_path) as empty:
        env.conf.write_text(rewrite_conf({}, mirrors={"other.test": (reg.host, [empty.host])}))
        image = await env.service.pull(f"other.test/{name}")
        assert image.id == img.id
        assert env.recorder.finished[-1].source == f"{reg.host}/{name}"


@pytest.mark.parametrize("fmt", ["oci", "docker"])
async def test_index_picks_host_platform(env: Env, reg: Registry, fmt: ib.Format) -> None:
    name = repo()
    mine = ib.build_image([ib.busybox_layer()], fmt=fmt, config={"Labels": {"arch": "host"}})
    other_arch = "arm64" if ib.host_arch() != "arm64" else "amd64"
    other = ib.build_image([ib.Layer().file("other", "x")], fmt=fmt, architecture=other_arch)
    attestation = ib.build_image([ib.Layer().file("att", "x")], os_name="unknown", architecture="unknown")
    index = ib.build_index([other, mine] + ([attestation] if fmt == "oci" else []), fmt=fmt)
    digest = reg.push(name, "multi", index)
    image = await env.service.pull(reg.ref(name, "multi"))
    assert image.id == mine.id
    assert image.manifest_digest == mine.digest
    assert image.repo_digests == (f"{reg.host}/{name}@{digest}",)
    assert json.loads(image.config_json)["config"]["Labels"] == {"arch": "host"}


async def test_second_image_downloads_and_extracts_only_its_own_layers(env: Env, reg: Registry) -> None:
    name = repo()
    a = layered(ib.Layer().file("a", "a"), "a")
    b = layered(ib.Layer().file("b", "b"), "b")
    reg.push(name, "a", a)
    reg.push(name, "b", b)
    await env.service.pull(reg.ref(name, "a"))
    assert len(env.layer_dirs()) == 3
    await env.service.pull(reg.ref(name, "b"))
    report = env.recorder.finished[-1]
    assert (report.layers_total, report.layers_reused) == (3, 2)
    assert report.bytes_downloaded == b.layers[2].size
    assert len(env.layer_dirs()) == 4
    # Removing A frees only its own top layer; B keeps the shared ones.
    await env.service.remove(reg.ref(name, "a"))
    await env.collected()
    assert len(env.layer_dirs()) == 3
    assert a.layers[2].digest not in env.blobs() and b.layers[0].digest in env.blobs()


async def test_concurrent_pulls_share_one_download(env: Env, reg: Registry) -> None:
    name = repo()
    img = ib.multi_layer_image(big_files=4, big_size=1 << 20)
    other = layered(ib.Layer().file("x", "y"), "other")
    reg.push(name, "v1", img)
    reg.push(name, "other", other)
    results = await asyncio.gather(
        *(env.service.pull(reg.ref(name, "v1")) for _ in range(5)), env.service.pull(reg.ref(name, "other"))
    )
    assert {r.id for r in results[:5]} == {img.id}
    assert env.recorder.started.count(f"{reg.host}/{name}:v1") == 1
    # busybox base layer is shared by both images: extracted once.
    assert len(env.layer_dirs()) == 4 + 2


async def test_cancelled_caller_does_not_cancel_shared_pull(env: Env, reg: Registry) -> None:
    name = repo()
    img = ib.multi_layer_image(big_files=8, big_size=1 << 20)
    reg.push(name, "v1", img)
    first = asyncio.create_task(env.service.pull(reg.ref(name, "v1")))
    await asyncio.sleep(0.01)
    second = asyncio.create_task(env.service.pull(reg.ref(name, "v1")))
    await asyncio.sleep(0.02)
    first.cancel()
    assert (await second).id == img.id


async def test_basic_auth_registry(env: Env, tmp_path: Path) -> None:
    with running_registry(tmp_path, auth="htpasswd") as areg:
        img = ib.busybox_image()
        areg.push("private/bb", "v1", img)
        ref = areg.ref("private/bb", "v1")
        with pytest.raises(PermissionDenied, match="requires credentials"):
            await env.service.pull(ref)
        with pytest.raises(PermissionDenied):
            await env.service.pull(ref, RegistryAuth(username=areg.username, password="wrong"))
        with pytest.raises(PermissionDenied):  # credentials for another registry are not sent
            await env.service.pull(ref, RegistryAuth(username=areg.username, password=areg.password,
                                                     server_address="elsewhere.example"))
        auth = base64.b64encode(f"{areg.username}:{areg.password}".encode()).decode()
        image = await env.service.pull(ref, RegistryAuth(auth=auth, server_address=areg.host))
        assert image.id == img.id


async def test_token_auth_registry(env: Env, tmp_path: Path) -> None:
    with running_registry(tmp_path, auth="token") as treg:
        assert treg.token_server is not None
        images = {t: ib.busybox_image(config={"Labels": {"t": t}}) for t in ("a", "b", "c", "d")}
        for t, img in images.items():
            treg.push("private/tok", t, img)
        with pytest.raises(PermissionDenied):
            await env.service.pull(treg.ref("private/tok", "a"))
        with pytest.raises(PermissionDenied):
            await env.service.pull(treg.ref("private/tok", "a"), RegistryAuth(username="x", password="y"))
        got = await env.service.pull(treg.ref("private/tok", "a"),
                                     RegistryAuth(username=treg.username, password=treg.password))
        assert got.id == images["a"].id
        got = await env.service.pull(treg.ref("private/tok", "b"),
                                     RegistryAuth(identity_token=treg.token_server.refresh_token))
        assert got.id == images["b"].id
        token = treg.token_server.issue("repository:private/tok:pull", "kubelet")["token"]
        got = await env.service.pull(treg.ref("private/tok", "c"), RegistryAuth(registry_token=token))
        assert got.id == images["c"].id
        # Tokens are cached per scope and credentials: a second pull asks no new token.
        before = treg.token_server.requests
        await env.service.pull(treg.ref("private/tok", "d"), RegistryAuth(username=treg.username,
                                                                          password=treg.password))
        assert treg.token_server.requests == before


async def test_remove_removes_every_tag_and_is_idempotent(env: Env, reg: Registry) -> None:
    name = repo()
    img = ib.busybox_image(config={"Labels": {"n": name}})
    reg.push(name, "v1", img)
    reg.push(name, "v2", img)
    await env.service.pull(reg.ref(name, "v1"))
    image = await env.service.pull(reg.ref(name, "v2"))
    assert set(image.repo_tags) == {reg.ref(name, "v1"), reg.ref(name, "v2")}
    assert await env.service.remove(reg.ref(name, "v1")) is True
    assert await env.service.status(reg.ref(name, "v2")) is None
    assert await env.service.status(img.id) is None
    await env.collected()
    assert env.layer_dirs() == [] and env.blobs() == []
    assert await env.service.remove(reg.ref(name, "v1")) is False
    assert await env.service.remove(img.id) is False


async def test_image_in_use_keeps_content_until_snapshot_removed(env: Env, reg: Registry) -> None:
    name = repo()
    img = ib.multi_layer_image()
    reg.push(name, "v1", img)
    image = await env.service.pull(reg.ref(name, "v1"))
    mount = await env.service.snapshots.prepare("ctr-1", image.id)
    assert len(mount.lowerdirs) == 4 and mount.fits_mount_data
    assert os.path.isdir(mount.upperdir) and os.path.isdir(mount.workdir)  # noqa: ASYNC240
    assert {os.path.basename(p) for p in mount.lowerdirs} == set(env.layer_dirs())
    (Path(mount.upperdir) / "written").write_bytes(b"x" * 10000)
    used, inodes = await env.service.snapshots.usage("ctr-1")
    assert used >= 10000 and inodes >= 2
    await env.service.remove(image.id)
    assert await env.service.list() == []
    assert len(env.layer_dirs()) == 4
    assert (await env.service.snapshots.mounts_for("ctr-1")) == mount
    with pytest.raises(NotFound):
        await env.service.snapshots.prepare("ctr-2", image.id)
    # Pulling it again while hidden brings it back, still the same content.
    again = await env.service.pull(reg.ref(name, "v1"))
    assert again.id == image.id and env.recorder.finished[-1].layers_reused == 4
    await env.service.remove(image.id)
    assert await env.service.snapshots.remove("ctr-1") is True
    assert await env.service.snapshots.remove("ctr-1") is False
    await env.collected()
    assert env.layer_dirs() == [] and env.blobs() == []
    assert os.listdir(env.root / "containers") == []


async def test_hostile_image_refused_store_consistent(env: Env, reg: Registry, tmp_path: Path) -> None:
    name = repo()
    outside = tmp_path / "outside"
    outside.mkdir()
    evil = ib.Layer().symlink("link", str(outside)).file("link/pwned", "x")
    img = ib.build_image([ib.busybox_layer(), evil])
    reg.push(name, "evil", img)
    with pytest.raises(LayerRejected, match="symlink"):
        await env.service.pull(reg.ref(name, "evil"))
    assert os.listdir(outside) == []
    assert await env.service.list() == []
    assert env.layer_dirs() == [] and env.blobs() == []
    assert env.store.read_sync(lambda c: c.execute("SELECT COUNT(*) FROM layers").fetchone()[0]) == 0
    assert env.store.read_sync(lambda c: c.execute("SELECT COUNT(*) FROM leases").fetchone()[0]) == 0
    assert env.recorder.finished[-1].result == "LayerRejected"


async def test_diff_id_mismatch_refused(env: Env, reg: Registry) -> None:
    name = repo()
    good = ib.busybox_image()
    lie = ib.build_image([ib.Layer().file("x", "y")])
    cfg = json.loads(good.config.data)
    cfg["rootfs"]["diff_ids"] = list(lie.diff_ids)
    config = ib.Blob(ib.OCI_CONFIG, json.dumps(cfg).encode())
    manifest = json.loads(good.manifest.data)
    manifest["config"] = config.descriptor()
    tampered = ib.BuiltImage(ib.Blob(ib.OCI_MANIFEST, json.dumps(manifest).encode()), config, good.layers,
                             lie.diff_ids, good.platform)
    reg.push(name, "lie", tampered)
    with pytest.raises(LayerRejected, match="config says"):
        await env.service.pull(reg.ref(name, "lie"))
    assert env.layer_dirs() == []


async def test_missing_image_and_bad_reference(env: Env, reg: Registry) -> None:
    with pytest.raises(NotFound):
        await env.service.pull(reg.ref(repo(), "nope"))
    with pytest.raises(InvalidArgument):
        await env.service.pull("Not A Reference")


async def test_blocked_registry(env: Env, reg: Registry) -> None:
    env.conf.write_text(rewrite_conf({}, blocked=[reg.host]))
    with pytest.raises(PermissionDenied, match="blocked"):
        await env.service.pull(reg.ref("any/thing", "v1"))


async def test_no_progress_timeout(env: Env) -> None:
    async def stall(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(30)
        writer.close()

    server = await asyncio.start_server(stall, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    await env.restart(pull_progress_timeout=0.5)
    try:
        started = time.monotonic()
        with pytest.raises(DeadlineExceeded, match="no progress"):
            await env.service.pull(f"127.0.0.1:{port}/stuck/image:v1")
        assert time.monotonic() - started < 5
        assert env.recorder.finished[-1].result == "DeadlineExceeded"
    finally:
        server.close()


async def test_recover_removes_leftovers(env: Env, reg: Registry) -> None:
    name = repo()
    img = ib.busybox_image(config={"Labels": {"n": name}})
    reg.push(name, "v1", img)
    await env.service.pull(reg.ref(name, "v1"))
    dead = "1.1"  # pid 1 never has start time 1
    (env.root / "content/ingest" / f"{dead}-abc").write_bytes(b"partial")
    (env.root / "layers/lhalfmade").mkdir()
    (env.root / "layers/lhalfmade/file").write_text("x")
    (env.root / "layers/lstray").mkdir()
    (env.root / "containers/cstray").mkdir()
    orphan = b"orphan blob"
    env.service.content.write(ib.digest_of(orphan), orphan)

    def leftovers(c: sqlite3.Connection) -> None:
        c.execute("INSERT INTO layers(chain_id, snapshot, diff_id, state, owner, created_at)"
                  " VALUES ('sha256:half', 'lhalfmade', 'sha256:half', 'extracting', ?, 0)", (dead,))
        c.execute("INSERT INTO leases(owner, kind, value, created_at) VALUES (?, 'blob', ?, 0)",
                  (f"{dead}/x", ib.digest_of(orphan)))

    env.store.write_sync(leftovers)
    await env.restart()
    removed = await env.service.recover()
    assert removed >= 5
    assert os.listdir(env.root / "content/ingest") == []
    assert len(env.layer_dirs()) == 1 and os.listdir(env.root / "containers") == []
    assert ib.digest_of(orphan) not in env.blobs()
    assert (await env.service.get(reg.ref(name, "v1"))).id == img.id
    assert await env.service.recover() == 0


async def test_import_archives(env: Env, tmp_path: Path) -> None:
    multi, bb, httpd = ib.multi_layer_image(), ib.busybox_image(), ib.httpd_image()
    index = ib.build_index([bb])
    ib.write_oci_archive(tmp_path / "oci.tar", {"docker.io/library/multi:1": multi, "example.com/x/bb:2": index})
    ib.write_docker_archive(tmp_path / "docker.tar", {"saved:3": httpd})
    got = await env.service.import_archive(tmp_path / "oci.tar")
    assert [(i.id, i.repo_tags) for i in got] == [
        (multi.id, ("docker.io/library/multi:1",)), (bb.id, ("example.com/x/bb:2",))]
    got = await env.service.import_archive(tmp_path / "docker.tar")
    assert [(i.id, i.repo_tags) for i in got] == [(httpd.id, ("docker.io/library/saved:3",))]
    assert (await env.service.get("saved:3")).config.exposed_ports == ("80/tcp",)
    mount = await env.service.snapshots.prepare("imported", httpd.id)
    assert len(mount.lowerdirs) == 2
    bad = tmp_path / "bad.tar"
    with tarfile.open(bad, "w") as tf:
        info = tarfile.TarInfo("hello")
        tf.addfile(info)
    with pytest.raises(InvalidArgument):
        await env.service.import_archive(bad)
    with pytest.raises(NotFound):
        await env.service.import_archive(tmp_path / "absent.tar")


async def test_fs_info(env: Env, reg: Registry) -> None:
    name = repo()
    reg.push(name, "v1", ib.multi_layer_image())
    before = await env.service.fs_info()
    await env.service.pull(reg.ref(name, "v1"))
    after = await env.service.fs_info()
    (img_fs,), (ctr_fs,) = after.image_filesystems, after.container_filesystems
    assert img_fs.mountpoint == str(env.root) and ctr_fs.mountpoint == str(env.root / "containers")
    assert img_fs.used_bytes > before.image_filesystems[0].used_bytes + 1_000_000
    assert img_fs.inodes_used > 50
    assert owner_tag()  # the service's owner tag is this process


async def test_tls_registry_on_loopback(env: Env, tmp_path: Path) -> None:
    with running_registry(tmp_path, tls=True) as treg:
        img = ib.busybox_image(config={"Labels": {"tls": "yes"}})
        treg.push("secure/bb", "v1", img)
        image = await env.service.pull(treg.ref("secure/bb", "v1"))
        assert image.id == img.id
        # HTTPS worked, so the client never fell back to plain HTTP for this host.
        assert env.service._client._schemes.get(treg.host, "https") == "https"
