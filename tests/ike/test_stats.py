import dataclasses

import pytest

from ike.harness import Pair
from pyipsec.ike.stats import IkeSaStatistics


def test_ike_sa_statistics_snapshot_is_frozen_and_current():
    p = Pair()
    h = p.connect()
    (snap,) = p.a.ike_sas()
    assert isinstance(snap, IkeSaStatistics) and snap.handle == h
    assert snap.local_id == "192.0.2.1" and snap.remote_id == "192.0.2.2"
    assert snap.established_at is not None and snap.rekey_at > snap.established_at
    with pytest.raises(dataclasses.FrozenInstanceError):
        snap.state = "x"
    p.a.rekey_ike(h, p.now)
    p.advance(10)
    (after,) = p.a.ike_sas()
    assert after.spi_i != snap.spi_i and snap.state == "established"  # old snapshot unchanged
