"""Proxy choice as Go's golang.org/x/net/http/httpproxy makes it (containerd and CRI-O)."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from cri_shim.config import ConfigError, as_dict, load
from runtime.errors import InvalidArgument
from runtime.image.proxy import ProxyConfig, normalize_proxy_url, redacted

P = "http://proxy.internal:3128"


@pytest.mark.parametrize(
    ("no_proxy", "url", "proxied"),
    [
        ("", "https://quay.io/v2/", True),
        ("", "https://localhost:5000/v2/", False),  # localhost and loopback literals: never
        ("", "https://127.0.0.1:5000/v2/", False),
        ("", "https://[::1]:5000/v2/", False),
        ("*", "https://quay.io/v2/", False),
        ("quay.io", "https://quay.io/v2/", False),
        ("quay.io", "https://cdn.quay.io/x", False),  # a name matches its sub-domains
        ("quay.io", "https://notquay.io/x", True),
        (".quay.io", "https://quay.io/v2/", True),  # a leading dot: sub-domains only
        (".quay.io", "https://cdn.quay.io/x", False),
        ("*.quay.io", "https://cdn.quay.io/x", False),
        ("*.quay.io", "https://quay.io/x", True),
        ("quay.io:443", "https://quay.io/v2/", False),  # default port filled in
        ("quay.io:5000", "https://quay.io/v2/", True),
        ("quay.io:5000", "https://quay.io:5000/v2/", False),
        ("10.0.0.0/8", "https://10.1.2.3/v2/", False),
        ("10.0.0.0/8", "https://11.1.2.3/v2/", True),
        ("10.1.2.3", "https://10.1.2.3:5000/v2/", False),
        ("10.1.2.3:5000", "https://10.1.2.3:5001/v2/", True),
        ("[2001:db8::1]:443", "https://[2001:db8::1]/v2/", False),
        ("2001:db8::/32", "https://[2001:db8::5]/v2/", False),
        (" Example.COM , ,quay.io", "https://registry.example.com/v2/", False),  # trimmed, lower-cased
        (":443", "https://quay.io/v2/", True),  # no host: ignored
    ],
)
def test_no_proxy(no_proxy: str, url: str, proxied: bool) -> None:
    config = ProxyConfig(https_proxy=P, http_proxy=P, no_proxy=no_proxy)
    assert config.proxy_for(httpx.URL(url)) == (P if proxied else "")


def test_scheme_picks_the_proxy_without_fallback() -> None:
    only_http = ProxyConfig(http_proxy=P)
    assert only_http.proxy_for(httpx.URL("http://quay.io/v2/")) == P
    assert only_http.proxy_for(httpx.URL("https://quay.io/v2/")) == ""  # Go: no fallback to HTTP_PROXY
    both = ProxyConfig(https_proxy="http://s:1", http_proxy="http://h:1")
    assert both.proxy_for(httpx.URL("https://quay.io/")) == "http://s:1"
    assert both.proxy_for(httpx.URL("http://quay.io/")) == "http://h:1"


def test_resolve_prefers_config_then_upper_then_lower_case_environment() -> None:
    env = {"HTTPS_PROXY": "upper:1", "https_proxy": "http://lower:1", "http_proxy": "http://h:2",
           "no_proxy": "a.example"}
    got = ProxyConfig.resolve("", "", "", env)
    assert (got.https_proxy, got.http_proxy, got.no_proxy) == ("http://upper:1", "http://h:2", "a.example")
    got = ProxyConfig.resolve("https://cfg:3", "", "b.example", env)
    assert (got.https_proxy, got.no_proxy) == ("https://cfg:3", "b.example")
    assert ProxyConfig.resolve("", "", "", {}) == ProxyConfig()
    assert ProxyConfig().proxy_for(httpx.URL("https://quay.io/")) == ""


@pytest.mark.parametrize(("value", "what"), [("socks5://p:1080", "HTTPS_PROXY"), ("http://", "image.https_proxy"),
                                             ("http://host:notaport", "image.http_proxy")])
def test_invalid_proxy_names_its_source(value: str, what: str) -> None:
    with pytest.raises(InvalidArgument, match=what.replace(".", r"\.")):
        normalize_proxy_url(value, what)
    with pytest.raises(InvalidArgument, match="environment variable HTTPS_PROXY"):
        ProxyConfig.resolve("", "", "", {"HTTPS_PROXY": "socks5://p:1080"})


def test_passwords_never_shown() -> None:
    url = "http://user:s3cret@proxy:3128"
    assert redacted(url) == "http://user:xxxxx@proxy:3128"
    assert "s3cret" not in ProxyConfig(https_proxy=url).describe()
    assert "s3cret" not in repr(ProxyConfig(https_proxy=url))
    assert redacted("http://proxy:3128") == "http://proxy:3128"
    with pytest.raises(InvalidArgument) as err:
        normalize_proxy_url("socks5://user:s3cret@p:1", "x")
    assert "s3cret" not in str(err.value)


def test_config_validates_and_status_hides_the_password(tmp_path: Path) -> None:
    p = tmp_path / "c.toml"
    p.write_text('[image]\nhttps_proxy = "ftp://p:1"\n')
    with pytest.raises(ConfigError, match=r"image\.https_proxy"):
        load(p)
    p.write_text('[image]\nhttps_proxy = "http://u:s3cret@p:1"\nno_proxy = "10.0.0.0/8"\n')
    shown = as_dict(load(p))["image"]
    assert shown["https_proxy"] == "http://u:xxxxx@p:1" and shown["no_proxy"] == "10.0.0.0/8"
