"""containers-auth.json(5) lookup (containers/image pkg/docker/config): most specific key
first, legacy scheme keys by host, Docker Hub aliases, bad entries, malformed files."""

from __future__ import annotations

import base64
import json
import logging
import os
from pathlib import Path

import pytest

from runtime.errors import FailedPrecondition
from runtime.image.authfile import AuthFile


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def write(path: Path, auths: dict[str, object], **extra: object) -> None:
    path.write_text(json.dumps({"auths": auths, **extra}))
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))  # a change the stamp sees


def test_most_specific_key_first(tmp_path: Path) -> None:
    f = tmp_path / "auth.json"
    write(f, {"quay.io": {"auth": b64("host:h")}, "quay.io/team": {"auth": b64("team:t")},
              "quay.io/team/app": {"auth": b64("app:a")}})
    af = AuthFile(f)
    found = af.lookup("quay.io", "team/app")
    assert found is not None and found.basic() == ("app", "a") and found.server_address == "quay.io"
    assert found.applies_to("quay.io") and not found.applies_to("evil.example")
    assert af.lookup("quay.io", "team/other").basic() == ("team", "t")  # type: ignore[union-attr]
    assert af.lookup("quay.io", "teamx/app").basic() == ("host", "h")  # type: ignore[union-attr]
    assert af.lookup("ghcr.io", "team/app") is None


def test_legacy_keys_and_docker_hub(tmp_path: Path) -> None:
    f = tmp_path / "auth.json"
    write(f, {"https://index.docker.io/v1/": {"auth": b64("hub:p")}, "http://reg.example:5000/v2/":
              {"auth": b64("r:p"), "identitytoken": "refresh"}})
    af = AuthFile(f)
    assert af.lookup("docker.io", "library/busybox").basic() == ("hub", "p")  # type: ignore[union-attr]
    got = af.lookup("reg.example:5000", "x")
    assert got is not None and got.identity_token == "refresh" and got.basic() == ("r", "p")
    assert af.lookup("reg.example", "x") is None  # the port is part of the host


def test_unusable_entries_give_no_credentials(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    f = tmp_path / "auth.json"
    write(f, {"a.example": {"auth": b64("no-colon-s3cret")}, "b.example": {},
              "c.example": {"auth": "!!notbase64"}}, credHelpers={"d.example": "secretservice"})
    af = AuthFile(f)
    with caplog.at_level(logging.DEBUG):
        assert af.lookup("a.example", "x") is None
        assert af.lookup("b.example", "x") is None  # a credential-helper marker entry
        assert af.lookup("c.example", "x") is None
        assert af.lookup("d.example", "x") is None
    assert "s3cret" not in caplog.text and "credHelpers are not supported" in caplog.text


def test_missing_malformed_and_reloaded(tmp_path: Path) -> None:
    f = tmp_path / "auth.json"
    af = AuthFile(f)
    assert af.lookup("quay.io", "x") is None  # missing: no credentials
    assert AuthFile(None).lookup("quay.io", "x") is None
    f.write_text('{"auths": {"quay.io": {"auth": "' + b64("u:s3cret"))
    with pytest.raises(FailedPrecondition, match="is not valid JSON") as err:
        af.lookup("quay.io", "x")
    assert "s3cret" not in str(err.value)
    for bad, message in (('["x"]', "not a JSON object"), ('{"auths": []}', '"auths" is not an object'),
                         ('{"auths": {"quay.io": "x"}}', "entry 'quay.io' is not an object")):
        f.write_text(bad)
        st = f.stat()
        os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
        with pytest.raises(FailedPrecondition, match=message):
            af.lookup("quay.io", "x")
    write(f, {"quay.io": {"auth": b64("u:p")}})
    assert af.lookup("quay.io", "x").basic() == ("u", "p")  # type: ignore[union-attr]
    write(f, {"quay.io": {"auth": b64("u:new")}})
    assert af.lookup("quay.io", "x").basic() == ("u", "new")  # type: ignore[union-attr]
