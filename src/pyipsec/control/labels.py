"""Names of the daemon's statistics counters in the words of an IP security monitor.

Shared by ``pyipsec stats``, the web monitor and anything else that shows the counters
of the control API's ``statistics`` command, in this order.
"""

from __future__ import annotations

STAT_LABELS: list[tuple[str, str]] = [
    ("active_ike_sas", "Active Main Mode SAs"),
    ("active_child_sas", "Active Quick Mode SAs"),
    ("ike_sa_additions", "Main Mode key additions"),
    ("ike_sa_deletions", "Main Mode key deletions"),
    ("child_sa_additions", "Quick Mode key additions"),
    ("child_sa_deletions", "Quick Mode key deletions"),
    ("ike_rekeys", "Main Mode rekeys"),
    ("child_rekeys", "Quick Mode rekeys"),
    ("authentication_failures", "Authentication failures"),
    ("negotiation_failures", "Negotiation failures"),
    ("nat_keepalives_sent", "NAT keepalives sent"),
    ("unsecured_fallbacks", "Unsecured fallbacks (hosts without IPsec)"),
    ("duplicate_ike_sas_deleted", "Duplicate Main Mode SAs deleted"),
    ("active_fallbacks", "Hosts talked to in clear after fallback"),
    ("unprotected_packets_dropped", "Clear-text packets dropped (IPsec required)"),
    ("discarded_packets", "Packets dropped by block rules"),
    ("fail_closed_drops", "Protected packets kept from other interfaces"),
    ("bad_spi_packets", "Bad SPI packets"),
    ("packets_not_decrypted", "Packets not decrypted"),
    ("packets_not_authenticated", "Packets not authenticated"),
    ("replayed_packets", "Packets with replay detection"),
    ("selector_mismatch_packets", "Packets with selector mismatch"),
    ("malformed_packets", "Malformed packets"),
    ("confidential_bytes_out", "Confidential bytes sent"),
    ("confidential_bytes_in", "Confidential bytes received"),
    ("authenticated_bytes_out", "Authenticated bytes sent"),
    ("authenticated_bytes_in", "Authenticated bytes received"),
    ("bytes_out", "Bytes sent"),
    ("bytes_in", "Bytes received"),
    ("packets_out", "Packets sent"),
    ("packets_in", "Packets received"),
]
