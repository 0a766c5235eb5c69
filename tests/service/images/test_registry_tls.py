"""Registry TLS like a production node: CAs and client certificates from containers-certs.d
directories (image.certs_dirs), read at each pull; a registry that has a directory is
verified even on loopback; failures say what is trusted and what is missing."""

from __future__ import annotations

import shutil
from pathlib import Path

import grpc
import pytest

from cri_shim.api.gen import api_pb2 as pb
from tests.support import imagebuilder as ib
from tests.support.daemon import DaemonProcess, running_daemon
from tests.support.names import unique
from tests.support.pki import TestCA, loopback_alias
from tests.support.registry import running_registry

pytestmark = [pytest.mark.service, pytest.mark.peers, pytest.mark.root, pytest.mark.timeout(240)]


def tiny_image(text: str) -> ib.BuiltImage:
    return ib.build_image([ib.Layer().file("hello.txt", text)], config={"Cmd": ["/hello"]})


def pull(d: DaemonProcess, ref: str) -> str:
    return str(d.images.PullImage(pb.PullImageRequest(image=pb.ImageSpec(image=ref)), timeout=90).image_ref)


def pull_error(d: DaemonProcess, ref: str) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as err:
        pull(d, ref)
    return err.value


def certs_config(certs_d: Path) -> str:
    return f'[image]\ncerts_dirs = ["{certs_d}"]\n'


def test_ca_only_in_certs_d_is_trusted_and_without_it_the_pull_fails(tmp_path: Path) -> None:
    alias, address = loopback_alias()  # a name, not a loopback literal: verified, no HTTP fallback
    ca = TestCA(tmp_path)
    certs_d = tmp_path / "certs.d"
    certs_d.mkdir()
    with running_registry(tmp_path, address=address, tls_files=ca.server([alias])) as reg, \
            running_daemon(tmp_path / "d", extra_config=certs_config(certs_d)) as d:
        name = f"tls/{unique('ca')}"
        img = tiny_image(name)
        reg.push(name, "v1", img)
        ref = f"{alias}:{reg.port}/{name}:v1"
        host_dir = certs_d / f"{alias}:{reg.port}"

        err = pull_error(d, ref)
        assert err.code() == grpc.StatusCode.UNAVAILABLE
        details = err.details() or ""
        assert "certificate of the registry not trusted" in details, details
        assert "only the system CA store is trusted" in details and str(host_dir) in details, details

        host_dir.mkdir()
        shutil.copy(ca.cert_path, host_dir / "ca.crt")
        assert pull(d, ref) == img.id  # no restart: the directory is read at each pull

        shutil.copy(TestCA(tmp_path, "another CA").cert_path, host_dir / "ca.crt")
        err = pull_error(d, ref)
        assert "not trusted" in (err.details() or "") and "ca.crt" in (err.details() or ""), err.details()


def test_client_certificate_pair_from_certs_d(tmp_path: Path) -> None:
    ca = TestCA(tmp_path)
    client_cert, client_key = ca.client("node-1")
    certs_d = tmp_path / "certs.d"
    with running_registry(tmp_path, tls_files=ca.server(["127.0.0.1"]), client_ca=ca.cert_path,
                          client_cert=(client_cert, client_key)) as reg, \
            running_daemon(tmp_path / "d", extra_config=certs_config(certs_d)) as d:
        name = f"mtls/{unique('c')}"
        img = tiny_image(name)
        reg.push(name, "v1", img)
        ref = reg.ref(name, "v1")
        host_dir = certs_d / reg.host
        host_dir.mkdir(parents=True)
        # A directory for a loopback registry means "verify it": a wrong CA fails the pull
        # (without a directory the loopback registry would be used unverified).
        shutil.copy(TestCA(tmp_path, "another CA").cert_path, host_dir / "ca.crt")
        assert "not trusted" in (pull_error(d, ref).details() or "")

        shutil.copy(ca.cert_path, host_dir / "ca.crt")
        err = pull_error(d, ref)
        assert err.code() == grpc.StatusCode.UNAVAILABLE
        assert "refused the TLS handshake" in (err.details() or ""), err.details()
        assert "no client certificate was offered" in (err.details() or ""), err.details()

        shutil.copy(client_cert, host_dir / "client.cert")
        err = pull_error(d, ref)
        assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "missing key client.key for client certificate client.cert" in (err.details() or ""), err.details()

        shutil.copy(client_key, host_dir / "client.key")
        assert pull(d, ref) == img.id
