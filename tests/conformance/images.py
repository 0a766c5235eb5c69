"""Stand-ins for every image critest v1.37.0 pulls, built here from busybox-static.

critest names its images by public references (``registry.k8s.io/e2e-test-images/...``,
``gcr.io/k8s-staging-cri-tools/...``, ``registry.k8s.io/pause``, ``k8s.gcr.io/pause``).
:func:`critest_images` builds one stand-in per reference; :func:`push_all` pushes each under
its repository *path* (the reference without its registry host) to a local registry, so one
registries.conf ``location`` rewrite per upstream registry (:func:`registries_conf`) makes all
of them reachable under their critest names, and nothing leaves the machine. Keeping only the
path also lets containerd's hosts.toml (which appends ``/v2/<path>`` to a host) find them.

What each spec checks, and what the stand-in gives it (pkg/validate in cri-tools v1.37.0):

- ``busybox:1.29-2`` (DefaultTestContainerImage): Debian's dynamically linked busybox (with
  the host's libc) instead of busybox-static, because the MaskedPaths spec masks /bin/ls and
  expects ``sh -c ls`` to fail executing it, and busybox-static's shell runs its applets
  itself; every applet hard-linked in /bin (masking /bin/ls masks only ls), the users and
  groups of the upstream busybox image (``nobody`` for RunAsUserName), and two applets
  Debian's busybox-static lacks, as scripts: ``/bin/ipcs`` (the HostIpc specs run
  ``ipcs -m``; it lists /proc/sysvipc/shm, which shows the caller's IPC namespace) and
  ``/bin/pgrep`` (the execSync timeout spec runs ``pgrep sleep``).
- ``nginx:1.14-2`` (WebServerTestImage and the PID namespace specs): a 200 on port 80, a
  process named ``nginx`` whose command line carries ``master process`` (as nginx retitles
  its master) and that writes its pid to /var/run/nginx.pid; it serves with busybox httpd as
  its worker and stops on SIGTERM/SIGQUIT.
- ``httpd:2.4.39-4`` (Multiple Containers): a 200 on port 80 and a start-up line naming httpd
  in its log, as Apache's ``httpd-foreground`` prints.
- ``hostnet-nginx-<arch>``: a web server on port 12003 (the port critest expects in the host
  network).
- ``nonewprivs:1.3``: prints ``Effective uid: N`` where N is the effective uid a setuid-root
  program gets. A setuid-root copy of busybox, told by /etc/busybox.conf to keep root for its
  ``id`` applet, reports 0; with no_new_privs the kernel ignores the setuid bit, busybox
  cannot take root and the script reports its own effective uid from /proc/self/status.
  (Busybox's ``[SUID]`` config in /etc/busybox.conf applies to every applet of every busybox
  in the image, hence the suid copy and a script of shell builtins.)
- ``test-image-user-*`` and ``test-image-predefined-group``: the ``USER`` lines of
  cri-tools' images/image-user and images/image-predefined-group Dockerfiles, over
  /etc/passwd and /etc/group as ``adduser``/``addgroup`` leave them.
- ``test-image-latest``, ``test-image-tag:{test,all}``, ``test-image-{1,2,3}:latest`` (three
  different images) and ``test-image-tags:{1,2,3}`` (one image, three tags): busybox plus a
  file named after the image, as images/image-test does.
- ``pause:3.9`` from two registries: one image (same id), ``/pause`` waits for SIGTERM/SIGINT.

``test-image-digest@sha256:9700f9a2...`` is pinned to an upstream manifest digest: no image
built here can have that digest, so its spec is skipped by name (tests/conformance/skip.txt).
"""

from __future__ import annotations

import functools
import subprocess
import tarfile
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from tests.support import imagebuilder as ib

STAGING = "gcr.io/k8s-staging-cri-tools/"
E2E = "registry.k8s.io/e2e-test-images/"
#: Every registry host critest's references name (rewritten to the local registry).
UPSTREAM_REGISTRIES = ("registry.k8s.io", "k8s.gcr.io", "gcr.io")

#: where scripts/install.sh downloads Debian's (dynamically linked) busybox package
DEB_CACHE = Path(__file__).resolve().parents[2] / ".cache" / "debs"

PATH_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

#: Upstream busybox's /etc/passwd and /etc/group (the image critest's busybox is built on).
BUSYBOX_USERS = (
    "root:x:0:0:root:/root:/bin/sh\n"
    "daemon:x:1:1:daemon:/usr/sbin:/bin/false\n"
    "bin:x:2:2:bin:/bin:/bin/false\n"
    "sys:x:3:3:sys:/dev:/bin/false\n"
    "sync:x:4:100:sync:/bin:/bin/sync\n"
    "mail:x:8:8:mail:/var/spool/mail:/bin/false\n"
    "www-data:x:33:33:www-data:/var/www:/bin/false\n"
    "operator:x:37:37:Operator:/var:/bin/false\n"
    "nobody:x:65534:65534:nobody:/home:/bin/false\n"
)
BUSYBOX_GROUPS = (
    "root:x:0:\ndaemon:x:1:\nbin:x:2:\nsys:x:3:\nadm:x:4:\ntty:x:5:\ndisk:x:6:\nlp:x:7:\n"
    "mail:x:8:\nkmem:x:9:\nwheel:x:10:root\ncdrom:x:11:\ndialout:x:18:\nfloppy:x:19:\n"
    "video:x:26:\naudio:x:29:\ntape:x:32:\nwww-data:x:33:\noperator:x:37:\nutmp:x:43:\n"
    "plugdev:x:46:\nstaff:x:50:\nlock:x:54:\nnetdev:x:82:\nusers:x:100:\nnobody:x:65534:\n"
)

IPCS = """#!/bin/sh
# ipcs -m stand-in: Debian's busybox-static has no ipcs applet. /proc/sysvipc/shm lists the
# shared memory segments of the reader's IPC namespace.
echo "------ Shared Memory Segments --------"
echo "key        shmid      owner      perms      bytes      nattch     status"
awk 'NR > 1 { printf "0x%08x %-10s %-10s %-10s %-10s %-10s\\n", $1, $2, $8, $3, $4, $7 }' /proc/sysvipc/shm
"""

PGREP = """#!/bin/sh
# pgrep stand-in: Debian's busybox-static has no pgrep applet. Prints the pids of the
# processes whose name matches the extended regular expression $1; exits 1 when none does.
[ $# -eq 1 ] || { echo "usage: pgrep PATTERN" >&2; exit 2; }
status=1
for dir in /proc/[0-9]*; do
    pid=${dir#/proc/}
    [ "$pid" = "$$" ] && continue
    read -r name < "$dir/comm" 2>/dev/null || continue
    if echo "$name" | grep -qE -- "$1"; then
        echo "$pid"
        status=0
    fi
done
exit $status
"""

NGINX = """#!/bin/sh
# nginx stand-in. Like nginx's master process it is named nginx, shows "master process" in
# its command line, writes /var/run/nginx.pid and stops its worker (busybox httpd on port 80)
# on SIGTERM, SIGINT or SIGQUIT.
if [ "$1" != "master process" ]; then
    exec /usr/sbin/nginx "master process" "$@"
fi
httpd -f -p 80 -h /usr/share/nginx/html &
worker=$!
echo $$ > /var/run/nginx.pid
trap 'kill $worker; rm -f /var/run/nginx.pid; exit 0' TERM INT QUIT
wait $worker
"""

HTTPD_FOREGROUND = """#!/bin/sh
# Apache's httpd-foreground stand-in: busybox httpd on port 80, in the foreground.
echo "httpd: busybox httpd serving /usr/local/apache2/htdocs on port 80" >&2
exec httpd -f -v -p 80 -h /usr/local/apache2/htdocs
"""

NNP = """#!/bin/sh
# What a setuid-root program's effective uid is: /usr/local/suid/busybox is setuid root
# and /etc/busybox.conf lets its id applet keep root. Under no_new_privs the kernel ignores
# the setuid bit, busybox cannot take root and exits; then the effective uid is our own, read
# from /proc/self/status. Only shell builtins here: with /etc/busybox.conf present, busybox
# 1.35's sh crashes in applets it runs in-process for a non-root user.
if ! euid=$(/usr/local/suid/busybox id -u 2>/dev/null); then
    while read -r key real effective rest; do
        [ "$key" = "Uid:" ] && euid=$effective && break
    done < /proc/self/status
fi
echo "Effective uid: $euid"
"""

PAUSE = """#!/bin/sh
# pause stand-in: wait until SIGTERM or SIGINT.
trap 'exit 0' TERM INT
while :; do sleep 3600 & wait $!; done
"""


@dataclass(frozen=True)
class Busybox:
    """A busybox binary and the shared libraries it needs (path in the image -> content)."""

    binary: bytes
    applets: tuple[str, ...]
    libraries: tuple[tuple[str, bytes], ...] = ()


def _applets(binary: Path) -> tuple[str, ...]:
    out = subprocess.run([str(binary), "--list"], check=True, capture_output=True, text=True).stdout
    return tuple(a for a in out.split() if a and "/" not in a and a != "busybox")


@functools.cache
def static_busybox() -> Busybox:
    """The host's busybox-static (/bin/busybox)."""
    return Busybox(ib.BUSYBOX.read_bytes(), _applets(ib.BUSYBOX))


@functools.cache
def exec_busybox() -> Busybox:
    """Debian's dynamically linked busybox (package ``busybox``, downloaded by
    scripts/install.sh into .cache/debs) with the host's libraries it links. Its shell looks
    commands up in PATH and executes them, as upstream busybox images' shells do;
    busybox-static's runs its applets itself (FEATURE_SH_STANDALONE)."""
    debs = sorted(DEB_CACHE.glob("busybox_*.deb"))
    if not debs:
        raise FileNotFoundError(f"no busybox .deb in {DEB_CACHE}: run scripts/install.sh")
    with tempfile.TemporaryDirectory(prefix="busybox-deb-") as tmp:
        subprocess.run(["dpkg-deb", "-x", str(debs[-1]), tmp], check=True)
        binary = Path(tmp) / "bin" / "busybox"
        ldd = subprocess.run(["ldd", str(binary)], check=True, capture_output=True, text=True).stdout
        libs = []
        for line in ldd.splitlines():
            # "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or "/lib64/ld-linux-x86-64.so.2 (0x...)"
            words = line.split()
            path = words[2] if "=>" in words else words[0]
            if path.startswith("/"):
                libs.append((path.lstrip("/"), Path(path).resolve().read_bytes()))
        return Busybox(binary.read_bytes(), _applets(binary), tuple(libs))


def _base(users: str = BUSYBOX_USERS, groups: str = BUSYBOX_GROUPS, busybox: Busybox | None = None) -> ib.Layer:
    """The upstream busybox image's layout: /bin/busybox with every applet as a hard link
    next to it (a masked /bin/ls then masks only ls), /etc/passwd and /etc/group, and the
    usual directories."""
    bb = busybox or static_busybox()
    layer = ib.Layer()
    dirs = ["bin", "dev", "etc", "home", "proc", "root", "sys", "tmp", "usr", "usr/bin", "usr/sbin", "usr/local",
            "usr/local/bin", "var", "var/run", "var/www"]
    for lib, _ in bb.libraries:
        parts = lib.split("/")[:-1]
        dirs += ["/".join(parts[: i + 1]) for i in range(len(parts))]
    modes = {"proc": 0o555, "sys": 0o555, "root": 0o700, "tmp": 0o1777}
    for d in dict.fromkeys(dirs):
        layer.dir(d, modes.get(d, 0o755))
    for lib, data in bb.libraries:
        layer.file(lib, data, 0o755)
    layer.file("bin/busybox", bb.binary, 0o755)
    for applet in bb.applets:
        link = tarfile.TarInfo(f"bin/{applet}")
        link.type, link.linkname, link.mode, link.mtime = tarfile.LNKTYPE, "bin/busybox", 0o755, ib.DEFAULT_MTIME
        layer.raw(link)
    layer.symlink("usr/bin/env", "/bin/env")
    return layer.file("etc/passwd", users).file("etc/group", groups)


def _image(*extra: ib.Layer, config: Mapping[str, object] | None = None,
           users: str = BUSYBOX_USERS, groups: str = BUSYBOX_GROUPS, busybox: Busybox | None = None) -> ib.BuiltImage:
    cfg: dict[str, object] = {"Cmd": ["sh"], "Env": [PATH_ENV]}
    cfg.update(config or {})
    return ib.build_image([_base(users, groups, busybox), *extra],
                          config={k: v for k, v in cfg.items() if v is not None})


def default_image() -> ib.BuiltImage:
    return _image(ib.Layer().dir("bin").file("bin/ipcs", IPCS, 0o755).file("bin/pgrep", PGREP, 0o755),
                  busybox=exec_busybox())


def nginx_image() -> ib.BuiltImage:
    web = (ib.Layer().dir("usr/sbin").file("usr/sbin/nginx", NGINX, 0o755)
           .dir("usr/share").dir("usr/share/nginx").dir("usr/share/nginx/html")
           .file("usr/share/nginx/html/index.html", "<h1>Welcome to nginx (busybox httpd stand-in)</h1>\n"))
    return _image(web, config={"Cmd": ["nginx", "-g", "daemon off;"], "ExposedPorts": {"80/tcp": {}},
                               "StopSignal": "SIGTERM"})


def httpd_image() -> ib.BuiltImage:
    web = (ib.Layer().dir("usr/local/bin").file("usr/local/bin/httpd-foreground", HTTPD_FOREGROUND, 0o755)
           .dir("usr/local/apache2").dir("usr/local/apache2/htdocs")
           .file("usr/local/apache2/htdocs/index.html", "<html><body><h1>It works!</h1></body></html>\n"))
    return _image(web, config={"Cmd": ["httpd-foreground"], "ExposedPorts": {"80/tcp": {}},
                               "WorkingDir": "/usr/local/apache2", "StopSignal": "SIGWINCH"})


def hostnet_nginx_image() -> ib.BuiltImage:
    web = (ib.Layer().dir("usr/share").dir("usr/share/nginx").dir("usr/share/nginx/html")
           .file("usr/share/nginx/html/index.html", "<h1>hostnet nginx (busybox httpd stand-in)</h1>\n"))
    return _image(web, config={"Cmd": ["httpd", "-f", "-p", "12003", "-h", "/usr/share/nginx/html"],
                               "ExposedPorts": {"12003/tcp": {}}})


def nonewprivs_image() -> ib.BuiltImage:
    nnp = (ib.Layer().dir("etc").file("etc/busybox.conf", "[SUID]\nid = ssx root.root\n", 0o644)
           .dir("usr/local/bin").dir("usr/local/suid")
           .file("usr/local/suid/busybox", ib.BUSYBOX.read_bytes(), 0o4755)
           .file("usr/local/bin/nnp", NNP, 0o755))
    return _image(nnp, config={"Cmd": ["/usr/local/bin/nnp"]})


def pause_image() -> ib.BuiltImage:
    return _image(ib.Layer().file("pause", PAUSE, 0o755), config={"Entrypoint": ["/pause"], "Cmd": None})


def marked_image(name: str) -> ib.BuiltImage:
    """busybox plus a file named ``name`` (cri-tools images/image-test: ``ADD ${TEST} ${TEST}``)."""
    return _image(ib.Layer().file(name, f"{name}\n"))


def user_image(user: str) -> ib.BuiltImage:
    """cri-tools images/image-user: ``FROM busybox``, ``USER ${USER}``."""
    return _image(config={"User": user})


def predefined_group_image() -> ib.BuiltImage:
    """cri-tools images/image-predefined-group: ``adduser -u 1000 -D default-user``,
    ``addgroup -g 50000 group-defined-in-image``, ``addgroup default-user
    group-defined-in-image``, ``USER 1000``."""
    users = BUSYBOX_USERS + "default-user:x:1000:1000:Linux User,,,:/home/default-user:/bin/sh\n"
    groups = BUSYBOX_GROUPS + "default-user:x:1000:\ngroup-defined-in-image:x:50000:default-user\n"
    home = ib.Layer().dir("home").dir("home/default-user", 0o755, 1000, 1000)
    return _image(home, config={"User": "1000"}, users=users, groups=groups)


def critest_images() -> dict[str, ib.BuiltImage]:
    """Every image critest v1.37.0 pulls, keyed by the reference critest uses (tag added
    where critest relies on ``latest``)."""
    arch = ib.host_arch()
    pause = pause_image()
    same_tags = marked_image("test-image-tags")
    out: dict[str, ib.BuiltImage] = {
        E2E + "busybox:1.29-2": default_image(),
        E2E + "nginx:1.14-2": nginx_image(),
        E2E + "httpd:2.4.39-4": httpd_image(),
        E2E + "nonewprivs:1.3": nonewprivs_image(),
        "registry.k8s.io/pause:3.9": pause,
        "k8s.gcr.io/pause:3.9": pause,
        STAGING + f"hostnet-nginx-{arch}:latest": hostnet_nginx_image(),
        STAGING + "test-image-user-uid:latest": user_image("1002"),
        STAGING + "test-image-user-username:latest": user_image("www-data"),
        STAGING + "test-image-user-uid-group:latest": user_image("1003:users"),
        STAGING + "test-image-user-username-group:latest": user_image("www-data:users"),
        STAGING + "test-image-predefined-group:latest": predefined_group_image(),
        STAGING + "test-image-latest:latest": marked_image("test-image-latest"),
        STAGING + "test-image-tag:test": marked_image("test-image-tag-test"),
        STAGING + "test-image-tag:all": marked_image("test-image-tag-all"),
    }
    for i in (1, 2, 3):
        out[STAGING + f"test-image-{i}:latest"] = marked_image(f"test-image-{i}")
        out[STAGING + f"test-image-tags:{i}"] = same_tags
    return out


def split_reference(ref: str) -> tuple[str, str, str]:
    """``host/path:tag`` -> (host, path, tag)."""
    host, _, rest = ref.partition("/")
    path, _, tag = rest.rpartition(":")
    return host, path, tag


def push_all(base_url: str, images: Mapping[str, ib.BuiltImage] | None = None) -> dict[str, str]:
    """Push every stand-in to the registry at ``base_url`` under its repository path;
    returns reference -> manifest digest. Two references with one path must be one image."""
    pushed: dict[str, str] = {}
    by_path: dict[tuple[str, str], str] = {}
    for ref, image in (images or critest_images()).items():
        _host, path, tag = split_reference(ref)
        earlier = by_path.setdefault((path, tag), image.digest)
        if earlier != image.digest:
            raise ValueError(f"{ref}: another registry's {path}:{tag} is a different image")
        pushed[ref] = ib.push(base_url, path, tag, image)
    return pushed


def registries_conf(local: str) -> str:
    """registries.conf v2: each upstream registry critest names is rewritten to ``local``
    (``127.0.0.1:PORT``); no mirrors, so no pull falls back to the real registries."""
    return "\n".join(f'[[registry]]\nprefix = "{reg}"\nlocation = "{local}"\n' for reg in UPSTREAM_REGISTRIES)
