"""The SSRF guard's rules, address by address (no network: literals and localhost)."""

import ipaddress

import pytest

from domain.connections.addresses import RefusedAddress, check_address, check_url_shape, pin
from domain.settings import Settings


@pytest.fixture
def embedded(tmp_path) -> Settings:
    return Settings(data_dir=tmp_path)


@pytest.fixture
def multi_user(tmp_path) -> Settings:
    return Settings(data_dir=tmp_path, connection_allow_private=False,
                    connection_allowed_hosts=["ollama.internal", "10.1.0.0/16"])


ALWAYS_REFUSED = ["169.254.169.254", "169.254.0.1", "fe80::1", "fd00:ec2::254", "100.100.100.200", "0.0.0.0", "::",
                  "::ffff:169.254.169.254", "64:ff9b::a9fe:a9fe", "2002:a9fe:a9fe::1", "224.0.0.1"]
PRIVATE = ["127.0.0.1", "::1", "10.0.0.5", "172.16.3.4", "192.168.1.1", "100.64.0.1", "fc00::1", "::ffff:127.0.0.1"]


@pytest.mark.parametrize("address", ALWAYS_REFUSED)
def test_link_local_and_metadata_are_refused_whatever_the_settings(address, embedded, tmp_path):
    listing_everything = Settings(data_dir=tmp_path, connection_allowed_hosts=["0.0.0.0/0", "::/0", "h"])
    for settings in (embedded, listing_everything):
        with pytest.raises(RefusedAddress):
            check_address("h", ipaddress.ip_address(address), settings)


@pytest.mark.parametrize("address", PRIVATE)
def test_private_addresses_are_allowed_embedded_and_refused_multi_user(address, embedded, multi_user):
    check_address("h", ipaddress.ip_address(address), embedded)
    with pytest.raises(RefusedAddress):
        check_address("h", ipaddress.ip_address(address), multi_user)


def test_the_allow_list_names_hosts_and_ranges(multi_user):
    check_address("ollama.internal", ipaddress.ip_address("192.168.1.9"), multi_user)
    check_address("other", ipaddress.ip_address("10.1.200.3"), multi_user)
    with pytest.raises(RefusedAddress):
        check_address("other", ipaddress.ip_address("10.2.0.1"), multi_user)
    with pytest.raises(RefusedAddress):  # listing a name never opens metadata
        check_address("ollama.internal", ipaddress.ip_address("169.254.169.254"), multi_user)
    check_address("api.example.com", ipaddress.ip_address("8.8.8.8"), multi_user)


def test_pin_connects_to_the_checked_address_and_keeps_the_host(embedded):
    target = pin("http://localhost:8080/v1/models?x=1", embedded)
    assert target.url in ("http://127.0.0.1:8080/v1/models?x=1", "http://[::1]:8080/v1/models?x=1")
    assert target.host == "localhost" and target.host_header == "localhost:8080"
    six = pin("https://[::1]/v1", embedded)
    assert six.url == "https://[::1]/v1" and six.host_header == "[::1]"
    with pytest.raises(RefusedAddress):
        pin("http://metadata.google.internal/computeMetadata/v1/", embedded)


def test_url_shape():
    assert check_url_shape(" https://api.openai.com/v1/ ") == "https://api.openai.com/v1"
    for bad in ("file:///etc/passwd", "http://", "http://u:p@h/v1", "http://h/v1#x", "gopher://h"):
        with pytest.raises(ValueError):
            check_url_shape(bad)
