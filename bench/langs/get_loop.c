/*
 * get_loop.c: one thread reading one 16-byte value in a loop: median
 * latency of an hreg_get (each timed alone) and throughput (an untimed
 * loop). The C line of bench/langs/run.
 *
 *   get_loop SOCKET ITERATIONS
 */
#include <hreg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static int cmp(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

#define TRY(call)                                                                  \
    do {                                                                           \
        int s_ = (call);                                                           \
        if (s_ != HREG_OK) {                                                       \
            fprintf(stderr, "get_loop: %s: %s\n", #call, hreg_strerror(s_));       \
            return 1;                                                              \
        }                                                                          \
    } while (0)

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: %s SOCKET ITERATIONS\n", argv[0]);
        return 2;
    }
    size_t n = strtoul(argv[2], NULL, 10);
    hreg_client *c;
    TRY(hreg_connect(argv[1], &c));
    hreg_handle h;
    TRY(hreg_insert(c, "0123456789abcdef", 16, 0, &h));
    char buf[16];
    size_t len;
    for (size_t i = 0; i < n / 10; i++)
        TRY(hreg_get(c, h, buf, sizeof buf, &len));
    uint64_t *samples = malloc(n * sizeof *samples);
    for (size_t i = 0; i < n; i++) {
        uint64_t start = now_ns();
        TRY(hreg_get(c, h, buf, sizeof buf, &len));
        samples[i] = now_ns() - start;
    }
    qsort(samples, n, sizeof *samples, cmp);
    uint64_t start = now_ns();
    for (size_t i = 0; i < n; i++)
        TRY(hreg_get(c, h, buf, sizeof buf, &len));
    double rate = (double)n / ((double)(now_ns() - start) / 1e9);
    TRY(hreg_release(c, h));
    printf("c get 16 B, 1 thread: p50 %llu ns, %.0f ops/s\n",
           (unsigned long long)samples[n / 2], rate);
    free(samples);
    hreg_disconnect(c);
    return 0;
}
