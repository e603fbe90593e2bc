/*
 * read_ratio.c: from C, in one run, hreg_get of a 16-byte value on a hot
 * key against the origin's in-process answer: a map of 64 shards (picked
 * by key % 64), each a pthread rwlock around an open-addressing hash
 * table of 16-byte values; a get is read lock, lookup, 16-byte copy,
 * unlock. Then a handle's whole life, the origin's workload: hreg_insert +
 * hreg_get + hreg_release of a 16-byte value against the map's insert
 * (write lock) + get + delete (write lock) of a new key. Section 7 of
 * hreg-bench compiles and runs it (issue 11's target: hreg_get within 1.5x
 * of the map; issue 19's: a life within 2x).
 *
 *   read_ratio SOCKET MILLIS REPS pinned|unpinned
 *
 * Each repetition reads for MILLIS ms with each contender in turn (the
 * order alternating), in blocks of 256 reads timed as one (one read is
 * shorter than the clock). It prints one JSON line: per contender and
 * repetition, the median time per read over the blocks (ns) and the reads
 * per second (millions). "pinned" runs on the first CPU it may use.
 */
#define _GNU_SOURCE
#include <hreg.h>
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define SHARDS 64
#define KEYS 100000u
#define BLOCK 256
#define MAX_BLOCKS (1u << 20)
#define MAX_REPS 64

/* One shard: keys (0 is empty) and their values, linear probing. */
struct shard {
    pthread_rwlock_t lock;
    uint64_t *keys;
    uint8_t (*values)[16];
    uint64_t mask;
};

static struct shard shards[SHARDS];

static uint64_t slot_of(uint64_t key, uint64_t mask)
{
    return (key * 0x9E3779B97F4A7C15u >> 20) & mask;
}

static int map_init(void)
{
    /* Each shard at most half full. */
    uint64_t cap = 1;
    while (cap < 2 * (KEYS / SHARDS + 1))
        cap <<= 1;
    for (int s = 0; s < SHARDS; s++) {
        struct shard *sh = &shards[s];
        if (pthread_rwlock_init(&sh->lock, NULL) != 0)
            return -1;
        sh->keys = calloc(cap, sizeof *sh->keys);
        sh->values = calloc(cap, sizeof *sh->values);
        if (!sh->keys || !sh->values)
            return -1;
        sh->mask = cap - 1;
    }
    for (uint64_t key = 1; key <= KEYS; key++) {
        struct shard *sh = &shards[key % SHARDS];
        uint64_t i = slot_of(key, sh->mask);
        while (sh->keys[i] != 0)
            i = (i + 1) & sh->mask;
        sh->keys[i] = key;
        for (int b = 0; b < 16; b++)
            sh->values[i][b] = (uint8_t)(key * 131 + (uint64_t)b);
    }
    return 0;
}

/* The cyclic distance from a key's home slot `home` to slot `at`. */
static uint64_t probe_distance(uint64_t home, uint64_t at, uint64_t mask)
{
    return (at - home) & mask;
}

/* A call, as hreg_insert is one; the key must be new. */
__attribute__((noinline)) static void map_insert(uint64_t key, const uint8_t value[16])
{
    struct shard *sh = &shards[key % SHARDS];
    pthread_rwlock_wrlock(&sh->lock);
    uint64_t i = slot_of(key, sh->mask);
    while (sh->keys[i] != 0)
        i = (i + 1) & sh->mask;
    sh->keys[i] = key;
    memcpy(sh->values[i], value, 16);
    pthread_rwlock_unlock(&sh->lock);
}

/* A call, as hreg_release is one: removes `key` (backward-shift deletion,
 * so the table stays without tombstones); whether it was there. */
__attribute__((noinline)) static int map_delete(uint64_t key)
{
    struct shard *sh = &shards[key % SHARDS];
    int found = 0;
    pthread_rwlock_wrlock(&sh->lock);
    uint64_t i = slot_of(key, sh->mask);
    for (; sh->keys[i] != 0; i = (i + 1) & sh->mask) {
        if (sh->keys[i] == key) {
            found = 1;
            break;
        }
    }
    if (found) {
        for (uint64_t j = (i + 1) & sh->mask; sh->keys[j] != 0; j = (j + 1) & sh->mask) {
            uint64_t home = slot_of(sh->keys[j], sh->mask);
            /* Moves back what would no longer be found past the hole. */
            if (probe_distance(home, j, sh->mask) >= probe_distance(i, j, sh->mask)) {
                sh->keys[i] = sh->keys[j];
                memcpy(sh->values[i], sh->values[j], 16);
                i = j;
            }
        }
        sh->keys[i] = 0;
    }
    pthread_rwlock_unlock(&sh->lock);
    return found;
}

/* A call, as hreg_get is one. */
__attribute__((noinline)) static int map_get(uint64_t key, uint8_t out[16])
{
    struct shard *sh = &shards[key % SHARDS];
    int found = 0;
    pthread_rwlock_rdlock(&sh->lock);
    for (uint64_t i = slot_of(key, sh->mask); sh->keys[i] != 0; i = (i + 1) & sh->mask) {
        if (sh->keys[i] == key) {
            memcpy(out, sh->values[i], 16);
            found = 1;
            break;
        }
    }
    pthread_rwlock_unlock(&sh->lock);
    return found;
}

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* Read back through volatiles, so no read can be hoisted out of the loop. */
static volatile uint64_t hot_key = 4242;
static volatile hreg_handle hot_handle;
static volatile uint8_t sink;

enum contender { HREG, MAP, HREG_LIFE, MAP_LIFE };

/* Keys of the map's lives: new ones, after the KEYS stored. */
static uint64_t next_key = KEYS + 1;
static const uint8_t life_value[16] = "life:0123456789";

struct figures {
    double p50_ns[MAX_REPS];
    double mops[MAX_REPS];
};

static double *per_read; /* MAX_BLOCKS */

/* One repetition of one contender; 0, or -1 after printing why. */
static int run(enum contender who, hreg_client *c, uint64_t millis, struct figures *out, int rep)
{
    uint64_t deadline = now_ns() + millis * 1000000u, busy = 0, reads = 0;
    size_t blocks = 0;
    uint8_t buf[16];
    size_t len;
    for (;;) {
        uint64_t start = now_ns();
        if (start >= deadline)
            break;
        for (int i = 0; i < BLOCK; i++) {
            if (who == HREG_LIFE) {
                hreg_handle h;
                int s = hreg_insert(c, life_value, 16, 0, &h);
                if (s == HREG_OK)
                    s = hreg_get(c, h, buf, sizeof buf, &len);
                if (s == HREG_OK && (len != 16 || memcmp(buf, life_value, 16) != 0)) {
                    fprintf(stderr, "read_ratio: a life read back a wrong value\n");
                    return -1;
                }
                if (s == HREG_OK)
                    s = hreg_release(c, h);
                if (s != HREG_OK) {
                    fprintf(stderr, "read_ratio: a life: %s\n", hreg_strerror(s));
                    return -1;
                }
            } else if (who == MAP_LIFE) {
                uint64_t key = next_key++;
                map_insert(key, life_value);
                if (!map_get(key, buf) || !map_delete(key)) {
                    fprintf(stderr, "read_ratio: a map life lost its key\n");
                    return -1;
                }
            } else if (who == HREG) {
                int s = hreg_get(c, hot_handle, buf, sizeof buf, &len);
                if (s != HREG_OK || len != 16) {
                    fprintf(stderr, "read_ratio: hreg_get: %s\n", hreg_strerror(s));
                    return -1;
                }
            } else if (!map_get(hot_key, buf)) {
                fprintf(stderr, "read_ratio: the hot key is missing\n");
                return -1;
            }
            sink ^= buf[0] ^ buf[15];
        }
        uint64_t took = now_ns() - start;
        busy += took;
        reads += BLOCK;
        if (blocks < MAX_BLOCKS)
            per_read[blocks++] = (double)took / BLOCK;
    }
    if (who == HREG_LIFE) {
        /* The rate counts lives applied: posted writes return before. */
        uint64_t start = now_ns();
        int s = hreg_flush(c);
        if (s != HREG_OK) {
            fprintf(stderr, "read_ratio: hreg_flush: %s\n", hreg_strerror(s));
            return -1;
        }
        busy += now_ns() - start;
    }
    if (blocks == 0) {
        fprintf(stderr, "read_ratio: no block in %llu ms\n", (unsigned long long)millis);
        return -1;
    }
    qsort(per_read, blocks, sizeof *per_read, cmp_double);
    out->p50_ns[rep] = per_read[blocks / 2];
    out->mops[rep] = (double)reads / ((double)busy / 1e3);
    return 0;
}

static void print_figures(const char *name, const struct figures *f, int reps, const char *end)
{
    printf("\"%s\":{\"p50_ns\":[", name);
    for (int r = 0; r < reps; r++)
        printf("%s%.3f", r ? "," : "", f->p50_ns[r]);
    printf("],\"mops\":[");
    for (int r = 0; r < reps; r++)
        printf("%s%.4f", r ? "," : "", f->mops[r]);
    printf("]}%s", end);
}

int main(int argc, char **argv)
{
    if (argc != 5 || (strcmp(argv[4], "pinned") != 0 && strcmp(argv[4], "unpinned") != 0)) {
        fprintf(stderr, "usage: %s SOCKET MILLIS REPS pinned|unpinned\n", argv[0]);
        return 2;
    }
    uint64_t millis = strtoull(argv[2], NULL, 10);
    int reps = atoi(argv[3]);
    if (millis == 0 || reps < 1 || reps > MAX_REPS) {
        fprintf(stderr, "read_ratio: MILLIS > 0 and REPS in 1..%d\n", MAX_REPS);
        return 2;
    }
    if (strcmp(argv[4], "pinned") == 0) {
        cpu_set_t allowed, one;
        CPU_ZERO(&one);
        if (sched_getaffinity(0, sizeof allowed, &allowed) != 0)
            return perror("sched_getaffinity"), 1;
        for (int cpu = 0; cpu < CPU_SETSIZE; cpu++) {
            if (CPU_ISSET(cpu, &allowed)) {
                CPU_SET(cpu, &one);
                break;
            }
        }
        if (sched_setaffinity(0, sizeof one, &one) != 0)
            return perror("sched_setaffinity"), 1;
    }
    per_read = malloc(MAX_BLOCKS * sizeof *per_read);
    if (!per_read || map_init() != 0) {
        fprintf(stderr, "read_ratio: out of memory\n");
        return 1;
    }
    hreg_client *c;
    int s = hreg_connect(argv[1], &c);
    if (s != HREG_OK) {
        fprintf(stderr, "read_ratio: hreg_connect: %s\n", hreg_strerror(s));
        return 1;
    }
    hreg_handle h;
    s = hreg_insert(c, "0123456789abcdef", 16, 0, &h);
    if (s != HREG_OK) {
        fprintf(stderr, "read_ratio: hreg_insert: %s\n", hreg_strerror(s));
        return 1;
    }
    hot_handle = h;
    static struct figures figures[4];
    for (int rep = 0; rep < reps; rep++) {
        /* Each pair in turn, the order alternating. */
        for (enum contender pair = HREG; pair <= HREG_LIFE; pair += 2) {
            enum contender first = rep % 2 ? pair + 1 : pair;
            enum contender second = rep % 2 ? pair : pair + 1;
            if (run(first, c, millis, &figures[first], rep) != 0 ||
                run(second, c, millis, &figures[second], rep) != 0)
                return 1;
        }
    }
    hreg_release(c, h);
    hreg_disconnect(c);
    printf("{");
    print_figures("hreg_get", &figures[HREG], reps, ",");
    print_figures("map_get", &figures[MAP], reps, ",");
    print_figures("hreg_life", &figures[HREG_LIFE], reps, ",");
    print_figures("map_life", &figures[MAP_LIFE], reps, "}\n");
    return 0;
}
