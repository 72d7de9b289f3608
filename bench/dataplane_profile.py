"""Where does the pyipsec data plane spend its time? py-spy under iperf3 load.

Sets up the same namespaces and static SAs as bench/tunnel_bench.py (tunnel mode with
ESP-in-UDP, or transport mode with raw ESP), starts ``pyipsec dataplane --static`` in both,
runs iperf3 TCP from A to B, and samples every data plane worker process (the outbound
and inbound workers on each side) with py-spy for ``--seconds``. It prints, per worker,
the functions with the most samples of their own ("self") and including callees, with the
epoll wait split out as idle, and keeps py-spy's collapsed stacks (``--out DIR``) for
flame graphs.

py-spy is a measuring tool, not a project dependency: ``.venv/bin/pip install py-spy``.
DESIGN.md notes that ``--native`` (C frames too) is more faithful than cProfile.

Usage: ``.venv/bin/python bench/dataplane_profile.py [--mode tunnel|transport]
[--seconds 10] [--native] [--out DIR]``
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import tunnel_bench as tb  # noqa: E402
from strongswan import stop_process  # noqa: E402  (tunnel_bench put tests/ on the path)

_FRAME = re.compile(r"^(?P<func>.+) \((?P<path>[^:]+):(?P<line>\d+)\)$")
_ROOTS = [str(tb.REPO / "src"), *sys.path]


def worker_pids(pid: int) -> list[int]:
    """The direct children of ``pid`` (the data plane's direction workers)."""
    kids: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            kids += [int(x) for x in (task / "children").read_text().split()]
    return kids


_NATIVE_WAITS = ("epoll_wait", "epoll_pwait", "__poll", "poll", "ppoll", "select", "pselect")


def _is_wait(frame: str, cache: dict[str, bool]) -> bool:
    """True if the frame is waiting, not working: a Python line calling poll()/select(),
    or (with --native) the C function doing the wait."""
    if frame not in cache:
        if frame.split(" (", 1)[0] in _NATIVE_WAITS:
            cache[frame] = True
            return True
        m = _FRAME.match(frame)
        text = ""
        for root in _ROOTS if m else []:
            source = Path(root, m["path"])  # py-spy prints paths relative to sys.path
            if source.is_file():
                with contextlib.suppress(OSError, IndexError):
                    text = source.read_text().splitlines()[int(m["line"]) - 1]
                break
        cache[frame] = bool(re.search(r"\b(e?poll|select)\(", text))
    return cache[frame]


def _short(frame: str) -> str:
    return re.sub(r" \((?:/[^ ]*/(?:src/|site-packages/|python3\.\d+/))", " (", frame)


def summarize(path: Path, top: int) -> str:
    """Self and inclusive sample shares from a py-spy ``--format raw`` file."""
    own: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    total = idle = 0
    waits: dict[str, bool] = {}
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        raw = [f for f in stack.split(";") if not f.startswith(("process ", "thread "))]
        if not raw:
            continue
        total += n
        if _is_wait(raw[-1], waits):
            idle += n
            continue
        frames = [_short(f) for f in raw]
        own[frames[-1]] += n
        for f in set(frames):
            incl[f] += n
    if total == 0:
        return f"{path.name}: no samples"
    busy = max(total - idle, 1)
    out = [f"{path.name}: {total} samples, {100 * idle / total:.0f}% waiting in epoll"]
    out.append("  self (share of busy samples):")
    for f, c in own.most_common(top):
        out.append(f"    {100 * c / busy:5.1f}%  {f}")
    out.append("  inclusive (share of busy samples), pyipsec frames only:")
    shown = 0
    for f, c in incl.most_common():
        if "pyipsec/" not in f or re.match(r"(Outbound|Inbound)Worker\.run |\w+_main ", f):
            continue
        if any(k in f for k in ("service.py", "cli/", "Service.")):
            continue
        out.append(f"    {100 * c / busy:5.1f}%  {f}")
        shown += 1
        if shown >= top:
            break
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", choices=("tunnel", "transport"), default="tunnel")
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--native", action="store_true", help="py-spy --native (C frames)")
    parser.add_argument("--top", type=int, default=12)
    parser.add_argument("--dataplane-args", default="", metavar="ARGS",
                        help="extra options for `pyipsec dataplane` (e.g. =--tso)")  # fmt: skip
    parser.add_argument("--out", metavar="DIR", help="keep collapsed stacks and logs here")
    args = parser.parse_args(argv)
    spy = shutil.which("py-spy") or str(tb.REPO / ".venv" / "bin" / "py-spy")
    if not os.path.exists(spy):
        print("py-spy not installed (.venv/bin/pip install py-spy): nothing measured")
        return 1
    reason = tb.pyipsec_available()
    if reason:
        print(f"cannot profile: {reason}")
        return 1
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="pyi-prof-"))
    out.mkdir(parents=True, exist_ok=True)
    keys = {"ab": os.urandom(20), "ba": os.urandom(20)}
    src, dst = (tb.INNER_A, tb.INNER_B) if args.mode == "tunnel" else (tb.OUTER_A, tb.OUTER_B)
    files: list[Path] = []
    with tb.bench_lock():  # before touching pyi-ba / pyi-bb
        try:
            with tb.netns_pair(), contextlib.ExitStack() as stack:
                procs: dict[str, subprocess.Popen] = {}
                for side, ns in (("a", tb.NS_A), ("b", tb.NS_B)):
                    path = out / f"static-{args.mode}-{side}.yaml"
                    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                    with os.fdopen(fd, "w") as f:
                        f.write(tb.pyipsec_static_yaml(side, args.mode, keys))
                    log = open(out / f"pyipsec-{args.mode}-{side}.log", "wb")  # noqa: SIM115
                    stack.callback(log.close)
                    proc = subprocess.Popen(
                        [
                            "ip",
                            "netns",
                            "exec",
                            ns,
                            tb.PYIPSEC,
                            "dataplane",
                            *args.dataplane_args.split(),
                            "--static",
                            str(path),
                        ],  # fmt: skip
                        stdout=log,
                        stderr=subprocess.STDOUT,
                    )
                    stack.callback(tb.kill_leftovers, ns)
                    stack.callback(stop_process, proc)
                    procs[ns] = proc
                tb.wait_dataplanes(procs, out, args.mode)
                tb.wait_ping(tb.NS_A, src, dst)
                stack.enter_context(tb.iperf3_server(dst))
                client = subprocess.Popen(
                    [
                        "ip",
                        "netns",
                        "exec",
                        tb.NS_A,
                        "iperf3",
                        "-c",
                        dst,
                        "-B",
                        src,
                        "-t",
                        str(args.seconds + 4),
                    ],  # fmt: skip
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    text=True,
                )
                stack.callback(stop_process, client)
                time.sleep(2)  # past slow start
                spies = []
                for ns, proc in procs.items():
                    for index, pid in enumerate(worker_pids(proc.pid)):
                        target = out / f"{args.mode}-{ns}-worker{index}-{pid}.txt"
                        cmd = [spy, "record", "-p", str(pid), "-d", str(args.seconds), "-r", "200",
                               "-f", "raw", "-o", str(target)]  # fmt: skip
                        if args.native:
                            cmd.insert(2, "--native")
                        spies.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL,
                                                      stderr=subprocess.DEVNULL))  # fmt: skip
                        files.append(target)
                for spy_proc in spies:
                    spy_proc.wait(timeout=args.seconds + 60)
                report, _ = client.communicate(timeout=args.seconds + 30)
                rates = [ln for ln in report.splitlines() if "receiver" in ln]
                print(f"iperf3 during the profile: {rates[-1].strip() if rates else report[-200:]}")
        except KeyboardInterrupt:
            print("interrupted")
            return 130
        finally:
            for ns in (tb.NS_A, tb.NS_B):
                tb.kill_leftovers(ns)
                tb.run(["ip", "netns", "del", ns], check=False)
    for path in files:
        if path.exists():
            print(summarize(path, args.top))
    if not args.out:
        shutil.rmtree(out, ignore_errors=True)
    else:
        print(f"collapsed stacks kept in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
