"""The images the upstream e2e conformance suite pulls, built here and pushed to the cluster
registry under their public names (``registry.k8s.io/...``: the nodes' registries.conf maps
that prefix to the cluster registry, with no fallback to the real host).

None is upstream's image; each is made by the project's image tooling from what this machine
has (scripts/cluster-e2e.sh runs ``python scripts/clusterlib/e2eimages.py push``):

- ``agnhost`` (2.66.1, and 2.55 as AgnhostPrev): the agnhost binary built from the
  kubernetes module by ``scripts/cluster-build.sh e2e``, on a busybox rootfs (every applet)
  with the tools the e2e specs run in it: curl, getent, ss and bash (as /bin/sh) from this host, dig and nc
  (netcat-openbsd) from Debian packages ``apt-get download`` fetched into the cache, each with
  the shared libraries ``ldd`` finds. Entrypoint ``/agnhost``, Cmd ``pause``, the
  ``agnhost-2`` link, porter's /localhost.crt and .key, user-defined-in-image (1000) in
  group-defined-in-image (50000), /uploads.
- ``glibc-dns-testing``: the same rootfs (dig and getent are glibc ones here anyway).
- ``busybox`` 1.37.0-2: busybox with every applet, bash as /bin/sh (SHELL_TOOLS says why).
- ``nginx`` 1.27.0-2 and 1.28.0-2: busybox httpd on port 80 serving /usr/share/nginx/html.
- ``pause`` 3.10.2: agnhost's ``pause`` (exits on SIGINT/SIGTERM, as /pause does).
- ``nonewprivs`` 1.4: busybox with nnp (k8s.io/kubernetes/test/images/nonewprivs) set-user-ID
  root at /usr/local/bin/nnp.
- ``nonroot`` 1.5: busybox running as uid 1234; ``kitten``/``nautilus`` 1.8: agnhost
  test-webserver with their files (from the module, as the Dockerfiles COPY them).

The agnhost rootfs has an /etc/os-release naming itself a stand-in for Alpine Linux: the image
volume spec checks kitten's for that string.

Not built (the specs using them are listed as not runnable in the README): sample-apiserver and
etcd (the aggregator spec), the authenticated and invalid registries (blocked in registries.conf).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

if __name__ == "__main__":
    sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parents[2])]

from clusterlib import layout
from tests.support import imagebuilder as ib

E2E_DIR = layout.CACHE / f"e2e-{layout.K8S_VERSION}"
AGNHOST = E2E_DIR / "agnhost"
NNP = E2E_DIR / "nnp"
#: files of upstream's test images (porter's certificate, kitten's and nautilus' pages)
UPSTREAM_FILES = E2E_DIR / "images"
#: Debian packages extracted by scripts/cluster-build.sh e2e (dig, nc)
DEBS_ROOT = E2E_DIR / "debs-root"
UPSTREAM = "registry.k8s.io"
PATH_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

#: host binary -> path in the image: /bin/sh of every image here. Not busybox sh: this host's
#: (1.35) drops environment variables whose names are no shell names (``data-1``, which
#: ConfigMap and Secret envFrom specs give ``sh -c env``; upstream's busybox 1.37 keeps them,
#: as bash does) and runs its own applets before PATH (Debian's build prefers applets), so it
#: would never run agnhost's nc
SHELL_TOOLS = {"/usr/bin/bash": "bin/sh"}
#: host or package binary -> path in the image: agnhost's tools
TOOLS = {
    **SHELL_TOOLS,
    "/usr/bin/curl": "usr/bin/curl",
    "/usr/bin/getent": "usr/bin/getent",
    "/usr/bin/ss": "usr/bin/ss",
    "usr/bin/dig": "usr/bin/dig",
    "bin/nc.openbsd": "usr/bin/nc",
}


def _all_applets(nc: bool = True) -> tuple[str, ...]:
    """Every applet of busybox but sh (SHELL_TOOLS') and, unless ``nc``, nc (netcat-openbsd's:
    -z, -u, -v)."""
    out = subprocess.run([str(ib.BUSYBOX), "--list"], check=True, capture_output=True, text=True).stdout
    skip = {"busybox", "linuxrc", "init", "sh"} | (set() if nc else {"nc"})
    return tuple(a for a in out.split() if a not in skip and "/" not in a)


def _busybox(passwd: tuple[str, str] | None = None, nc: bool = True) -> list[ib.Layer]:
    """busybox with every applet, and bash as /bin/sh (and /bin/bash)."""
    return [ib.busybox_layer(_all_applets(nc), passwd=passwd), tools_layer(SHELL_TOOLS).symlink("bin/bash", "sh")]


def _tool_source(src: str) -> Path:
    return Path(src) if src.startswith("/") else DEBS_ROOT / src


def _libraries(binaries: list[Path]) -> dict[str, Path]:
    """Image path -> file of every shared library (and the loader) the binaries load."""
    libdirs = [str(p) for p in (DEBS_ROOT / "usr/lib/x86_64-linux-gnu", DEBS_ROOT / "lib/x86_64-linux-gnu")
               if p.is_dir()]
    env = dict(os.environ, LD_LIBRARY_PATH=":".join(libdirs))
    out: dict[str, Path] = {}
    for b in binaries:
        text = subprocess.run(["ldd", str(b)], check=True, capture_output=True, text=True, env=env).stdout
        for line in text.splitlines():
            if "not found" in line:
                raise RuntimeError(f"{b}: {line.strip()}")
            m = re.search(r"=>\s*(/\S+)", line) or re.match(r"\s*(/\S+)\s+\(", line)
            if not m:
                continue
            path = Path(m.group(1))
            name = path.name
            # the loader stays where the binaries' PT_INTERP names it; libraries go to the
            # multiarch directory the loader searches by default
            dest = str(path).lstrip("/") if "ld-linux" in name else f"lib/x86_64-linux-gnu/{name}"
            out[dest] = path.resolve()
    return out


def tools_layer(tools: dict[str, str]) -> ib.Layer:
    binaries = [_tool_source(s) for s in tools]
    for b in binaries:
        if not b.exists():
            raise RuntimeError(f"{b} missing: scripts/cluster-build.sh e2e fetches it")
    layer = ib.Layer()
    dirs = {"lib", "lib/x86_64-linux-gnu", "lib64", "usr", "usr/bin", "etc"}
    for d in sorted(dirs):
        layer.dir(d)
    for dest, lib in sorted(_libraries(binaries).items()):
        layer.file(dest, lib.read_bytes(), 0o755)
    for src, dest in tools.items():
        layer.file(dest, _tool_source(src).read_bytes(), 0o755)
    layer.file("etc/nsswitch.conf", "passwd: files\ngroup: files\nhosts: files dns\nservices: files\n")
    return layer


def _passwd() -> tuple[str, str]:
    return ib.passwd_files(users=(("user-defined-in-image", 1000, 1000, "/home/user-defined-in-image"),),
                           groups=(("user-defined-in-image", 1000), ("group-defined-in-image", 50000)),
                           members={"group-defined-in-image": ["user-defined-in-image"]})


def agnhost_image(cmd: list[str] | None = None, extra: ib.Layer | None = None) -> ib.BuiltImage:
    base = ib.busybox_layer(_all_applets(nc=False), passwd=_passwd())
    top = ib.Layer().dir("uploads", 0o777).dir("home/user-defined-in-image", 0o755, 1000, 1000)
    top.file("agnhost", AGNHOST.read_bytes(), 0o755).symlink("agnhost-2", "agnhost")
    for name in ("localhost.crt", "localhost.key"):  # porter's, served by test-webserver
        top.file(name, (UPSTREAM_FILES / "agnhost" / name).read_bytes())
    # The image volume spec reads /etc/os-release of kitten (agnhost's base) for "Alpine Linux"
    top.file("etc/os-release", 'NAME="busybox"\nPRETTY_NAME="busybox rootfs built by cri-shim'
             "'s scripts/cluster-e2e.sh, standing in for Alpine Linux 3.21 (upstream agnhost's base)\"\n")
    layers = [base, tools_layer(TOOLS).symlink("bin/bash", "sh"), top] + ([extra] if extra else [])
    config = {"Entrypoint": ["/agnhost"], "Cmd": cmd or ["pause"], "Env": [PATH_ENV],
              "ExposedPorts": {f"{p}/tcp": {} for p in (80, 8080, 8081, 9376, 5000)}}
    return ib.build_image(layers, config=config, compression="none")


def busybox_image() -> ib.BuiltImage:
    return ib.build_image(_busybox(), config={"Cmd": ["sh"], "Env": [PATH_ENV]})


def nginx_image(version: str) -> ib.BuiltImage:
    html = "usr/share/nginx/html"
    www = ib.Layer().dir("usr/share").dir("usr/share/nginx").dir(html)
    www.file(f"{html}/index.html", f"<html><body>nginx {version} (busybox httpd)</body></html>\n")
    www.dir("var").dir("var/run").dir("etc/nginx")
    return ib.build_image([*_busybox(), www], config={
        "Cmd": ["httpd", "-f", "-p", "80", "-h", f"/{html}"], "Env": [PATH_ENV],
        "ExposedPorts": {"80/tcp": {}}, "StopSignal": "SIGTERM"})


def nonroot_image() -> ib.BuiltImage:
    return ib.build_image(_busybox(),
                          config={"Cmd": ["sh"], "Env": [PATH_ENV], "User": "1234"})


def nonewprivs_image() -> ib.BuiltImage:
    """busybox with nnp (prints its effective uid) set-user-ID root, as upstream's Dockerfile."""
    nnp = ib.Layer().dir("usr/local").dir("usr/local/bin").file("usr/local/bin/nnp", NNP.read_bytes(), 0o4755)
    return ib.build_image([*_busybox(), nnp], config={"Cmd": ["nnp"], "Env": [PATH_ENV]})


def images() -> dict[str, ib.BuiltImage]:
    """Public reference (without the registry) -> image."""
    agnhost = agnhost_image()
    e2e = "e2e-test-images"
    out = {
        f"{e2e}/agnhost:2.66.1": agnhost,
        f"{e2e}/agnhost:2.55": agnhost,
        f"{e2e}/glibc-dns-testing:2.1.1": agnhost,
        f"{e2e}/busybox:1.37.0-2": busybox_image(),
        f"{e2e}/nginx:1.27.0-2": nginx_image("1.27.0"),
        f"{e2e}/nginx:1.28.0-2": nginx_image("1.28.0"),
        f"{e2e}/nonroot:1.5": nonroot_image(),
        f"{e2e}/nonewprivs:1.4": nonewprivs_image(),
        "pause:3.10.2": agnhost,
    }
    for name in ("kitten", "nautilus"):  # upstream: agnhost + COPY html/* /, Cmd test-webserver
        page = ib.Layer()
        for f in sorted((UPSTREAM_FILES / name).iterdir()):
            page.file(f.name, f.read_bytes())
        out[f"{e2e}/{name}:1.8"] = agnhost_image(["test-webserver"], page)
    return out


def push_images() -> dict[str, str]:
    """Push every image as ``REGISTRY/registry.k8s.io/NAME:TAG``; returns public ref -> digest."""
    url = f"http://{layout.REGISTRY}"
    out = {}
    for ref, image in images().items():
        repo, tag = ref.rsplit(":", 1)
        out[f"{UPSTREAM}/{ref}"] = ib.push(url, f"{UPSTREAM}/{repo}", tag, image)
    return out


if __name__ == "__main__":
    for ref, digest in push_images().items():
        print(f"pushed {ref}@{digest}")
