"""Helpers shared by the subprocess tests (test_process.py) and the process
pool tests (test_process_pool.py): which children are left as zombies, and
the fd count of a loop that has run once (so that what the loop opens
lazily on its first iteration is not counted as a leak).
"""

import asyncio
import os
import time

from conftest import open_fds


def zombies():
    """pids of this process's children that have exited and not been reaped."""
    me = str(os.getpid())
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] == "Z" and fields[1] == me:
            found.append(int(entry))
    return found


def gone(pid, timeout=10.0):
    """Wait until pid no longer exists (reaped); True if it went."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not os.path.exists(f"/proc/{pid}"):
            return True
        time.sleep(0.01)
    return False


def warmed_fds(loop):
    """open_fds() after one iteration of loop."""
    loop.run_until_complete(asyncio.sleep(0))
    return open_fds()
