/*
 * threads: 8 pthreads share one hreg_client (each gets its own ring inside
 * libhreg). Every thread inserts, reads back, checks and releases its own
 * values, and now and then does the same through one hreg_submit batch.
 * At the end the registry must hold as many objects as before.
 *
 *   cc threads.c $(pkg-config --cflags --libs hreg) -pthread -o threads
 *   ./threads [ITERATIONS [SOCKET]]      # default 10000 per thread
 */
#include <errno.h>
#include <hreg.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define THREADS 8

static hreg_client *client;
static long iterations = 10000;

#define FAIL(...) do { fprintf(stderr, "threads: " __VA_ARGS__); exit(1); } while (0)

static void expect(int status, int want, const char *what, long i)
{
    if (status != want)
        FAIL("%s (iteration %ld): %s, expected %s\n", what, i,
             hreg_strerror(status), hreg_strerror(want));
}

static void *worker(void *arg)
{
    long id = (long)(intptr_t)arg;
    char value[64], back[64];
    for (long i = 0; i < iterations; i++) {
        memset(value, '.', sizeof value);
        int n = snprintf(value, sizeof value, "thread %ld value %ld", id, i);
        size_t len = (size_t)n + (size_t)(i % 8); /* vary lengths a little */
        hreg_handle h;
        expect(hreg_insert(client, value, len, 0, &h), HREG_OK, "insert", i);
        size_t got = 0;
        expect(hreg_get(client, h, back, sizeof back, &got), HREG_OK, "get", i);
        if (got != len || memcmp(value, back, len) != 0)
            FAIL("thread %ld read back the wrong value at iteration %ld\n", id, i);
        if (i % 64 == 0) {
            /* The same again as one batch: retain, get, release twice. */
            hreg_op ops[4] = {
                {.opcode = HREG_OP_RETAIN, .handle = h},
                {.opcode = HREG_OP_GET, .handle = h, .buf = back, .len = sizeof back},
                {.opcode = HREG_OP_RELEASE, .handle = h},
                {.opcode = HREG_OP_RELEASE, .handle = h},
            };
            expect(hreg_submit(client, ops, 4), HREG_OK, "submit", i);
            if (ops[1].len != len || memcmp(value, back, len) != 0)
                FAIL("thread %ld: batch read back the wrong value\n", id);
            expect(hreg_get(client, h, back, sizeof back, &got), HREG_ERR_STALE,
                   "get after the last release", i);
        } else {
            expect(hreg_release(client, h), HREG_OK, "release", i);
        }
    }
    return NULL;
}

int main(int argc, char **argv)
{
    if (argc > 3) {
        fprintf(stderr, "usage: %s [ITERATIONS [SOCKET]]\n", argv[0]);
        return 2;
    }
    if (argc > 1) {
        char *end;
        errno = 0;
        iterations = strtol(argv[1], &end, 10);
        if (errno != 0 || end == argv[1] || *end != '\0' || iterations < 1) {
            fprintf(stderr, "threads: ITERATIONS must be a positive number, not '%s'\n"
                            "usage: %s [ITERATIONS [SOCKET]]\n", argv[1], argv[0]);
            return 2;
        }
    }
    int status = hreg_connect(argc > 2 ? argv[2] : NULL, &client);
    if (status != HREG_OK)
        FAIL("connect: %s\n", hreg_last_error());
    hreg_stats before, after;
    expect(hreg_stats_get(client, &before), HREG_OK, "stats", 0);

    pthread_t threads[THREADS];
    for (long t = 0; t < THREADS; t++)
        if (pthread_create(&threads[t], NULL, worker, (void *)(intptr_t)t) != 0)
            FAIL("pthread_create failed\n");
    for (int t = 0; t < THREADS; t++)
        pthread_join(threads[t], NULL);

    expect(hreg_stats_get(client, &after), HREG_OK, "stats", 0);
    if (after.objects != before.objects)
        FAIL("%" PRIu64 " objects before, %" PRIu64 " after\n", before.objects, after.objects);
    printf("threads: %d threads x %ld iterations OK (libhreg %s)\n", THREADS, iterations,
           hreg_version());
    hreg_disconnect(client);
    return 0;
}
