#!/usr/bin/env python3
"""Durable 4 KiB writes (O_DIRECT | O_DSYNC) from 1, 2, 4 and 8 threads at once, each thread
at its own offsets: how much of a second write's latency the device overlaps with the first.
The audit log's writer keeps one durable write in flight; this says what more would buy.

    python3 bench/direct-writes.py [DIR]     # DIR: where the test file goes (default /var/tmp)

The file (64 MiB) is written with zeros first ("zeroed", as the gateway keeps its preallocated
region with direct writes) or only sized ("sparse", as it does with buffered writes), and
removed at the end. A second table appends records the way the audit log does (each durable
write rewrites the partly filled last block with the records after it), one writer.
"""
import mmap
import os
import sys
import threading
import time

BLOCK = 4096
SIZE = 64 << 20
SECONDS = 3


def prepare(path, zeroed):
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        if zeroed:
            chunk = b"\0" * (1 << 20)
            for _ in range(SIZE // len(chunk)):
                os.write(fd, chunk)
        else:
            os.ftruncate(fd, SIZE)
        os.fsync(fd)
    finally:
        os.close(fd)


def run(path, threads):
    counts = [0] * threads
    stop = time.monotonic() + SECONDS

    def worker(i):
        fd = os.open(path, os.O_RDWR | os.O_DIRECT | os.O_DSYNC)
        buf = mmap.mmap(-1, BLOCK)  # page-aligned, as O_DIRECT needs
        buf.write(b"x" * BLOCK)
        offset = i * BLOCK
        try:
            while time.monotonic() < stop:
                os.pwrite(fd, buf, offset)
                offset = (offset + threads * BLOCK) % SIZE
                counts[i] += 1
        finally:
            os.close(fd)

    workers = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return sum(counts) / SECONDS


def append(path, record):
    """One writer appending `record`-byte records as the log does; gives writes/s, median and
    90th percentile latency in µs."""
    fd = os.open(path, os.O_RDWR | os.O_DIRECT | os.O_DSYNC)
    buf = mmap.mmap(-1, BLOCK * 4)
    buf.write(b"x" * (BLOCK * 4))
    end, latencies = 0, []
    stop = time.monotonic() + SECONDS
    try:
        while time.monotonic() < stop:
            start = end - end % BLOCK
            end += record
            blocks = (end - start + BLOCK - 1) // BLOCK
            began = time.perf_counter()
            os.pwrite(fd, memoryview(buf)[: blocks * BLOCK], start)
            latencies.append(time.perf_counter() - began)
    finally:
        os.close(fd)
    latencies.sort()
    return (
        len(latencies) / SECONDS,
        latencies[len(latencies) // 2] * 1e6,
        latencies[len(latencies) * 9 // 10] * 1e6,
    )


def main():
    directory = sys.argv[1] if len(sys.argv) > 1 else "/var/tmp"
    path = os.path.join(directory, f"gatehouse-direct-writes-{os.getpid()}")
    print("| file | threads | durable writes/s | µs per write, per thread | vs 1 thread |")
    print("|---|---|---|---|---|")
    try:
        for zeroed in (False, True):
            prepare(path, zeroed)
            base = None
            for threads in (1, 2, 4, 8):
                rate = run(path, threads)
                base = base or rate
                print(
                    f"| {'zeroed' if zeroed else 'sparse'} | {threads} | {rate:.0f} | "
                    f"{threads * 1e6 / rate:.0f} | {rate / base:.2f}x |"
                )
        print()
        print("| file | record bytes | durable appends/s | median µs | p90 µs |")
        print("|---|---|---|---|---|")
        for record in (700, 2000):
            for zeroed in (False, True):
                prepare(path, zeroed)
                rate, median, p90 = append(path, record)
                print(
                    f"| {'zeroed' if zeroed else 'sparse'} | {record} | {rate:.0f} | "
                    f"{median:.0f} | {p90:.0f} |"
                )
    finally:
        if os.path.exists(path):
            os.remove(path)


if __name__ == "__main__":
    main()
