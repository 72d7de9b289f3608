"""Suite-wide fixtures and markers.

Tests marked ``netns`` need root: they create network namespaces (names start ``pyi-``)
and remove them afterwards. In CI (which runs as root) they always run; a developer
running the suite without root sees them skipped with the reason.
"""

from __future__ import annotations

import os

import pytest


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.geteuid() == 0:
        return
    if os.environ.get("CI"):
        return  # never hide them in CI: they fail loudly instead
    skip = pytest.mark.skip(reason="needs root (network namespaces)")
    for item in items:
        if "netns" in item.keywords:
            item.add_marker(skip)
