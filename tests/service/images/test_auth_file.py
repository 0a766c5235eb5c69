"""The node's credentials file (image.auth_file, containers-auth.json(5)): used when kubelet
sends no AuthConfig for the registry, most specific key first; kubelet's credentials win."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import grpc
import pytest

from cri_shim.api.gen import api_pb2 as pb
from tests.support import imagebuilder as ib
from tests.support.daemon import DaemonProcess, running_daemon
from tests.support.names import unique
from tests.support.registry import running_registry

pytestmark = [pytest.mark.service, pytest.mark.peers, pytest.mark.root, pytest.mark.timeout(240)]


def b64(user: str, password: str) -> str:
    return base64.b64encode(f"{user}:{password}".encode()).decode()


def pull(d: DaemonProcess, ref: str, auth: pb.AuthConfig | None = None) -> str:
    req = pb.PullImageRequest(image=pb.ImageSpec(image=ref), auth=auth)
    return str(d.images.PullImage(req, timeout=90).image_ref)


def pull_error(d: DaemonProcess, ref: str, auth: pb.AuthConfig | None = None) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as err:
        pull(d, ref, auth)
    return err.value


def test_auth_file_used_when_kubelet_sends_none(tmp_path: Path) -> None:
    auth_file = tmp_path / "auth.json"
    with running_registry(tmp_path, auth="htpasswd") as reg, \
            running_daemon(tmp_path / "d", extra_config=f'[image]\nauth_file = "{auth_file}"\n') as d:
        ns = unique("team")
        team, other = (f"{ns}/app", f"{unique('other')}/app")
        images = {name: ib.build_image([ib.Layer().file("t", name)]) for name in (team, other)}
        for name, img in images.items():
            reg.push(name, "v1", img)
        user, password = reg.username, reg.password

        # No file yet: anonymous, refused.
        err = pull_error(d, reg.ref(team, "v1"))
        assert err.code() == grpc.StatusCode.PERMISSION_DENIED and "requires credentials" in (err.details() or "")

        # The namespace key beats the host key (containers-auth.json(5) lookup order).
        auth_file.write_text(json.dumps({"auths": {
            reg.host: {"auth": b64(user, "wrong-password")},
            f"{reg.host}/{ns}": {"auth": b64(user, password)},
        }}))
        assert pull(d, reg.ref(team, "v1")) == images[team].id
        err = pull_error(d, reg.ref(other, "v1"))
        assert err.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "refused the credentials" in (err.details() or ""), err.details()

        # kubelet's credentials win where it sends some for this registry...
        good = pb.AuthConfig(username=user, password=password, server_address=reg.host)
        assert pull(d, reg.ref(other, "v1"), good) == images[other].id
        bad = pb.AuthConfig(username=user, password="kubelet-wrong", server_address=reg.host)
        assert pull_error(d, reg.ref(team, "v1"), bad).code() == grpc.StatusCode.PERMISSION_DENIED
        # ...and the file is used where kubelet's are for another registry.
        elsewhere = pb.AuthConfig(username=user, password="x", server_address="registry.example")
        assert pull(d, reg.ref(team, "v1"), elsewhere) == images[team].id

        # A legacy "https://host/v1/" key is found by its host.
        auth_file.write_text(json.dumps({"auths": {f"https://{reg.host}/v1/": {"auth": b64(user, password)}}}))
        assert pull(d, reg.ref(other, "v1")) == images[other].id

        # A malformed file fails the pull naming the file, not its content.
        auth_file.write_text('{"auths": {"' + reg.host + '": ')
        err = pull_error(d, reg.ref(team, "v1"))
        assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert str(auth_file) in (err.details() or "") and password not in (err.details() or "")
        assert password not in d.log()
