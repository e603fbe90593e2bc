/*
 * api.c: libhreg's C API from C, against a real hregd, in one process (and
 * the children it forks and execs). Run by client-c/tests/c_api.rs.
 *
 *   api all SOCKET VERSION   every function; INVALID, STALE, TOO_BIG, BUFFER,
 *                            NOT_HELD and CONNECT; batches with per-op
 *                            statuses; borrowed references (hreg_get_ref):
 *                            bytes kept through replace and remove, release
 *                            from another thread, QUOTA at 1024; stats; a
 *                            forked child; CLOEXEC on every descriptor the
 *                            library opened
 *   api fdcount N            (exec'd by `all`) fails unless exactly N
 *                            descriptors are open
 *
 * The daemon must run with its default 1 MiB maximum value size.
 */
#include <dirent.h>
#include <fcntl.h>
#include "check.h"
#include <hreg.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#define MAX_VALUE (1u << 20)

static const char *socket_path;

static hreg_client *connect_ok(void)
{
    hreg_client *c = NULL;
    EXPECT(hreg_connect(socket_path, &c), HREG_OK);
    CHECK(c != NULL);
    return c;
}

static uint64_t objects(hreg_client *c)
{
    hreg_stats s;
    EXPECT(hreg_stats_get(c, &s), HREG_OK);
    return s.objects;
}

static void test_strings(const char *version)
{
    CHECK(strcmp(hreg_version(), version) == 0);
    const char *unknown = hreg_strerror(-1);
    CHECK(unknown != NULL && *unknown != '\0');
    CHECK(hreg_strerror(13) == unknown && hreg_strerror(INT_MAX) == unknown);
    CHECK(hreg_strerror(INT_MIN) == unknown);
    for (int s = HREG_OK; s <= HREG_ERR_IO; s++) {
        CHECK(hreg_strerror(s) != NULL && *hreg_strerror(s) != '\0');
        CHECK(hreg_strerror(s) != unknown);
        CHECK(hreg_strerror(s) == hreg_strerror(s)); /* static, not remade */
        for (int t = HREG_OK; t < s; t++)
            CHECK(strcmp(hreg_strerror(s), hreg_strerror(t)) != 0);
    }
}

static void test_connect(void)
{
    hreg_client *c = (hreg_client *)&c; /* any non-NULL garbage */
    EXPECT(hreg_connect(socket_path, NULL), HREG_ERR_INVALID);
    EXPECT(hreg_connect("/nonexistent/hreg-test/hreg.sock", &c), HREG_ERR_CONNECT);
    CHECK(c == NULL);
    EXPECT(hreg_connect("", &c), HREG_ERR_CONNECT);
    hreg_disconnect(NULL);

    /* NULL path: $HREG_SOCKET. */
    setenv("HREG_SOCKET", socket_path, 1);
    EXPECT(hreg_connect(NULL, &c), HREG_OK);
    hreg_disconnect(c);
    setenv("HREG_SOCKET", "/nonexistent/hreg-test/hreg.sock", 1);
    EXPECT(hreg_connect(NULL, &c), HREG_ERR_CONNECT);
    unsetenv("HREG_SOCKET");
}

static void test_invalid(hreg_client *c)
{
    hreg_handle h = 0;
    size_t len = 77;
    char buf[8];
    hreg_stats st;
    hreg_op op = {.opcode = HREG_OP_GET, .handle = 1};

    /* NULL client. */
    EXPECT(hreg_insert(NULL, "x", 1, 0, &h), HREG_ERR_INVALID);
    EXPECT(hreg_get(NULL, 1, buf, sizeof buf, &len), HREG_ERR_INVALID);
    EXPECT(hreg_replace(NULL, 1, "x", 1), HREG_ERR_INVALID);
    EXPECT(hreg_retain(NULL, 1), HREG_ERR_INVALID);
    EXPECT(hreg_release(NULL, 1), HREG_ERR_INVALID);
    EXPECT(hreg_remove(NULL, 1), HREG_ERR_INVALID);
    EXPECT(hreg_submit(NULL, &op, 1), HREG_ERR_INVALID);
    EXPECT(hreg_stats_get(NULL, &st), HREG_ERR_INVALID);
    EXPECT(hreg_flush(NULL), HREG_ERR_INVALID);

    /* Handle 0. */
    EXPECT(hreg_get(c, 0, buf, sizeof buf, &len), HREG_ERR_INVALID);
    EXPECT(hreg_replace(c, 0, "x", 1), HREG_ERR_INVALID);
    EXPECT(hreg_retain(c, 0), HREG_ERR_INVALID);
    EXPECT(hreg_release(c, 0), HREG_ERR_INVALID);
    EXPECT(hreg_remove(c, 0), HREG_ERR_INVALID);

    /* NULL pointers where one is needed; unknown flags. */
    EXPECT(hreg_insert(c, "x", 1, 0, NULL), HREG_ERR_INVALID);
    EXPECT(hreg_insert(c, NULL, 5, 0, &h), HREG_ERR_INVALID);
    EXPECT(hreg_insert(c, "x", 1, 0x4, &h), HREG_ERR_INVALID);
    EXPECT(hreg_insert(c, "x", 1, 0x80000000u, &h), HREG_ERR_INVALID);
    CHECK(h == 0);
    EXPECT(hreg_get(c, 1, buf, sizeof buf, NULL), HREG_ERR_INVALID);
    EXPECT(hreg_get(c, 1, NULL, 5, &len), HREG_ERR_INVALID);
    CHECK(len == 77);
    EXPECT(hreg_replace(c, 1, NULL, 5), HREG_ERR_INVALID);
    EXPECT(hreg_stats_get(c, NULL), HREG_ERR_INVALID);
    EXPECT(hreg_submit(c, NULL, 1), HREG_ERR_INVALID);
    EXPECT(hreg_submit(c, NULL, 0), HREG_OK);
    EXPECT(hreg_submit(c, &op, 0), HREG_OK);

    /* INVALID comes before TOO_BIG and STALE. */
    static char big[MAX_VALUE + 1];
    EXPECT(hreg_insert(c, big, sizeof big, 0x8, &h), HREG_ERR_INVALID);
    EXPECT(hreg_replace(c, 0, big, sizeof big), HREG_ERR_INVALID);
    EXPECT(hreg_replace(c, 12345, big, sizeof big), HREG_ERR_TOO_BIG);
    EXPECT(hreg_insert(c, big, sizeof big, 0, &h), HREG_ERR_TOO_BIG);
    EXPECT(hreg_insert(c, big, SIZE_MAX, 0, &h), HREG_ERR_TOO_BIG);
}

static void test_objects(hreg_client *c)
{
    uint64_t base = objects(c);
    hreg_handle h, e, d;
    char buf[64];
    size_t len;

    /* Insert, read, size probe, small buffer. */
    EXPECT(hreg_insert(c, "hello", 5, 0, &h), HREG_OK);
    CHECK(h != 0);
    CHECK(objects(c) == base + 1);
    EXPECT(hreg_get(c, h, buf, sizeof buf, &len), HREG_OK);
    CHECK(len == 5 && memcmp(buf, "hello", 5) == 0);
    len = 0;
    EXPECT(hreg_get(c, h, NULL, 0, &len), HREG_ERR_BUFFER);
    CHECK(len == 5);
    len = 0;
    EXPECT(hreg_get(c, h, buf, 4, &len), HREG_ERR_BUFFER);
    CHECK(len == 5);
    EXPECT(hreg_get(c, h, buf, 5, &len), HREG_OK);
    CHECK(len == 5);

    /* Empty values: NULL data with length 0. */
    EXPECT(hreg_insert(c, NULL, 0, HREG_SHARED, &e), HREG_OK);
    len = 99;
    EXPECT(hreg_get(c, e, NULL, 0, &len), HREG_OK);
    CHECK(len == 0);
    len = 99;
    EXPECT(hreg_get(c, e, buf, sizeof buf, &len), HREG_OK);
    CHECK(len == 0);
    EXPECT(hreg_replace(c, e, "now full", 8), HREG_OK);
    EXPECT(hreg_get(c, e, buf, sizeof buf, &len), HREG_OK);
    CHECK(len == 8 && memcmp(buf, "now full", 8) == 0);
    EXPECT(hreg_replace(c, e, NULL, 0), HREG_OK);
    EXPECT(hreg_get(c, e, NULL, 0, &len), HREG_OK);
    CHECK(len == 0);

    /* Replace, retain, release: the object dies with the last reference. */
    EXPECT(hreg_replace(c, h, "a longer value", 14), HREG_OK);
    EXPECT(hreg_get(c, h, buf, sizeof buf, &len), HREG_OK);
    CHECK(len == 14 && memcmp(buf, "a longer value", 14) == 0);
    EXPECT(hreg_retain(c, h), HREG_OK);
    EXPECT(hreg_release(c, h), HREG_OK);
    EXPECT(hreg_get(c, h, buf, sizeof buf, &len), HREG_OK);
    EXPECT(hreg_release(c, h), HREG_OK);
    CHECK(objects(c) == base + 1);

    /* STALE on everything; *len untouched on errors other than BUFFER. */
    len = 1234;
    EXPECT(hreg_get(c, h, buf, sizeof buf, &len), HREG_ERR_STALE);
    EXPECT(hreg_get(c, h, NULL, 0, &len), HREG_ERR_STALE);
    CHECK(len == 1234);
    EXPECT(hreg_replace(c, h, "x", 1), HREG_ERR_STALE);
    EXPECT(hreg_retain(c, h), HREG_ERR_STALE);
    EXPECT(hreg_release(c, h), HREG_ERR_STALE);
    EXPECT(hreg_remove(c, h), HREG_ERR_STALE);
    EXPECT(hreg_get(c, 0x123456789abcdefull, buf, sizeof buf, &len), HREG_ERR_STALE);
    CHECK(len == 1234);

    /* DETACHED: no reference for the inserter; only remove kills it. */
    EXPECT(hreg_insert(c, "detached", 8, HREG_DETACHED | HREG_SHARED, &d), HREG_OK);
    EXPECT(hreg_release(c, d), HREG_ERR_NOT_HELD);
    EXPECT(hreg_retain(c, d), HREG_OK);
    EXPECT(hreg_release(c, d), HREG_OK);
    EXPECT(hreg_release(c, d), HREG_ERR_NOT_HELD);
    EXPECT(hreg_get(c, d, buf, sizeof buf, &len), HREG_OK);
    CHECK(len == 8);
    EXPECT(hreg_remove(c, d), HREG_OK);
    EXPECT(hreg_get(c, d, buf, sizeof buf, &len), HREG_ERR_STALE);
    EXPECT(hreg_release(c, d), HREG_ERR_STALE);

    /* remove kills an object whatever references it. */
    EXPECT(hreg_retain(c, e), HREG_OK);
    EXPECT(hreg_remove(c, e), HREG_OK);
    EXPECT(hreg_retain(c, e), HREG_ERR_STALE);

    /* The largest value, and one byte more. */
    char *big = malloc(MAX_VALUE + 1), *back = malloc(MAX_VALUE);
    CHECK(big && back);
    for (size_t i = 0; i <= MAX_VALUE; i++)
        big[i] = (char)(i * 7 + i / 251);
    EXPECT(hreg_insert(c, big, MAX_VALUE + 1, 0, &h), HREG_ERR_TOO_BIG);
    EXPECT(hreg_insert(c, big, MAX_VALUE, 0, &h), HREG_OK);
    EXPECT(hreg_replace(c, h, big, MAX_VALUE + 1), HREG_ERR_TOO_BIG);
    EXPECT(hreg_get(c, h, back, MAX_VALUE - 1, &len), HREG_ERR_BUFFER);
    CHECK(len == MAX_VALUE);
    EXPECT(hreg_get(c, h, back, MAX_VALUE, &len), HREG_OK);
    CHECK(len == MAX_VALUE && memcmp(big, back, MAX_VALUE) == 0);
    /* A capacity beyond any value is fine. */
    EXPECT(hreg_get(c, h, back, SIZE_MAX, &len), HREG_OK);
    CHECK(len == MAX_VALUE);
    EXPECT(hreg_release(c, h), HREG_OK);
    free(big);
    free(back);

    CHECK(objects(c) == base);
}

static void test_submit(hreg_client *c)
{
    uint64_t base = objects(c);
    hreg_handle keep, stale, det;
    EXPECT(hreg_insert(c, "kept value", 10, 0, &keep), HREG_OK);
    EXPECT(hreg_insert(c, "soon gone", 9, 0, &stale), HREG_OK);
    EXPECT(hreg_release(c, stale), HREG_OK);
    EXPECT(hreg_insert(c, "det", 3, HREG_DETACHED, &det), HREG_OK);

    char small[4], big[32], empty_cap[1];
    hreg_op ops[] = {
        /* 0 */ {.opcode = HREG_OP_INSERT, .flags = HREG_SHARED, .buf = "abc", .len = 3},
        /* 1 */ {.opcode = HREG_OP_GET, .handle = stale, .buf = big, .len = sizeof big},
        /* 2 */ {.opcode = HREG_OP_GET, .handle = keep, .buf = small, .len = sizeof small},
        /* 3 */ {.opcode = HREG_OP_RETAIN, .flags = HREG_SHARED, .handle = keep},
        /* 4 */ {.opcode = 99, .handle = keep},
        /* 5 */ {.opcode = 0, .handle = keep},
        /* 6 */ {.opcode = HREG_OP_RELEASE, .handle = det},
        /* 7 */ {.opcode = HREG_OP_REPLACE, .handle = keep, .buf = "replaced", .len = 8},
        /* 8 */ {.opcode = HREG_OP_GET, .handle = keep, .buf = big, .len = sizeof big},
        /* 9 */ {.opcode = HREG_OP_INSERT, .buf = NULL, .len = 0},
        /* 10 */ {.opcode = HREG_OP_GET, .handle = 0, .buf = big, .len = sizeof big},
        /* 11 */ {.opcode = HREG_OP_REMOVE, .handle = det},
        /* 12 */ {.opcode = HREG_OP_INSERT, .flags = 0x10, .buf = "x", .len = 1},
        /* 13 */ {.opcode = HREG_OP_GET, .handle = keep, .buf = NULL, .len = 0},
        /* 14 */ {.opcode = HREG_OP_GET, .handle = keep, .buf = NULL, .len = 3},
        /* 15 */ {.opcode = HREG_OP_REPLACE, .handle = keep, .buf = NULL, .len = 3},
        /* 16 */ {.opcode = HREG_OP_INSERT, .flags = HREG_DETACHED | HREG_SHARED, .buf = "y", .len = 1},
        /* 17 */ {.opcode = HREG_OP_GET, .handle = keep, .buf = empty_cap, .len = 0},
    };
    size_t n = sizeof ops / sizeof ops[0];
    for (size_t i = 0; i < n; i++)
        ops[i].status = -1;
    EXPECT(hreg_submit(c, ops, n), HREG_ERR_STALE); /* the first failure */

    int want[] = {HREG_OK, HREG_ERR_STALE, HREG_ERR_BUFFER, HREG_ERR_INVALID,
                  HREG_ERR_INVALID, HREG_ERR_INVALID, HREG_ERR_NOT_HELD, HREG_OK,
                  HREG_OK, HREG_OK, HREG_ERR_INVALID, HREG_OK, HREG_ERR_INVALID,
                  HREG_ERR_BUFFER, HREG_ERR_INVALID, HREG_ERR_INVALID, HREG_OK,
                  HREG_ERR_BUFFER};
    CHECK(sizeof want / sizeof want[0] == n);
    for (size_t i = 0; i < n; i++) {
        if (ops[i].status != want[i]) {
            fprintf(stderr, "op %zu: status %d (%s), expected %d\n", i, ops[i].status,
                    hreg_strerror(ops[i].status), want[i]);
            exit(1);
        }
    }
    CHECK(ops[0].handle != 0 && ops[9].handle != 0 && ops[16].handle != 0);
    CHECK(ops[1].len == sizeof big);         /* untouched on STALE */
    CHECK(ops[2].len == 10);                 /* BUFFER: the size needed */
    CHECK(ops[8].len == 8 && memcmp(big, "replaced", 8) == 0);
    CHECK(ops[13].len == 8 && ops[17].len == 8);

    /* What the batch did is visible to single calls. */
    char buf[16];
    size_t len;
    EXPECT(hreg_get(c, ops[0].handle, buf, sizeof buf, &len), HREG_OK);
    CHECK(len == 3 && memcmp(buf, "abc", 3) == 0);
    EXPECT(hreg_get(c, ops[9].handle, NULL, 0, &len), HREG_OK);
    CHECK(len == 0);
    EXPECT(hreg_get(c, det, buf, sizeof buf, &len), HREG_ERR_STALE);

    /* An all-OK batch returns OK; buffers that overlap run in order. */
    hreg_op ok[] = {
        {.opcode = HREG_OP_GET, .handle = keep, .buf = buf, .len = sizeof buf},
        {.opcode = HREG_OP_INSERT, .buf = buf, .len = 8}, /* reads what GET wrote */
        {.opcode = HREG_OP_RELEASE, .handle = ops[0].handle},
        {.opcode = HREG_OP_RELEASE, .handle = ops[9].handle},
        {.opcode = HREG_OP_REMOVE, .handle = ops[16].handle},
    };
    memset(buf, 0, sizeof buf);
    EXPECT(hreg_submit(c, ok, 5), HREG_OK);
    for (int i = 0; i < 5; i++)
        CHECK(ok[i].status == HREG_OK);
    EXPECT(hreg_get(c, ok[1].handle, big, sizeof big, &len), HREG_OK);
    CHECK(len == 8 && memcmp(big, "replaced", 8) == 0);

    /* A batch larger than any ring: 1000 inserts, then 1000 releases. */
    enum { MANY = 1000 };
    static hreg_op many[MANY];
    static char values[MANY][16];
    for (int i = 0; i < MANY; i++) {
        int l = snprintf(values[i], sizeof values[i], "v%d", i);
        many[i] = (hreg_op){.opcode = HREG_OP_INSERT, .buf = values[i], .len = (size_t)l};
    }
    EXPECT(hreg_submit(c, many, MANY), HREG_OK);
    CHECK(objects(c) == base + 2 + MANY);
    for (int i = 0; i < MANY; i++) {
        hreg_handle h = many[i].handle;
        many[i] = (hreg_op){.opcode = HREG_OP_GET, .handle = h, .buf = values[i],
                            .len = sizeof values[i]};
    }
    EXPECT(hreg_submit(c, many, MANY), HREG_OK);
    for (int i = 0; i < MANY; i++) {
        char want_v[16];
        int l = snprintf(want_v, sizeof want_v, "v%d", i);
        CHECK(many[i].len == (size_t)l && memcmp(values[i], want_v, (size_t)l) == 0);
        many[i] = (hreg_op){.opcode = HREG_OP_RELEASE, .handle = many[i].handle};
    }
    EXPECT(hreg_submit(c, many, MANY), HREG_OK);

    EXPECT(hreg_release(c, ok[1].handle), HREG_OK);
    EXPECT(hreg_release(c, keep), HREG_OK);
    CHECK(objects(c) == base);
}

static void test_stats(hreg_client *c)
{
    hreg_stats a, b;
    memset(&a, 0xff, sizeof a);
    EXPECT(hreg_stats_get(c, &a), HREG_OK);
    CHECK(a.sessions >= 1);
    for (int i = 0; i < 4; i++)
        CHECK(a.reserved[i] == 0);
    hreg_handle h;
    EXPECT(hreg_insert(c, "counted", 7, 0, &h), HREG_OK);
    EXPECT(hreg_stats_get(c, &b), HREG_OK);
    CHECK(b.objects == a.objects + 1);
    CHECK(b.value_bytes == a.value_bytes + 7);
    CHECK(b.ops > a.ops);
    hreg_client *other = connect_ok();
    EXPECT(hreg_stats_get(other, &b), HREG_OK);
    /* Counted: this one and the other at least, one more than before at
     * most (a session that ended before may still have been counted then:
     * the daemon lets go of it when its workers have). */
    CHECK(b.sessions >= 2 && b.sessions <= a.sessions + 1);
    hreg_disconnect(other);
    EXPECT(hreg_release(c, h), HREG_OK);

    /* After release + flush, another client finds the object gone. */
    EXPECT(hreg_insert(c, "flushed", 7, HREG_SHARED, &h), HREG_OK);
    EXPECT(hreg_flush(c), HREG_OK);
    other = connect_ok();
    char buf[16];
    size_t len = 0;
    EXPECT(hreg_get(other, h, buf, sizeof buf, &len), HREG_OK);
    CHECK(len == 7 && memcmp(buf, "flushed", 7) == 0);
    EXPECT(hreg_release(c, h), HREG_OK);
    EXPECT(hreg_flush(c), HREG_OK);
    EXPECT(hreg_get(other, h, buf, sizeof buf, &len), HREG_ERR_STALE);
    hreg_disconnect(other);
}

/* A forked child connects and works; its exit leaves the parent alone. */
static void test_fork(hreg_client *c)
{
    hreg_handle mine;
    EXPECT(hreg_insert(c, "parent's", 8, 0, &mine), HREG_OK);
    pid_t pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) {
        hreg_client *child = connect_ok();
        hreg_handle h;
        char buf[16];
        size_t len;
        EXPECT(hreg_insert(child, "child's", 7, 0, &h), HREG_OK);
        EXPECT(hreg_get(child, h, buf, sizeof buf, &len), HREG_OK);
        CHECK(len == 7 && memcmp(buf, "child's", 7) == 0);
        EXPECT(hreg_get(child, mine, buf, sizeof buf, &len), HREG_OK); /* same uid */
        EXPECT(hreg_release(child, h), HREG_OK);
        hreg_disconnect(child);
        /* The parent's client is not used in the child; freeing it must
           not end the parent's session. */
        hreg_disconnect(c);
        exit(0);
    }
    int status;
    CHECK(waitpid(pid, &status, 0) == pid);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    char buf[16];
    size_t len;
    EXPECT(hreg_get(c, mine, buf, sizeof buf, &len), HREG_OK);
    CHECK(len == 8 && memcmp(buf, "parent's", 8) == 0);
    EXPECT(hreg_release(c, mine), HREG_OK);
}

/* Descriptors open now, as a bitmap of the first 1024. */
static void open_fds(unsigned char *set)
{
    memset(set, 0, 1024);
    DIR *dir = opendir("/proc/self/fd");
    CHECK(dir != NULL);
    struct dirent *e;
    while ((e = readdir(dir)) != NULL) {
        int fd = atoi(e->d_name);
        if (e->d_name[0] != '.' && fd != dirfd(dir) && fd < 1024 && fcntl(fd, F_GETFD) != -1)
            set[fd] = 1;
    }
    closedir(dir);
}

/* Every descriptor the library opened is CLOEXEC, and an exec'd program
   inherits none of them. */
static void test_cloexec(hreg_client *c, const unsigned char *at_start, const char *self)
{
    unsigned char now[1024];
    open_fds(now);
    int opened = 0, inherited = 0;
    for (int fd = 0; fd < 1024; fd++) {
        if (!now[fd])
            continue;
        if (at_start[fd]) {
            inherited += (fcntl(fd, F_GETFD) & FD_CLOEXEC) == 0;
            continue;
        }
        opened++;
        if ((fcntl(fd, F_GETFD) & FD_CLOEXEC) == 0) {
            fprintf(stderr, "descriptor %d opened by libhreg lacks FD_CLOEXEC\n", fd);
            exit(1);
        }
    }
    CHECK(opened >= 2); /* at least the control socket and a ring doorbell */

    pid_t pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) {
        char count[16];
        snprintf(count, sizeof count, "%d", inherited);
        execl(self, self, "fdcount", count, (char *)NULL);
        _exit(127);
    }
    int status;
    CHECK(waitpid(pid, &status, 0) == pid);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    (void)c;
}

struct release_arg {
    hreg_client *c;
    uint64_t ref;
    int status;
};

static void *release_elsewhere(void *p)
{
    struct release_arg *arg = p;
    arg->status = hreg_ref_release(arg->c, arg->ref);
    return NULL;
}

/* A value of `len` bytes that says which (len, salt) it is at every byte. */
static void fill(unsigned char *buf, size_t len, unsigned salt)
{
    for (size_t i = 0; i < len; i++)
        buf[i] = (unsigned char)(i * 31 + salt);
}

static int intact(const void *data, size_t len, unsigned salt)
{
    const unsigned char *bytes = data;
    for (size_t i = 0; i < len; i++)
        if (bytes[i] != (unsigned char)(i * 31 + salt))
            return 0;
    return 1;
}

static void test_refs(hreg_client *c)
{
    uint64_t base = objects(c);
    static unsigned char big[65536], other[65536];
    const void *data = NULL;
    size_t len = 0;
    uint64_t ref = 0;
    hreg_handle h, small;

    /* Arguments first. */
    fill(big, 4096, 7);
    EXPECT(hreg_insert(c, big, 4096, 0, &h), HREG_OK);
    EXPECT(hreg_get_ref(NULL, h, &data, &len, &ref), HREG_ERR_INVALID);
    EXPECT(hreg_get_ref(c, 0, &data, &len, &ref), HREG_ERR_INVALID);
    EXPECT(hreg_get_ref(c, h, NULL, &len, &ref), HREG_ERR_INVALID);
    EXPECT(hreg_get_ref(c, h, &data, NULL, &ref), HREG_ERR_INVALID);
    EXPECT(hreg_get_ref(c, h, &data, &len, NULL), HREG_ERR_INVALID);
    CHECK(data == NULL && len == 0 && ref == 0);
    EXPECT(hreg_ref_release(NULL, 1), HREG_ERR_INVALID);
    EXPECT(hreg_ref_release(c, 0), HREG_ERR_INVALID);
    EXPECT(hreg_ref_release(c, 12345), HREG_ERR_INVALID);

    /* A 4 KiB value, borrowed, outlives a replace and a remove. */
    EXPECT(hreg_get_ref(c, h, &data, &len, &ref), HREG_OK);
    CHECK(data != NULL && len == 4096 && ref != 0 && intact(data, len, 7));
    fill(other, 4096, 8);
    EXPECT(hreg_replace(c, h, other, 4096), HREG_OK);
    CHECK(intact(data, len, 7));
    const void *now;
    size_t now_len;
    uint64_t now_ref;
    EXPECT(hreg_get_ref(c, h, &now, &now_len, &now_ref), HREG_OK);
    CHECK(now_len == 4096 && intact(now, now_len, 8) && now_ref != ref);
    EXPECT(hreg_remove(c, h), HREG_OK);
    /* Churn that would reuse a freed block of that size. */
    for (int i = 0; i < 200; i++) {
        hreg_handle t;
        fill(other, 4096, 9);
        EXPECT(hreg_insert(c, other, 4096, 0, &t), HREG_OK);
        EXPECT(hreg_remove(c, t), HREG_OK);
    }
    CHECK(intact(data, len, 7) && intact(now, now_len, 8));
    EXPECT(hreg_get_ref(c, h, &data, &len, &ref), HREG_ERR_STALE);
    EXPECT(hreg_ref_release(c, now_ref), HREG_OK);
    EXPECT(hreg_ref_release(c, now_ref), HREG_ERR_INVALID);

    /* Released from another thread. */
    struct release_arg arg = {.c = c, .ref = ref, .status = -1};
    pthread_t t;
    CHECK(pthread_create(&t, NULL, release_elsewhere, &arg) == 0);
    CHECK(pthread_join(t, NULL) == 0);
    EXPECT(arg.status, HREG_OK);
    EXPECT(hreg_ref_release(c, ref), HREG_ERR_INVALID);

    /* Short and empty values, and a large one. */
    EXPECT(hreg_insert(c, "tiny", 4, 0, &small), HREG_OK);
    EXPECT(hreg_get_ref(c, small, &data, &len, &ref), HREG_OK);
    CHECK(len == 4 && memcmp(data, "tiny", 4) == 0);
    EXPECT(hreg_replace(c, small, "TINY", 4), HREG_OK);
    CHECK(memcmp(data, "tiny", 4) == 0);
    EXPECT(hreg_ref_release(c, ref), HREG_OK);
    hreg_handle empty, large;
    EXPECT(hreg_insert(c, NULL, 0, 0, &empty), HREG_OK);
    EXPECT(hreg_get_ref(c, empty, &data, &len, &ref), HREG_OK);
    CHECK(len == 0);
    EXPECT(hreg_ref_release(c, ref), HREG_OK);
    fill(big, sizeof big, 3);
    EXPECT(hreg_insert(c, big, sizeof big, 0, &large), HREG_OK);
    EXPECT(hreg_get_ref(c, large, &data, &len, &ref), HREG_OK);
    CHECK(len == sizeof big && intact(data, len, 3));
    EXPECT(hreg_ref_release(c, ref), HREG_OK);

    /* 1024 open at once; the next is QUOTA, but a stale handle is still
       STALE; releasing one makes room. */
    static uint64_t refs[1024];
    for (int i = 0; i < 1024; i++) {
        EXPECT(hreg_get_ref(c, i % 2 ? large : small, &data, &len, &refs[i]), HREG_OK);
        for (int j = 0; j < i; j += 97)
            CHECK(refs[j] != refs[i]);
    }
    EXPECT(hreg_get_ref(c, large, &data, &len, &ref), HREG_ERR_QUOTA);
    EXPECT(hreg_get_ref(c, small, &data, &len, &ref), HREG_ERR_QUOTA);
    EXPECT(hreg_get_ref(c, h, &data, &len, &ref), HREG_ERR_STALE);
    /* Plain gets and other clients are not limited by them. */
    char buf[8];
    EXPECT(hreg_get(c, small, buf, sizeof buf, &len), HREG_OK);
    hreg_client *second = connect_ok();
    EXPECT(hreg_get_ref(second, large, &data, &len, &ref), HREG_OK);
    CHECK(len == sizeof big && intact(data, len, 3));
    hreg_disconnect(second); /* releases its reference */
    EXPECT(hreg_ref_release(c, refs[100]), HREG_OK);
    EXPECT(hreg_get_ref(c, large, &data, &len, &refs[100]), HREG_OK);
    for (int i = 0; i < 1024; i++)
        EXPECT(hreg_ref_release(c, refs[i]), HREG_OK);

    EXPECT(hreg_release(c, small), HREG_OK);
    EXPECT(hreg_release(c, empty), HREG_OK);
    EXPECT(hreg_release(c, large), HREG_OK);
    CHECK(objects(c) == base);
}

static int fdcount(int want)
{
    unsigned char now[1024];
    open_fds(now);
    int n = 0;
    for (int fd = 0; fd < 1024; fd++)
        n += now[fd];
    if (n != want) {
        fprintf(stderr, "exec'd child has %d descriptors, expected %d (0-2 and inherited)\n",
                n, want);
        return 1;
    }
    return 0;
}

int main(int argc, char **argv)
{
    if (argc == 3 && strcmp(argv[1], "fdcount") == 0)
        return fdcount(atoi(argv[2]));
    if (argc != 4 || strcmp(argv[1], "all") != 0) {
        fprintf(stderr, "usage: %s all SOCKET VERSION | fdcount N\n", argv[0]);
        return 2;
    }
    socket_path = argv[2];
    unsigned char at_start[1024];
    open_fds(at_start);

    test_strings(argv[3]);
    test_connect();
    hreg_client *c = connect_ok();
    test_invalid(c);
    test_objects(c);
    test_submit(c);
    test_refs(c);
    test_stats(c);
    test_fork(c);
    test_cloexec(c, at_start, argv[0]);
    hreg_disconnect(c);
    printf("api: all checks passed\n");
    return 0;
}
