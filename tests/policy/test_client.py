"""The host side: fetch + verify + cache over real TLS; every failure keeps the current policy."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import socket
import stat
import time

import pytest

from centralkit import Central, StaticTlsServer, issue_identity, policy_text
from pyipsec.errors import ConfigError
from pyipsec.pki.ca import load_certificate, load_private_key
from pyipsec.policy.client import (
    BadSignature,
    ClientConfig,
    InvalidPolicy,
    NoPolicyAssigned,
    PolicyClient,
    ServerUnreachable,
    next_poll,
    poll_due,
)
from pyipsec.policy.envelope import PolicyEnvelope, sign_envelope


@pytest.fixture()
def central(tmp_path):
    c = Central(tmp_path)
    now = time.time()
    c.store.create_policy("web", policy_text("one"), author="admin", now=now)
    c.store.create_group("webdb", now=now)
    c.store.assign("web", "webdb", now=now)
    c.store.add_host("webdb", "hosta", now=now)
    yield c
    c.close()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_poll_schedule_is_a_pure_function():
    assert poll_due(100.0, None, 60)
    assert not poll_due(100.0, 50.0, 60)
    assert poll_due(110.0, 50.0, 60)
    assert poll_due(40.0, 50.0, 60)  # clock went backwards
    assert next_poll(100.0, 50.0, 60) == 110.0
    assert next_poll(120.0, 50.0, 60) == 120.0
    with pytest.raises(ConfigError):
        poll_due(1.0, None, 0)


def test_fetch_verify_cache_and_versions(central):
    client = central.client(central.host("hosta"))
    assert client.host == "hosta" and client.current() is None
    first = client.fetch(time.time())
    assert first.changed and first.previous is None
    assert (first.envelope.name, first.envelope.version) == ("web", 1)
    if importlib.util.find_spec("pyipsec.policy.loader") is not None:
        assert first.policy.name == "Web App Encrypt"  # the parsed policy, for the daemon
        assert first.policy.polling_interval == 3600
    cache = client.config.cache
    assert stat.S_IMODE(os.stat(cache).st_mode) == 0o600
    assert client.current() == first.envelope
    again = client.fetch(time.time())
    assert not again.changed and again.previous == first.envelope
    central.store.edit_policy("web", policy_text("two"), author="admin", now=time.time())
    third = client.fetch(time.time())
    assert third.changed and third.envelope.version == 2 and third.previous.version == 1
    client.report(third.envelope, "stored", "written")
    (rec,) = central.store.applied("hosta")
    assert (rec.version, rec.status, rec.sha256) == (2, "stored", third.envelope.sha256)
    stats = client.statistics()
    assert (stats.fetches, stats.updated, stats.unchanged, stats.reports) == (3, 2, 1, 1)


def test_unreachable_server_keeps_current_policy(central):
    ident = central.host("hosta")
    client = central.client(ident)
    good = client.fetch(time.time()).envelope
    before = client.config.cache.read_bytes()
    down = central.client(ident, url=f"https://127.0.0.1:{_closed_port()}", timeout=2)
    with pytest.raises(ServerUnreachable) as info:
        down.fetch(time.time())
    assert info.value.kept == good
    assert "keeping current policy 'web' version 1" in str(info.value)
    assert client.config.cache.read_bytes() == before
    assert down.statistics().unreachable == 1


def test_no_policy_assigned(central):
    client = central.client(central.host("hostz"))
    with pytest.raises(NoPolicyAssigned, match="no policy in effect"):
        client.fetch(time.time())
    assert not client.config.cache.exists()


def _tampered_server(central, envelope_bytes: bytes) -> StaticTlsServer:
    return StaticTlsServer(central.server_id, central.ca.cert_path, envelope_bytes)


def test_tampered_envelopes_are_refused_over_tls(central, tmp_path):
    ident = central.host("hosta")
    client = central.client(ident)
    good = client.fetch(time.time()).envelope
    before = client.config.cache.read_bytes()
    server_key = load_private_key(central.server_id.key)
    server_cert = load_certificate(central.server_id.cert)
    evil_text = policy_text("evil", a="10.77.0.66")
    import hashlib

    variants = {
        "text altered": dataclasses.replace(good, text=evil_text),
        "text and hash altered": dataclasses.replace(
            good, text=evil_text, sha256=hashlib.sha256(evil_text.encode()).hexdigest()
        ),
        "version altered": dataclasses.replace(good, version=99),
        "other host": sign_envelope(
            host="hostb",
            name="web",
            version=5,
            text=evil_text,
            now=time.time(),
            key=server_key,
            certificate=server_cert,
        ),
        "rollback": sign_envelope(
            host="hosta",
            name="web",
            version=1,
            text=evil_text,
            now=good.issued_at - 3600,
            key=server_key,
            certificate=server_cert,
        ),
    }
    # signed by a host certificate of the same CA: not the policy server
    rogue = central.host("mallory")
    variants["signed by a host"] = sign_envelope(
        host="hosta",
        name="web",
        version=7,
        text=evil_text,
        now=time.time(),
        key=load_private_key(rogue.key),
        certificate=load_certificate(rogue.cert),
    )
    for label, env in variants.items():
        fake = _tampered_server(central, env.to_json())
        try:
            tampering = central.client(ident, url=fake.url)
            with pytest.raises(BadSignature) as info:
                tampering.fetch(time.time())
            assert info.value.kept == good, label
            assert "keeping current policy" in str(info.value)
        finally:
            fake.close()
        assert client.config.cache.read_bytes() == before, label
    for junk in (b"not json", b"{}", json.dumps({"format": "pyipsec-policy/1"}).encode()):
        fake = _tampered_server(central, junk)
        try:
            with pytest.raises(BadSignature):
                central.client(ident, url=fake.url).fetch(time.time())
        finally:
            fake.close()
    assert client.current() == good


def test_server_from_another_ca_is_not_trusted(central, tmp_path):
    from pyipsec.pki.ca import CertificateAuthority

    ident = central.host("hosta")
    rogue_ca = CertificateAuthority.init(tmp_path / "rogue", "rogue", now=time.time())
    rogue_server = issue_identity(
        rogue_ca, tmp_path / "rogue-srv", "policy-server", ips=["127.0.0.1"]
    )
    fake = StaticTlsServer(rogue_server, central.ca.cert_path, b"{}")
    try:
        with pytest.raises(ServerUnreachable):
            central.client(ident, url=fake.url).fetch(time.time())
    finally:
        fake.close()


def test_invalid_policy_refused(tmp_path):
    c = Central(tmp_path, store_validator=lambda text, name: None)  # a store that lets it in
    try:
        now = time.time()
        c.store.create_policy("web", "- not a policy\n", author="a", now=now)
        c.store.create_group("g", now=now)
        c.store.assign("web", "g", now=now)
        c.store.add_host("g", "hosta", now=now)
        client = c.client(c.host("hosta"))
        with pytest.raises(InvalidPolicy, match="invalid policy"):
            client.fetch(time.time())
        assert client.current() is None and client.statistics().invalid_policy == 1
    finally:
        c.close()


def test_damaged_cache_is_not_trusted(central):
    client = central.client(central.host("hosta"))
    client.fetch(time.time())
    obj = json.loads(client.config.cache.read_text())
    obj["text"] = obj["text"].replace("10.77.0.2", "10.77.0.3")
    client.config.cache.write_text(json.dumps(obj))
    assert client.current() is None


def test_client_configuration_errors(central, tmp_path):
    ident = central.host("hosta")
    base = ClientConfig(
        server="http://127.0.0.1:1",
        ca=central.ca.cert_path,
        cert=ident.cert,
        key=ident.key,
        cache=tmp_path / "c.json",
    )
    with pytest.raises(ConfigError, match="https"):
        PolicyClient(base)
    with pytest.raises(ConfigError):
        PolicyClient(dataclasses.replace(base, server="https://x", ca=tmp_path / "none.crt"))
    assert "PRIVATE" not in repr(central.client(ident))
    assert isinstance(PolicyEnvelope.__doc__, str)
