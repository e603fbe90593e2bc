/*
 * restart_load.c: the C load client of the restart stress test
 * (tests/tests/restart_load.rs). It runs the same mixed load as the Rust
 * client (tests/src/restart_load.rs, whose comment describes the lines and
 * the rules) over libhreg, while hregd is stopped and started under it:
 *
 *   restart_load SOCKET SEED
 *
 * prints "ready", then loads until a line arrives on stdin: "pause" (settle
 * what a DISCONNECTED left uncertain, print the report: "object HANDLE FLAGS
 * REFS LEN FNV" lines, "maybe FLAGS LEN FNV" lines, "counts ...", "end"),
 * then "go" (forget the maybes, load again) or "quit" (print "bye", end
 * the session and exit 0).
 */
#include "check.h"
#include <hreg.h>
#include <inttypes.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define MAX_LIVE 48     /* as tests/src/restart_load.rs */
#define DEAD_KEPT 32
#define VALUE_CAP (1u << 20)
#define SETTLE_PATIENCE_NS (30ull * 1000 * 1000 * 1000)

static const size_t SMALL_SIZES[] = {8, 16, 40, 48, 49, 64, 200, 1000, 4096, 16384};
static const size_t LARGE_SIZES[] = {70000, 300000};

enum uncertain { SURE, REPLACED, KILLED, REFS };

struct object {
    hreg_handle handle;
    uint32_t flags;
    uint32_t refs;
    uint8_t *value;
    size_t len;
    enum uncertain uncertain;
    uint8_t *replacement; /* REPLACED: the value the replace wrote */
    size_t replacement_len;
};

struct maybe {
    uint32_t flags;
    uint64_t len, fnv;
};

static hreg_client *client;
static uint64_t rng_state;
static struct object live[MAX_LIVE];
static size_t nlive;
static struct maybe *maybes;
static size_t nmaybes, maybes_cap;
static hreg_handle dead[DEAD_KEPT];
static size_t ndead;
static uint8_t *got; /* GET's buffer */

static struct {
    uint64_t ops, wrong, lost, unexpected, disconnected, stalls, longest_stall_us;
} counts;
static uint64_t stall_began; /* ns; 0: no stall */

static uint64_t now_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000000ull + (uint64_t)t.tv_nsec;
}

/* xorshift64, as hreg_tests::Rng */
static uint64_t next_u64(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return rng_state;
}

static uint64_t below(uint64_t n)
{
    return next_u64() % (n ? n : 1);
}

static uint64_t fnv(const uint8_t *p, size_t n)
{
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < n; i++)
        h = (h ^ p[i]) * 0x100000001b3ull;
    return h;
}

/* A value that carries its checksum, as hreg_tests::checked_value. */
static uint8_t *checked_value(uint64_t seed, size_t len)
{
    uint8_t *v = malloc(len ? len : 1);
    CHECK(v != NULL);
    uint64_t s = seed | 1;
    for (size_t i = 0; i < len; i++) {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        v[i] = (uint8_t)s;
    }
    if (len >= 8) {
        uint64_t sum = fnv(v, len - 8);
        for (int i = 0; i < 8; i++)
            v[len - 8 + i] = (uint8_t)(sum >> (8 * i));
    }
    return v;
}

static int intact(const uint8_t *v, size_t len)
{
    if (len < 8)
        return 0;
    uint64_t sum = fnv(v, len - 8);
    for (int i = 0; i < 8; i++)
        if (v[len - 8 + i] != (uint8_t)(sum >> (8 * i)))
            return 0;
    return 1;
}

static size_t value_size(void)
{
    if (below(10) == 0)
        return LARGE_SIZES[below(sizeof LARGE_SIZES / sizeof *LARGE_SIZES)];
    return SMALL_SIZES[below(sizeof SMALL_SIZES / sizeof *SMALL_SIZES)];
}

/* Counts a call's status: DISCONNECTED starts or continues a stall,
 * anything else ends it. Returns the status. */
static int note(int status)
{
    counts.ops++;
    if (status == HREG_ERR_DISCONNECTED) {
        counts.disconnected++;
        if (!stall_began)
            stall_began = now_ns();
    } else if (stall_began) {
        uint64_t took = (now_ns() - stall_began) / 1000;
        counts.stalls++;
        if (took > counts.longest_stall_us)
            counts.longest_stall_us = took;
        stall_began = 0;
    }
    return status;
}

static void unexpected(const char *what, hreg_handle h, int status)
{
    counts.unexpected++;
    fprintf(stderr, "restart_load.c: %s %" PRIu64 ": unexpected %s\n", what, h,
            hreg_strerror(status));
}

static void wrong(const char *what, hreg_handle h)
{
    counts.wrong++;
    fprintf(stderr, "restart_load.c: %s %" PRIu64 ": a wrong value\n", what, h);
}

static void forget(size_t at)
{
    free(live[at].value);
    free(live[at].replacement);
    live[at] = live[--nlive];
}

static void lost(size_t at, const char *what)
{
    counts.lost++;
    fprintf(stderr, "restart_load.c: %s %" PRIu64 ": STALE, lost\n", what, live[at].handle);
    forget(at);
}

static void kill_object(size_t at)
{
    if (ndead == DEAD_KEPT) {
        memmove(dead, dead + 1, (DEAD_KEPT - 1) * sizeof *dead);
        ndead--;
    }
    dead[ndead++] = live[at].handle;
    forget(at);
}

static void do_insert(void)
{
    uint32_t flags = below(100) < 35 ? HREG_DETACHED : 0;
    size_t len = value_size();
    uint8_t *value = checked_value(next_u64(), len);
    hreg_handle h = 0;
    int s = note(hreg_insert(client, value, len, flags, &h));
    if (s == HREG_OK) {
        struct object o = {h, flags, (flags & HREG_DETACHED) ? 0 : 1, value, len, SURE, NULL, 0};
        live[nlive++] = o;
        return;
    }
    if (s == HREG_ERR_DISCONNECTED) {
        if (nmaybes == maybes_cap) {
            maybes_cap = maybes_cap ? 2 * maybes_cap : 16;
            maybes = realloc(maybes, maybes_cap * sizeof *maybes);
            CHECK(maybes != NULL);
        }
        struct maybe m = {flags, len, fnv(value, len)};
        maybes[nmaybes++] = m;
    } else {
        unexpected("insert", 0, s);
    }
    free(value);
}

static void do_get(size_t at)
{
    size_t len = 0;
    struct object *o = &live[at];
    int s = note(hreg_get(client, o->handle, got, VALUE_CAP, &len));
    if (s == HREG_OK) {
        if (len != o->len || memcmp(got, o->value, len) != 0 || !intact(got, len))
            wrong("get", o->handle);
    } else if (s == HREG_ERR_STALE) {
        lost(at, "get");
    } else if (s != HREG_ERR_DISCONNECTED) {
        unexpected("get", o->handle, s);
    }
}

static void do_replace(size_t at)
{
    struct object *o = &live[at];
    size_t len = value_size();
    uint8_t *value = checked_value(next_u64(), len);
    int s = note(hreg_replace(client, o->handle, value, len));
    if (s == HREG_OK) {
        free(o->value);
        o->value = value;
        o->len = len;
        return;
    }
    if (s == HREG_ERR_DISCONNECTED) {
        o->uncertain = REPLACED;
        o->replacement = value;
        o->replacement_len = len;
        return;
    }
    free(value);
    if (s == HREG_ERR_STALE)
        lost(at, "replace");
    else
        unexpected("replace", o->handle, s);
}

static void do_release(size_t at)
{
    struct object *o = &live[at];
    int detached = (o->flags & HREG_DETACHED) != 0;
    int s = note(hreg_release(client, o->handle));
    if (s == HREG_ERR_STALE) {
        lost(at, "release");
    } else if (!detached) {
        /* The only reference of a non-DETACHED object: it dies. */
        if (s == HREG_OK)
            kill_object(at);
        else if (s == HREG_ERR_DISCONNECTED)
            o->uncertain = KILLED;
        else
            unexpected("release", o->handle, s);
    } else if (o->refs == 1) {
        if (s == HREG_OK)
            o->refs = 0;
        else if (s == HREG_ERR_DISCONNECTED)
            o->uncertain = REFS;
        else
            unexpected("release", o->handle, s);
    } else if (s != HREG_ERR_NOT_HELD && s != HREG_ERR_DISCONNECTED) {
        /* A DETACHED object nobody retained: nothing to release. */
        unexpected("release of a reference never held", o->handle, s);
    }
}

static void do_remove(size_t at)
{
    int s = note(hreg_remove(client, live[at].handle));
    if (s == HREG_OK)
        kill_object(at);
    else if (s == HREG_ERR_DISCONNECTED)
        live[at].uncertain = KILLED;
    else if (s == HREG_ERR_STALE)
        lost(at, "remove");
    else
        unexpected("remove", live[at].handle, s);
}

static void do_retain(size_t at)
{
    int s = note(hreg_retain(client, live[at].handle));
    if (s == HREG_OK)
        live[at].refs = 1;
    else if (s == HREG_ERR_DISCONNECTED)
        live[at].uncertain = REFS;
    else if (s == HREG_ERR_STALE)
        lost(at, "retain");
    else
        unexpected("retain", live[at].handle, s);
}

/* A removed or released object's handle stays STALE. */
static void do_get_dead(void)
{
    if (!ndead)
        return;
    hreg_handle h = dead[below(ndead)];
    size_t len = 0;
    int s = note(hreg_get(client, h, got, VALUE_CAP, &len));
    if (s == HREG_OK)
        wrong("get of a dead handle", h);
    else if (s != HREG_ERR_STALE && s != HREG_ERR_DISCONNECTED)
        unexpected("get of a dead handle", h, s);
}

/* Tries once to settle what a DISCONNECTED left open about object `at`. */
static void settle_one(size_t at)
{
    struct object *o = &live[at];
    if (o->uncertain == REFS) {
        int s = note(hreg_release(client, o->handle));
        if (s == HREG_OK || s == HREG_ERR_NOT_HELD) {
            o->refs = 0;
            o->uncertain = SURE;
        } else if (s == HREG_ERR_STALE) {
            lost(at, "settling release");
        } else if (s != HREG_ERR_DISCONNECTED) {
            unexpected("settling release", o->handle, s);
        }
        return;
    }
    size_t len = 0;
    int s = note(hreg_get(client, o->handle, got, VALUE_CAP, &len));
    if (s == HREG_ERR_DISCONNECTED)
        return;
    if (s == HREG_ERR_STALE) {
        if (o->uncertain == KILLED)
            kill_object(at);
        else
            lost(at, "settling get");
        return;
    }
    if (s != HREG_OK) {
        unexpected("settling get", o->handle, s);
        return;
    }
    int ok = intact(got, len);
    if (ok && o->uncertain == REPLACED && len == o->replacement_len &&
        memcmp(got, o->replacement, len) == 0) {
        free(o->value);
        o->value = o->replacement;
        o->len = o->replacement_len;
        o->replacement = NULL;
    } else if (!ok || len != o->len || memcmp(got, o->value, len) != 0) {
        wrong("settling get", o->handle);
    }
    free(o->replacement);
    o->replacement = NULL;
    o->uncertain = SURE;
}

/* One operation of the load. */
static void step(void)
{
    for (size_t i = 0; i < nlive; i++) {
        if (live[i].uncertain != SURE) {
            if (below(2) == 0) {
                settle_one(i);
                return;
            }
            break;
        }
    }
    uint64_t roll = below(100);
    if (nlive == 0 || (roll < 25 && nlive < MAX_LIVE)) {
        do_insert();
        return;
    }
    size_t at = below(nlive);
    if (live[at].uncertain != SURE) {
        settle_one(at);
        return;
    }
    int detached = (live[at].flags & HREG_DETACHED) != 0;
    if (roll < 50)
        do_get(at);
    else if (roll < 65)
        do_replace(at);
    else if (roll < 75)
        do_release(at);
    else if (roll < 85)
        do_remove(at);
    else if (roll < 93 && detached && live[at].refs == 0)
        do_retain(at);
    else if (roll < 93)
        do_get(at);
    else
        do_get_dead();
}

/* Waits for the session to be back and settles every uncertain object. */
static void settle(void)
{
    uint64_t deadline = now_ns() + SETTLE_PATIENCE_NS;
    for (;;) {
        hreg_stats stats;
        int s = note(hreg_stats_get(client, &stats));
        int back = s == HREG_OK;
        if (s != HREG_OK && s != HREG_ERR_DISCONNECTED)
            unexpected("stats", 0, s);
        int open = 0;
        for (size_t i = 0; i < nlive; i++)
            open |= live[i].uncertain != SURE;
        if (back && !open)
            return;
        /* settle_one may drop the object it settles: walk from the end. */
        for (size_t i = nlive; i-- > 0;)
            if (i < nlive && live[i].uncertain != SURE)
                settle_one(i);
        if (now_ns() > deadline) {
            counts.unexpected++;
            fprintf(stderr, "restart_load.c: the session did not come back in 30 s\n");
            return;
        }
        usleep(5000);
    }
}

static void report(void)
{
    for (size_t i = 0; i < nlive; i++)
        printf("object %" PRIu64 " %" PRIu32 " %" PRIu32 " %zu %" PRIu64 "\n", live[i].handle,
               live[i].flags, live[i].refs, live[i].len, fnv(live[i].value, live[i].len));
    for (size_t i = 0; i < nmaybes; i++)
        printf("maybe %" PRIu32 " %" PRIu64 " %" PRIu64 "\n", maybes[i].flags, maybes[i].len,
               maybes[i].fnv);
    printf("counts ops=%" PRIu64 " wrong=%" PRIu64 " lost=%" PRIu64 " unexpected=%" PRIu64
           " disconnected=%" PRIu64 " stalls=%" PRIu64 " longest_stall_us=%" PRIu64 "\nend\n",
           counts.ops, counts.wrong, counts.lost, counts.unexpected, counts.disconnected,
           counts.stalls, counts.longest_stall_us);
    fflush(stdout);
}

/* The next line of stdin into `line` (without its newline): 1 if there is
 * one, 0 if none has arrived yet (only when !wait), -1 at EOF. Unbuffered by
 * stdio, so that poll() sees every line not yet taken. */
static int next_line(char *line, size_t cap, int wait)
{
    static char in[256];
    static size_t used;
    for (;;) {
        char *nl = memchr(in, '\n', used);
        if (nl) {
            size_t n = (size_t)(nl - in);
            size_t keep = n < cap - 1 ? n : cap - 1;
            memcpy(line, in, keep);
            line[keep] = 0;
            used -= n + 1;
            memmove(in, nl + 1, used);
            return 1;
        }
        if (used == sizeof in)
            return -1; /* a line longer than any command */
        if (!wait) {
            struct pollfd p = {0, POLLIN, 0};
            if (poll(&p, 1, 0) <= 0)
                return 0;
        }
        ssize_t n = read(0, in + used, sizeof in - used);
        if (n <= 0)
            return -1;
        used += (size_t)n;
    }
}

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: restart_load SOCKET SEED\n");
        return 2;
    }
    rng_state = strtoull(argv[2], NULL, 10) | 1;
    got = malloc(VALUE_CAP);
    CHECK(got != NULL);
    EXPECT(hreg_connect(argv[1], &client), HREG_OK);
    printf("ready\n");
    fflush(stdout);
    char line[64];
    for (;;) {
        int have = next_line(line, sizeof line, 0);
        if (have < 0)
            return 1;
        if (have == 0) {
            step();
            if (stall_began)
                usleep(1000); /* the daemon is away: calls fail at once */
            continue;
        }
        if (strcmp(line, "pause") != 0) {
            fprintf(stderr, "restart_load.c: unknown command %s\n", line);
            return 1;
        }
        settle();
        report();
        if (next_line(line, sizeof line, 1) < 0)
            return 1;
        if (strcmp(line, "go") == 0) {
            nmaybes = 0;
        } else if (strcmp(line, "quit") == 0) {
            printf("bye\n");
            fflush(stdout);
            break;
        } else {
            fprintf(stderr, "restart_load.c: after pause: %s\n", line);
            return 1;
        }
    }
    hreg_disconnect(client);
    while (nlive)
        forget(nlive - 1);
    free(maybes);
    free(got);
    return 0;
}
