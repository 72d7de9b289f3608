"""nftables through ``nft -j``: apply a JSON ruleset atomically, delete a table, list it.

Every change is one ``nft -j -f -`` run: nft applies the whole JSON document as one
transaction, so the kernel sees the old table or the new one, never half of it. Replacing a
table uses the add/delete/add idiom inside that one transaction (the first ``add`` makes
the ``delete`` succeed when the table does not exist yet).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass
from typing import Any

from pyipsec.errors import PyipsecError

NFT = "nft"


class NftError(PyipsecError):
    """``nft`` refused a ruleset (the message is nft's own, without the ruleset)."""


@dataclass(frozen=True, slots=True)
class TableRef:
    family: str = "inet"
    name: str = "pyipsec"

    def obj(self) -> dict[str, str]:
        return {"family": self.family, "name": self.name}


def _run(args: list[str], data: str | None = None) -> str:
    exe = shutil.which(NFT) or NFT
    res = subprocess.run([exe, *args], input=data, capture_output=True, text=True, timeout=30)
    if res.returncode != 0:
        raise NftError(f"nft {' '.join(args)}: {res.stderr.strip()[:500]}")
    return res.stdout


def apply(commands: list[dict[str, Any]]) -> None:
    """Run a list of JSON commands (``{"add": {...}}``...) as one transaction."""
    _run(["-j", "-f", "-"], json.dumps({"nftables": commands}))


def replace_table(table: TableRef, body: list[dict[str, Any]]) -> None:
    """Atomically replace ``table`` by a fresh one holding ``body`` (chains and rules)."""
    head = [
        {"add": {"table": table.obj()}},
        {"delete": {"table": table.obj()}},
        {"add": {"table": table.obj()}},
    ]
    apply(head + body)


def delete_table(table: TableRef) -> bool:
    """Delete ``table`` if it exists; True if it did."""
    if not table_exists(table):
        return False
    apply([{"delete": {"table": table.obj()}}])
    return True


def table_exists(table: TableRef) -> bool:
    try:
        _run(["-j", "list", "table", table.family, table.name])
    except NftError:
        return False
    return True


def list_table(table: TableRef) -> list[dict[str, Any]]:
    """The table's objects as nft prints them (``[{"rule": {...}}, ...]``)."""
    out = json.loads(_run(["-j", "list", "table", table.family, table.name]))
    return [o for o in out.get("nftables", []) if "metainfo" not in o]


def rule_counters(table: TableRef) -> dict[str, tuple[int, int]]:
    """(packets, bytes) of every rule carrying a comment, keyed by the comment."""
    counters: dict[str, tuple[int, int]] = {}
    for obj in list_table(table):
        rule = obj.get("rule")
        if not rule or "comment" not in rule:
            continue
        for expr in rule.get("expr", []):
            if "counter" in expr:
                c = expr["counter"]
                old = counters.get(rule["comment"], (0, 0))
                counters[rule["comment"]] = (old[0] + c["packets"], old[1] + c["bytes"])
    return counters
