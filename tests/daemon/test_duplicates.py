"""The rule resolving duplicate IKE SAs (pyipsec.daemon.duplicates), on hand-made tables."""

from __future__ import annotations

from pyipsec.daemon.duplicates import Duplicates, preferred, sa_order
from pyipsec.daemon.tables import ChildSaRow, IkeSaRow


def ike(handle: int, spi_i: str, spi_r: str, *, initiator: bool, at: float = 0.0,
        name: str = "web-db", remote: str = "10.0.0.2", remote_id: str = "10.0.0.2",
        port: int = 500) -> IkeSaRow:  # fmt: skip
    return IkeSaRow(
        handle=handle, name=name, local_addr="10.0.0.1", remote_addr=remote,
        local_id="10.0.0.1", remote_id=remote_id, auth="psk",
        proposal="aes128gcm16-prfsha256-x25519", initiator=initiator,
        spi_i=spi_i, spi_r=spi_r, established=at, rekey_at=None, remote_port=port,
    )  # fmt: skip


def child(ike_sa: int, spi: int, name: str = "db") -> ChildSaRow:
    return ChildSaRow(
        ike_sa=ike_sa, name=name, protocol="esp", mode="transport", spi_in=spi,
        spi_out=spi + 1, algorithm="aes128gcm16", esn=False, encap=False,
        local_ts=[], remote_ts=[], installed=0.0, rekey_at=100.0,
    )  # fmt: skip


def tables(*rows: IkeSaRow) -> dict[int, IkeSaRow]:
    return {r.handle: r for r in rows}


def test_the_lower_spi_pair_stays_and_its_initiator_side_deletes_the_other() -> None:
    # handle 1 we initiated (higher pair), handle 2 we answered (lower pair)
    sas = tables(ike(1, "f000000000000001", "0a", initiator=True),
                 ike(2, "0f00000000000001", "ff", initiator=False, at=0.5))  # fmt: skip
    children = {10: child(1, 10), 20: child(2, 20)}
    rule = Duplicates(grace=2.0, responder_grace=10.0)
    assert rule.has_duplicate(sas, 1) and rule.has_duplicate(sas, 2)
    assert preferred(sas, [1, 2]) == 2
    actions, wake = rule.resolve(sas, children, now=1.0)
    assert actions == [] and wake == 2.5  # the grace runs from the later SA
    (action,), wake = rule.resolve(sas, children, now=2.5)
    assert (action.kind, action.ike_sa, action.keeper, action.children) == (
        "delete", 1, 2, ("db",))  # fmt: skip
    assert rule.resolve(sas, children, now=3.0) == ([], None)  # the Delete went out once


def test_the_other_side_reaches_the_same_keeper_and_waits_longer() -> None:
    """The peer's view of the same two SAs: roles swapped, SPIs identical."""
    sas = tables(ike(5, "f000000000000001", "0a", initiator=False),
                 ike(6, "0f00000000000001", "ff", initiator=True, at=0.5))  # fmt: skip
    children = {10: child(5, 10), 20: child(6, 20)}
    rule = Duplicates(grace=2.0, responder_grace=10.0)
    assert preferred(sas, sas) == 6
    assert rule.resolve(sas, children, now=5.0) == ([], 10.5)  # the initiator acts first
    (action,), _ = rule.resolve(sas, children, now=10.5)  # it did not: we delete it
    assert (action.kind, action.ike_sa, action.keeper) == ("delete", 5, 6)


def test_spis_compare_as_numbers_initiator_spi_first() -> None:
    assert sa_order(ike(1, "00000000000000ff", "01", initiator=True)) < sa_order(
        ike(2, "0000000000000100", "00", initiator=True))  # fmt: skip
    sas = tables(ike(1, "0a", "ff", initiator=True), ike(2, "0a", "0b", initiator=True))
    assert preferred(sas, [1, 2]) == 2 and preferred(sas, []) is None


def test_different_connection_address_or_identity_is_no_duplicate() -> None:
    sas = tables(
        ike(1, "01", "01", initiator=True),
        ike(2, "02", "02", initiator=True, name="other"),
        ike(3, "03", "03", initiator=True, remote="10.0.0.3", remote_id="10.0.0.3"),
        ike(4, "04", "04", initiator=True, remote_id="another-host"),
        ike(5, "05", "05", initiator=True, port=4500),  # another host behind the same NAT
    )
    rule = Duplicates()
    assert not any(rule.has_duplicate(sas, h) for h in sas)
    assert rule.resolve(sas, {}, now=100.0) == ([], None)


def test_three_duplicates_keep_one() -> None:
    sas = tables(ike(1, "03", "01", initiator=True), ike(2, "01", "09", initiator=True),
                 ike(3, "02", "01", initiator=False))  # fmt: skip
    actions, wake = Duplicates(grace=1.0, responder_grace=5.0).resolve(sas, {}, now=1.0)
    assert [(a.kind, a.ike_sa, a.keeper) for a in actions] == [("delete", 1, 2)]
    assert wake == 5.0  # handle 3 is the peer's to delete first


def test_a_child_the_keeper_lacks_moves_first() -> None:
    sas = tables(ike(1, "09", "09", initiator=True), ike(2, "01", "01", initiator=False))
    children = {10: child(1, 10, "tcp"), 11: child(1, 11, "udp"), 20: child(2, 20, "tcp")}
    rule = Duplicates(grace=1.0, move_wait=4.0)
    (action,), wake = rule.resolve(sas, children, now=1.0)
    assert (action.kind, action.ike_sa, action.keeper, action.children) == (
        "move", 1, 2, ("udp",))  # fmt: skip
    assert wake == 5.0
    assert rule.resolve(sas, children, now=2.0) == ([], 5.0)  # asked once, waiting
    children[21] = child(2, 21, "udp")  # installed inside the keeper
    (action,), _ = rule.resolve(sas, children, now=2.5)
    assert (action.kind, action.ike_sa) == ("delete", 1)


def test_a_move_that_never_completes_still_ends_the_duplicate() -> None:
    sas = tables(ike(1, "09", "09", initiator=True), ike(2, "01", "01", initiator=False))
    children = {10: child(1, 10, "udp")}
    rule = Duplicates(grace=1.0, move_wait=4.0)
    (action,), _ = rule.resolve(sas, children, now=1.0)
    assert action.kind == "move"
    assert rule.resolve(sas, children, now=4.9) == ([], 5.0)
    (action,), _ = rule.resolve(sas, children, now=5.0)
    assert action.kind == "delete"


def test_state_of_gone_sas_is_forgotten() -> None:
    sas = tables(ike(1, "09", "09", initiator=True), ike(2, "01", "01", initiator=False))
    rule = Duplicates(grace=1.0)
    (action,), _ = rule.resolve(sas, {}, now=1.0)
    del sas[1]
    assert rule.resolve(sas, {}, now=2.0) == ([], None)
    assert not rule._deleted and not rule._moves


def _peer(tmp_path, remote: str):
    import os

    from pyipsec.daemon.config import load_config

    secrets = tmp_path / "secrets.yaml"
    secrets.write_text('psk:\n  c: "shared secret key"\n')
    os.chmod(secrets, 0o600)
    path = tmp_path / "pyipsec.yaml"
    path.write_text(
        "secrets: secrets.yaml\nconnections:\n  c:\n    local_addrs: [10.0.0.1]\n"
        f'    remote_addrs: ["{remote}"]\n    local: {{auth: psk, id: 10.0.0.1}}\n'
        "    remote: {auth: psk}\n    children:\n"
        '      all: {local_ts: ["10.0.0.0/24"], remote_ts: ["0.0.0.0/0"]}\n'
    )
    return load_config(str(path)).endpoint.peer("c")


def test_child_to_move_is_narrowed_to_the_two_hosts_of_an_any_connection(tmp_path) -> None:
    from pyipsec.daemon.duplicates import child_to_move

    keeper = ike(1, "01", "01", initiator=False, name="c")
    child, remote = child_to_move(_peer(tmp_path, "%any"), keeper, "all")
    assert remote == "10.0.0.2" and child is not None
    assert child.local_ts == ("10.0.0.1",) and child.remote_ts == ("10.0.0.2",)
    assert child_to_move(_peer(tmp_path, "%any"), keeper, "gone") == (None, "")


def test_child_to_move_of_a_single_peer_connection_is_the_configured_one(tmp_path) -> None:
    from pyipsec.daemon.duplicates import child_to_move

    peer = _peer(tmp_path, "10.0.0.2")
    child, remote = child_to_move(peer, ike(1, "01", "01", initiator=True, name="c"), "all")
    assert remote == "" and child == peer.child("all")
