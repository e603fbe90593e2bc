/*
 * statuses.c: the statuses that need a particular daemon or a second user,
 * from C against a real hregd. Run by client-c/tests/c_api.rs.
 *
 *   statuses denied SOCKET        DENIED, through a forked child that
 *                                 setuid()s to nobody (needs root; exits 77
 *                                 otherwise). The socket must be reachable
 *                                 by that user (--socket-mode 666).
 *   statuses quota SOCKET N       QUOTA from a daemon run with
 *                                 --max-objects N (and no other objects)
 *   statuses sessions SOCKET      QUOTA from hreg_connect, daemon run with
 *                                 --max-sessions 1
 *   statuses references SOCKET    QUOTA naming uid_max_references, daemon
 *                                 run with --uid-max-references 3
 *   statuses connect PATH STATUS  hreg_connect(PATH) returns STATUS (a fake
 *                                 daemon answers VERSION or PROTOCOL)
 *   statuses disconnect SOCKET PID  kills the daemon (PID) with SIGKILL:
 *                                 then DISCONNECTED everywhere, and no
 *                                 SIGPIPE
 */
#include "check.h"
#include <hreg.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define NOBODY 65534

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static hreg_client *connect_ok(const char *path)
{
    hreg_client *c = NULL;
    EXPECT(hreg_connect(path, &c), HREG_OK);
    return c;
}

/* The child: another user, with its own session. */
static void denied_child(hreg_client *parents, const char *path, hreg_handle mine,
                         hreg_handle shared, int out)
{
    /* The parent's client is not for the child: free our copy of it
       (the parent's session must not notice). */
    hreg_disconnect(parents);
    CHECK(setgid(NOBODY) == 0 && setuid(NOBODY) == 0);
    hreg_client *c = connect_ok(path);
    char buf[32];
    size_t len = 555;

    /* Reading: only SHARED objects. */
    EXPECT(hreg_get(c, mine, buf, sizeof buf, &len), HREG_ERR_DENIED);
    EXPECT(hreg_get(c, mine, NULL, 0, &len), HREG_ERR_DENIED);
    CHECK(len == 555);
    EXPECT(hreg_get(c, shared, buf, sizeof buf, &len), HREG_OK);
    CHECK(len == 6 && memcmp(buf, "shared", 6) == 0);
    const void *data = NULL;
    uint64_t ref = 0;
    EXPECT(hreg_get_ref(c, mine, &data, &len, &ref), HREG_ERR_DENIED);
    CHECK(data == NULL && ref == 0);
    EXPECT(hreg_get_ref(c, shared, &data, &len, &ref), HREG_OK);
    CHECK(len == 6 && memcmp(data, "shared", 6) == 0);
    EXPECT(hreg_ref_release(c, ref), HREG_OK);
    /* retain needs read access; release without a reference is NOT_HELD. */
    EXPECT(hreg_retain(c, mine), HREG_ERR_DENIED);
    EXPECT(hreg_release(c, mine), HREG_ERR_NOT_HELD);
    EXPECT(hreg_retain(c, shared), HREG_OK);
    EXPECT(hreg_release(c, shared), HREG_OK);
    EXPECT(hreg_release(c, shared), HREG_ERR_NOT_HELD);
    /* Changing: only the owner's uid. */
    EXPECT(hreg_replace(c, shared, "mine now", 8), HREG_ERR_DENIED);
    EXPECT(hreg_replace(c, mine, "mine now", 8), HREG_ERR_DENIED);
    EXPECT(hreg_remove(c, shared), HREG_ERR_DENIED);
    EXPECT(hreg_remove(c, mine), HREG_ERR_DENIED);
    /* STALE comes before DENIED. */
    EXPECT(hreg_get(c, 0x7777777ull, buf, sizeof buf, &len), HREG_ERR_STALE);

    /* In a batch, per op. */
    hreg_op ops[] = {
        {.opcode = HREG_OP_GET, .handle = shared, .buf = buf, .len = sizeof buf},
        {.opcode = HREG_OP_GET, .handle = mine, .buf = buf, .len = sizeof buf},
        {.opcode = HREG_OP_REMOVE, .handle = shared},
    };
    EXPECT(hreg_submit(c, ops, 3), HREG_ERR_DENIED);
    CHECK(ops[0].status == HREG_OK && ops[1].status == HREG_ERR_DENIED &&
          ops[2].status == HREG_ERR_DENIED);

    /* An object of this user's, unshared, DETACHED: root may read it. */
    hreg_handle own;
    EXPECT(hreg_insert(c, "nobody's", 8, HREG_DETACHED, &own), HREG_OK);
    CHECK(write(out, &own, sizeof own) == (ssize_t)sizeof own);
    hreg_disconnect(c);
    exit(0);
}

static int denied(const char *path)
{
    if (geteuid() != 0) {
        printf("statuses denied: skipped, needs root for a second uid\n");
        return 77;
    }
    hreg_client *c = connect_ok(path);
    hreg_handle mine, shared;
    EXPECT(hreg_insert(c, "root's", 6, 0, &mine), HREG_OK);
    EXPECT(hreg_insert(c, "shared", 6, HREG_SHARED, &shared), HREG_OK);

    int pipefd[2];
    CHECK(pipe(pipefd) == 0);
    pid_t pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) {
        close(pipefd[0]);
        denied_child(c, path, mine, shared, pipefd[1]);
    }
    close(pipefd[1]);
    hreg_handle theirs = 0;
    CHECK(read(pipefd[0], &theirs, sizeof theirs) == (ssize_t)sizeof theirs);
    close(pipefd[0]);
    int status;
    CHECK(waitpid(pid, &status, 0) == pid);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);

    /* Root may do everything. */
    char buf[16];
    size_t len;
    EXPECT(hreg_get(c, theirs, buf, sizeof buf, &len), HREG_OK);
    CHECK(len == 8 && memcmp(buf, "nobody's", 8) == 0);
    EXPECT(hreg_replace(c, theirs, "root's now", 10), HREG_OK);
    EXPECT(hreg_remove(c, theirs), HREG_OK);
    EXPECT(hreg_get(c, shared, buf, sizeof buf, &len), HREG_OK);
    CHECK(len == 6 && memcmp(buf, "shared", 6) == 0); /* untouched */
    hreg_stats st;
    EXPECT(hreg_stats_get(c, &st), HREG_OK);
    CHECK(st.objects == 2 && st.sessions >= 1);
    EXPECT(hreg_release(c, mine), HREG_OK);
    EXPECT(hreg_release(c, shared), HREG_OK);
    hreg_disconnect(c);
    printf("statuses denied: all checks passed\n");
    return 0;
}

static int quota(const char *path, int max)
{
    hreg_client *c = connect_ok(path);
    hreg_handle *h = calloc((size_t)max + 1, sizeof *h);
    CHECK(h != NULL);
    for (int i = 0; i < max; i++)
        EXPECT(hreg_insert(c, "q", 1, 0, &h[i]), HREG_OK);
    hreg_handle extra = 0;
    EXPECT(hreg_insert(c, "q", 1, 0, &extra), HREG_ERR_QUOTA);
    EXPECT(hreg_insert(c, "q", 1, HREG_DETACHED, &extra), HREG_ERR_QUOTA);
    CHECK(extra == 0);
    /* The last failure says which limit. */
    CHECK(strstr(hreg_last_error(), "max_objects") != NULL);
    EXPECT(hreg_get(c, 0, NULL, 0, NULL), HREG_ERR_INVALID);
    CHECK(strcmp(hreg_last_error(), hreg_strerror(HREG_ERR_INVALID)) == 0);
    /* Per op in a batch: the release frees room for the insert after it. */
    hreg_op ops[] = {
        {.opcode = HREG_OP_INSERT, .buf = "a", .len = 1},
        {.opcode = HREG_OP_RELEASE, .handle = h[0]},
        {.opcode = HREG_OP_INSERT, .buf = "b", .len = 1},
        {.opcode = HREG_OP_INSERT, .buf = "c", .len = 1},
    };
    EXPECT(hreg_submit(c, ops, 4), HREG_ERR_QUOTA);
    CHECK(ops[0].status == HREG_ERR_QUOTA && ops[1].status == HREG_OK &&
          ops[2].status == HREG_OK && ops[3].status == HREG_ERR_QUOTA);
    h[0] = ops[2].handle;
    for (int i = 0; i < max; i++)
        EXPECT(hreg_release(c, h[i]), HREG_OK);
    EXPECT(hreg_insert(c, "q", 1, 0, &extra), HREG_OK);
    EXPECT(hreg_release(c, extra), HREG_OK);
    free(h);
    hreg_disconnect(c);
    printf("statuses quota: all checks passed\n");
    return 0;
}

static int references(const char *path)
{
    hreg_client *c = connect_ok(path);
    hreg_handle h[3], kept = 0, extra = 0;
    for (int i = 0; i < 3; i++)
        EXPECT(hreg_insert(c, "r", 1, HREG_SHARED, &h[i]), HREG_OK);
    /* A DETACHED object takes no reference; retaining it would. */
    EXPECT(hreg_insert(c, "k", 1, HREG_DETACHED, &kept), HREG_OK);
    EXPECT(hreg_retain(c, kept), HREG_ERR_QUOTA);
    CHECK(strstr(hreg_last_error(), "uid_max_references") != NULL);
    EXPECT(hreg_insert(c, "x", 1, 0, &extra), HREG_ERR_QUOTA);
    CHECK(strstr(hreg_last_error(), "uid_max_references") != NULL);
    /* More references to an object already held take no new entry. */
    EXPECT(hreg_retain(c, h[0]), HREG_OK);
    EXPECT(hreg_release(c, h[0]), HREG_OK);
    /* An entry given back makes room. */
    EXPECT(hreg_release(c, h[2]), HREG_OK);
    EXPECT(hreg_retain(c, kept), HREG_OK);
    EXPECT(hreg_release(c, kept), HREG_OK);
    EXPECT(hreg_remove(c, kept), HREG_OK);
    hreg_disconnect(c);
    printf("statuses references: all checks passed\n");
    return 0;
}

static int sessions(const char *path)
{
    /* The daemon may still be ending the session of whoever checked it
       was up: retry the first connection for a while. */
    hreg_client *first = NULL;
    int status;
    double deadline = now() + 10;
    while ((status = hreg_connect(path, &first)) == HREG_ERR_QUOTA && now() < deadline)
        usleep(10000);
    EXPECT(status, HREG_OK);
    hreg_client *second = (hreg_client *)&second;
    EXPECT(hreg_connect(path, &second), HREG_ERR_QUOTA);
    CHECK(second == NULL);
    hreg_disconnect(first);
    /* Once the first session is gone there is room again. */
    deadline = now() + 10;
    while ((status = hreg_connect(path, &second)) == HREG_ERR_QUOTA && now() < deadline)
        usleep(10000);
    EXPECT(status, HREG_OK);
    hreg_disconnect(second);
    printf("statuses sessions: all checks passed\n");
    return 0;
}

static int connect_status(const char *path, int want)
{
    hreg_client *c = (hreg_client *)&c;
    EXPECT(hreg_connect(path, &c), want);
    CHECK(c == NULL);
    printf("statuses connect: %s as expected\n", hreg_strerror(want));
    return 0;
}

static int disconnect(const char *path, pid_t daemon)
{
    /* SIGPIPE keeps its default action: a write to a dead peer would kill
       this process if the library let it happen. */
    signal(SIGPIPE, SIG_DFL);
    hreg_client *c = connect_ok(path);
    hreg_client *idle = connect_ok(path); /* never used on the data path */
    hreg_handle h;
    EXPECT(hreg_insert(c, "doomed", 6, 0, &h), HREG_OK);
    CHECK(kill(daemon, SIGKILL) == 0);

    char buf[16];
    size_t len = 4321;
    int status;
    double start = now();
    while ((status = hreg_get(c, h, buf, sizeof buf, &len)) == HREG_OK) {
        CHECK(now() - start < 10);
        usleep(1000);
    }
    EXPECT(status, HREG_ERR_DISCONNECTED);
    CHECK(len == 4321 || len == 6);
    /* Sticky, on every call. */
    hreg_handle h2 = 0;
    hreg_stats st;
    hreg_op op = {.opcode = HREG_OP_RETAIN, .handle = h};
    EXPECT(hreg_insert(c, "x", 1, 0, &h2), HREG_ERR_DISCONNECTED);
    EXPECT(hreg_replace(c, h, "x", 1), HREG_ERR_DISCONNECTED);
    EXPECT(hreg_retain(c, h), HREG_ERR_DISCONNECTED);
    EXPECT(hreg_release(c, h), HREG_ERR_DISCONNECTED);
    EXPECT(hreg_remove(c, h), HREG_ERR_DISCONNECTED);
    EXPECT(hreg_stats_get(c, &st), HREG_ERR_DISCONNECTED);
    EXPECT(hreg_submit(c, &op, 1), HREG_ERR_DISCONNECTED);
    CHECK(op.status == HREG_ERR_DISCONNECTED);
    /* Still validated first. */
    EXPECT(hreg_get(c, 0, buf, sizeof buf, &len), HREG_ERR_INVALID);
    /* The idle client finds out on its first call (control socket). */
    EXPECT(hreg_stats_get(idle, &st), HREG_ERR_DISCONNECTED);
    EXPECT(hreg_insert(idle, "x", 1, 0, &h2), HREG_ERR_DISCONNECTED);
    hreg_disconnect(c);
    hreg_disconnect(idle);
    /* Nobody listens any more. */
    EXPECT(hreg_connect(path, &c), HREG_ERR_CONNECT);
    printf("statuses disconnect: all checks passed\n");
    return 0;
}

int main(int argc, char **argv)
{
    if (argc == 3 && strcmp(argv[1], "denied") == 0)
        return denied(argv[2]);
    if (argc == 4 && strcmp(argv[1], "quota") == 0)
        return quota(argv[2], atoi(argv[3]));
    if (argc == 3 && strcmp(argv[1], "sessions") == 0)
        return sessions(argv[2]);
    if (argc == 3 && strcmp(argv[1], "references") == 0)
        return references(argv[2]);
    if (argc == 4 && strcmp(argv[1], "connect") == 0)
        return connect_status(argv[2], atoi(argv[3]));
    if (argc == 4 && strcmp(argv[1], "disconnect") == 0)
        return disconnect(argv[2], (pid_t)atoi(argv[3]));
    fprintf(stderr, "usage: see the comment atop statuses.c\n");
    return 2;
}
