from pyipsec.control.labels import STAT_LABELS
from pyipsec.daemon.tables import Counters


def test_every_daemon_counter_has_a_monitor_label() -> None:
    keys = [key for key, _ in STAT_LABELS]
    assert len(keys) == len(set(keys))
    missing = {"ike_sa_additions", "child_rekeys", "authentication_failures"} - set(keys)
    assert not missing
    for name in vars(Counters()):
        if name in ("acquires", "reloads", "failed_reloads"):
            continue  # operational counters, shown by name after the labelled ones
        assert name in keys, name
