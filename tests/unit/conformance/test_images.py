"""The critest stand-in images: names, users, layouts, the helper scripts they carry, the
registry paths they are pushed to, the registries.conf rewrites, and the skip list."""

from __future__ import annotations

import io
import json
import subprocess
import tarfile
from pathlib import Path

import pytest

from tests.conformance import critest, images
from tests.support import imagebuilder as ib

pytestmark = pytest.mark.timeout(60)

E2E, STAGING = images.E2E, images.STAGING


@pytest.fixture(scope="module")
def built() -> dict[str, ib.BuiltImage]:
    return images.critest_images()


def members(image: ib.BuiltImage) -> dict[str, tuple[tarfile.TarInfo, bytes]]:
    out = {}
    for layer in image.layers:
        with tarfile.open(fileobj=io.BytesIO(layer.data), mode="r:*") as tf:
            for m in tf.getmembers():
                f = tf.extractfile(m) if m.isfile() else None
                out[m.name] = (m, f.read() if f else b"")
    return out


def config(image: ib.BuiltImage) -> dict[str, object]:
    cfg: dict[str, object] = json.loads(image.config.data)["config"]
    return cfg


def test_every_reference_critest_pulls(built: dict[str, ib.BuiltImage]) -> None:
    arch = ib.host_arch()
    assert set(built) == {
        E2E + "busybox:1.29-2", E2E + "nginx:1.14-2", E2E + "httpd:2.4.39-4", E2E + "nonewprivs:1.3",
        "registry.k8s.io/pause:3.9", "k8s.gcr.io/pause:3.9", STAGING + f"hostnet-nginx-{arch}:latest",
        *(STAGING + f"test-image-user-{u}:latest" for u in ("uid", "username", "uid-group", "username-group")),
        STAGING + "test-image-predefined-group:latest", STAGING + "test-image-latest:latest",
        STAGING + "test-image-tag:test", STAGING + "test-image-tag:all",
        *(STAGING + f"test-image-{i}:latest" for i in (1, 2, 3)),
        *(STAGING + f"test-image-tags:{i}" for i in (1, 2, 3)),
    }
    same = {built[STAGING + f"test-image-tags:{i}"].id for i in (1, 2, 3)}
    different = {built[STAGING + f"test-image-{i}:latest"].id for i in (1, 2, 3)}
    assert len(same) == 1 and len(different) == 3
    assert built["registry.k8s.io/pause:3.9"].id == built["k8s.gcr.io/pause:3.9"].id


def test_users_and_groups(built: dict[str, ib.BuiltImage]) -> None:
    users = {ref.rsplit("/", 1)[1]: config(img).get("User") for ref, img in built.items()}
    assert users["test-image-user-uid:latest"] == "1002"
    assert users["test-image-user-username:latest"] == "www-data"
    assert users["test-image-user-uid-group:latest"] == "1003:users"
    assert users["test-image-user-username-group:latest"] == "www-data:users"
    assert users["test-image-predefined-group:latest"] == "1000"
    files = members(built[STAGING + "test-image-predefined-group:latest"])
    assert b"default-user:x:1000:1000:" in files["etc/passwd"][1]
    assert b"\ngroup-defined-in-image:x:50000:default-user\n" in files["etc/group"][1]
    default = members(built[E2E + "busybox:1.29-2"])
    assert b"\nnobody:x:65534:65534:" in default["etc/passwd"][1]
    assert b"\nwww-data:x:33:\n" in default["etc/group"][1] and b"\nusers:x:100:\n" in default["etc/group"][1]


def test_default_image_execs_its_applets(built: dict[str, ib.BuiltImage]) -> None:
    files = members(built[E2E + "busybox:1.29-2"])
    busybox = files["bin/busybox"][1]
    assert busybox != ib.BUSYBOX.read_bytes()  # Debian's dynamically linked one
    ls, _ = files["bin/ls"]
    assert ls.islnk() and ls.linkname == "bin/busybox" and ls.mode == 0o755  # a hard link: masking it masks ls
    assert any(name.endswith("libc.so.6") for name in files)
    for script in ("bin/ipcs", "bin/pgrep"):
        assert files[script][0].mode == 0o755 and files[script][1].startswith(b"#!/bin/sh\n")


def test_web_servers_and_helpers(built: dict[str, ib.BuiltImage]) -> None:
    assert config(built[E2E + "nginx:1.14-2"])["Cmd"] == ["nginx", "-g", "daemon off;"]
    assert "master process" in members(built[E2E + "nginx:1.14-2"])["usr/sbin/nginx"][1].decode()
    assert config(built[STAGING + f"hostnet-nginx-{ib.host_arch()}:latest"])["ExposedPorts"] == {"12003/tcp": {}}
    assert config(built[E2E + "httpd:2.4.39-4"])["Cmd"] == ["httpd-foreground"]
    nnp = members(built[E2E + "nonewprivs:1.3"])
    assert nnp["usr/local/suid/busybox"][0].mode == 0o4755 and nnp["etc/busybox.conf"][0].uid == 0
    assert config(built["registry.k8s.io/pause:3.9"])["Entrypoint"] == ["/pause"]


def test_pgrep_and_ipcs_scripts_run_under_busybox(tmp_path: Path) -> None:
    pgrep = tmp_path / "pgrep"
    pgrep.write_text(images.PGREP)
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        out = subprocess.run([str(ib.BUSYBOX), "sh", str(pgrep), "^sleep$"], capture_output=True, text=True,
                             timeout=20)
        assert str(sleeper.pid) in out.stdout.split() and out.returncode == 0
        none = subprocess.run([str(ib.BUSYBOX), "sh", str(pgrep), "^no-such-process$"], capture_output=True,
                              text=True, timeout=20)
        assert (none.stdout, none.returncode) == ("", 1)
    finally:
        sleeper.kill()
        sleeper.wait()
    ipcs = tmp_path / "ipcs"
    ipcs.write_text(images.IPCS)
    out = subprocess.run([str(ib.BUSYBOX), "sh", str(ipcs), "-m"], capture_output=True, text=True, timeout=20)
    assert out.returncode == 0 and "Shared Memory Segments" in out.stdout


def test_registry_paths_and_rewrites() -> None:
    assert images.split_reference(E2E + "busybox:1.29-2") == ("registry.k8s.io", "e2e-test-images/busybox",
                                                              "1.29-2")
    conf = images.registries_conf("127.0.0.1:5000")
    assert conf.count("[[registry]]") == len(images.UPSTREAM_REGISTRIES) == 3
    assert 'prefix = "gcr.io"\nlocation = "127.0.0.1:5000"' in conf and "mirror" not in conf


def test_skip_list_has_a_reason_for_every_entry(tmp_path: Path) -> None:
    entries = critest.skip_entries()
    assert entries and all(e.pattern and e.reason for e in entries)
    bad = tmp_path / "skip.txt"
    bad.write_text(critest.SKIP_FILE.read_text() + "some spec without a reason\n")
    with pytest.raises(ValueError):
        critest.skip_entries(bad)


def test_readme_lists_every_skip_with_its_reason() -> None:
    readme = (critest.REPO / "README.md").read_text()
    section = readme[readme.index("**Skip list**"):]
    table = section[section.index("\n|"):section.index("\n\n", section.index("\n|"))].strip().splitlines()
    rows = table[2:]  # after the header and the |---| line
    entries = critest.skip_entries()
    assert len(rows) == len(entries)
    for e in entries:
        assert any(row.endswith(f"| {e.reason} |") for row in rows), e.reason
