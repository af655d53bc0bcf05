"""Sign-in memory under 50 simultaneous attempts: scrypt holds 32 MiB per hash, so unbounded
hashing grows the process by ~1.6 GB; strongroom hashes `STRONGROOM_LOGIN_HASH_CONCURRENCY` (2)
at a time and queues the rest.

Peer, same run: the same 50 attempts with no bound (50 slots). Each side runs in a fresh child
process, and its peak RSS (VmHWM) is read from /proc.

    python bench/signin.py [--attempts 50] [--slots 2]
"""

from __future__ import annotations

import argparse
import subprocess
import sys

CHILD = """
import sys, threading, time
from audit.auth import Slots, check_password, hash_password
slots, attempts = Slots(int(sys.argv[1])), int(sys.argv[2])
stored = hash_password("correct horse battery staple")
def vm(name):
    return int(next(l for l in open("/proc/self/status") if l.startswith(name)).split()[1]) / 1024
before = vm("VmRSS:")
def attempt():
    with slots():
        check_password("wrong guess", stored)
t0 = time.perf_counter()
threads = [threading.Thread(target=attempt) for _ in range(attempts)]
for t in threads: t.start()
for t in threads: t.join()
print(f"{vm('VmHWM:') - before:.0f} {time.perf_counter() - t0:.2f} {slots.peak}")
"""


def run(slots: int, attempts: int) -> tuple[float, float, int]:
    from _common import REPO

    out = subprocess.run([sys.executable, "-c", CHILD, str(slots), str(attempts)], capture_output=True, text=True,
                         check=True, cwd=REPO, env={"PYTHONPATH": str(REPO)}).stdout.split()
    return float(out[0]), float(out[1]), int(out[2])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--attempts", type=int, default=50)
    ap.add_argument("--slots", type=int, default=2)
    args = ap.parse_args()
    grown, seconds, peak = run(args.slots, args.attempts)
    peer_grown, peer_seconds, peer_peak = run(args.attempts, args.attempts)
    print(f"{args.attempts} simultaneous sign-ins, {args.slots} hashing slots: peak RSS +{grown:.0f} MB, "
          f"{seconds:.2f} s, at most {peak} hashes at once")
    print(f"peer (unbounded, {args.attempts} slots): peak RSS +{peer_grown:.0f} MB, {peer_seconds:.2f} s, "
          f"{peer_peak} at once; memory ratio {grown / max(peer_grown, 1):.3f}x")


if __name__ == "__main__":
    main()
