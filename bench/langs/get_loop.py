"""One thread reading one 16-byte value in a loop: median latency of a get
(each timed alone) and throughput (an untimed loop). The Python line of
bench/langs/run.

    python get_loop.py SOCKET ITERATIONS
"""

import sys
import time

import hreg


def main() -> None:
    socket, n = sys.argv[1], int(sys.argv[2])
    with hreg.connect(socket) as c:
        h = c.insert(b"0123456789abcdef")
        get = c.get
        for _ in range(n // 10):
            get(h)
        clock = time.perf_counter_ns
        samples = []
        for _ in range(n):
            start = clock()
            get(h)
            samples.append(clock() - start)
        samples.sort()
        start = time.perf_counter()
        for _ in range(n):
            get(h)
        rate = n / (time.perf_counter() - start)
        c.release(h)
    print(f"python get 16 B, 1 thread: p50 {samples[n // 2]} ns, {rate:.0f} ops/s")


if __name__ == "__main__":
    main()
