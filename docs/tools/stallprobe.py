#!/usr/bin/env python3
"""How long this machine stops running a thread that asked to run: a probe sleeps 200 µs again
and again for a few seconds and reports how late it woke (oversleep percentiles).

With --fsync, a child process meanwhile writes 140 bytes and fdatasyncs them in a loop, the
I/O pattern of a WAL under light load. Run the probe at real-time priority (chrt -f 50) so that
the guest's own scheduler cannot delay it: what remains is the machine (the VM) not running.

    chrt -f 50 python3 docs/tools/stallprobe.py            # idle machine
    chrt -f 50 python3 docs/tools/stallprobe.py --fsync    # while a file is fdatasync'd
    chrt -f 50 python3 docs/tools/stallprobe.py &  ledger-load …   # next to a real load

Standard library only. See docs/performance.md, "POS protocol", for what it showed here.
"""

import argparse
import os
import tempfile
import time


def fsync_loop(path, seconds):
    """Writes 140-byte records at increasing offsets, each made durable by fdatasync."""
    fd = os.open(path, os.O_WRONLY)
    record, offset, count = b"x" * 140, 0, 0
    end = time.time() + seconds
    while time.time() < end:
        os.pwrite(fd, record, offset)
        os.fdatasync(fd)
        offset = (offset + len(record)) % (64 << 20)
        count += 1
    os.close(fd)
    print(f"fdatasyncs/s: {count / seconds:.0f}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fsync", action="store_true", help="fdatasync a file meanwhile")
    parser.add_argument("--seconds", type=float, default=5.0, help="how long (at most 60)")
    args = parser.parse_args()
    seconds = min(max(args.seconds, 1.0), 60.0)
    child = 0
    if args.fsync:
        handle, path = tempfile.mkstemp(prefix="stallprobe-", dir=".")
        os.write(handle, b"\0" * (64 << 20))
        os.fsync(handle)
        os.close(handle)
        child = os.fork()
        if child == 0:
            fsync_loop(path, seconds)
            os._exit(0)
    late = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        started = time.perf_counter()
        time.sleep(0.0002)
        late.append(time.perf_counter() - started - 0.0002)
    if child:
        os.waitpid(child, 0)
        os.unlink(path)
    late.sort()

    def quantile(q):
        return round(late[min(len(late) - 1, int(len(late) * q))] * 1e6)

    print(
        f"oversleep µs over {len(late)} sleeps: p50 {quantile(0.5)}  p99 {quantile(0.99)}  "
        f"p99.9 {quantile(0.999)}  max {round(late[-1] * 1e6)}"
    )


if __name__ == "__main__":
    main()
