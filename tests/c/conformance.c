/*
 * conformance.c: the C runner of the conformance suite. Reads
 * tests/conformance/cases.txt (its format is described at the top of that
 * file) and runs every case with libhreg against a fresh hregd it starts
 * itself. Fails on any case that does not behave as written and on any line
 * or op it does not know; acknowledges cases for other languages by name;
 * reports cases that need uid 65534 as NOT RUN when not root. Also checks,
 * on every get, that *len is untouched on every error but BUFFER.
 *
 *   conformance HREGD CASES      exit 0: every case for C passed
 *
 * Processes (`process P [nobody]`) are forked children that close what they
 * inherited, drop to uid 65534 for `nobody`, connect, then run one op per
 * line read from a pipe, answering `STATUS NUMBER HEX` per op.
 *
 * Run by client-c/tests/c_api.rs.
 */
#include <hreg.h>
#include <errno.h>
#include <grp.h>
#include <inttypes.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define NOBODY 65534
#define MAX_TOKENS 16
#define MAX_LINES 4096
#define MAX_ACTORS 8
#define MAX_VARS 64
#define MAX_BATCH 64
#define GET_CAP 65536 /* buffer of a whole-value get; the cases stay below */
#define LEN_SENTINEL ((size_t)0x5eed5eed)
#define EVENTUALLY_SECONDS 10.0

/* ---- Lines of the file, split into tokens ---- */

typedef struct {
    int number;
    int n;
    char *tok[MAX_TOKENS];
} line_t;

static line_t lines[MAX_LINES];
static int nlines;

static char failure[2048];

/* Records why the case failed (the arguments may include `failure`
   itself, to prefix it); returns -1 for `return fail(...)`. */
static int fail(const char *fmt, ...)
{
    char text[sizeof failure];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(text, sizeof text, fmt, ap);
    va_end(ap);
    memcpy(failure, text, sizeof failure);
    return -1;
}

static int read_cases(const char *path)
{
    FILE *f = fopen(path, "r");
    if (!f) {
        fprintf(stderr, "conformance: cannot open %s: %s\n", path, strerror(errno));
        exit(2);
    }
    char buf[4096];
    int number = 0;
    while (fgets(buf, sizeof buf, f)) {
        number++;
        line_t l = {.number = number};
        for (char *save = NULL, *t = strtok_r(buf, " \t\r\n", &save); t;
             t = strtok_r(NULL, " \t\r\n", &save)) {
            if (l.n == MAX_TOKENS) {
                fprintf(stderr, "conformance: line %d has too many tokens\n", number);
                exit(2);
            }
            l.tok[l.n++] = strdup(t);
        }
        if (l.n == 0 || l.tok[0][0] == '#')
            continue;
        if (nlines == MAX_LINES) {
            fprintf(stderr, "conformance: too many lines\n");
            exit(2);
        }
        lines[nlines++] = l;
    }
    fclose(f);
    return nlines;
}

static bool is(const line_t *l, int i, const char *word)
{
    return i < l->n && strcmp(l->tok[i], word) == 0;
}

/* Index of "->" in the line, or -1. */
static int arrow(const line_t *l)
{
    for (int i = 0; i < l->n; i++)
        if (strcmp(l->tok[i], "->") == 0)
            return i;
    return -1;
}

/* ---- Values, statuses, outcomes ---- */

static const char *STATUS_NAMES[] = {"OK",       "INVALID",      "STALE",   "DENIED",
                                     "TOO_BIG",  "BUFFER",       "QUOTA",   "NOT_HELD",
                                     "CONNECT",  "DISCONNECTED", "VERSION", "PROTOCOL",
                                     "IO"};

static const char *status_name(int s)
{
    return s >= 0 && s <= 12 ? STATUS_NAMES[s] : "UNKNOWN";
}

/* The bytes a value token stands for, in a malloc'd buffer (*len long). */
static int value(const char *token, unsigned char **out, size_t *len)
{
    if (strcmp(token, "empty") == 0) {
        *out = malloc(1);
        *len = 0;
        return 0;
    }
    if (strncmp(token, "v:", 2) == 0) {
        *len = strlen(token + 2);
        *out = malloc(*len + 1);
        memcpy(*out, token + 2, *len);
        return 0;
    }
    if (strncmp(token, "fill:", 5) == 0) {
        char *end;
        unsigned long n = strtoul(token + 5, &end, 10);
        if (*end || n > (1ul << 30))
            return fail("bad fill length %s", token);
        *len = n;
        *out = malloc(n + 1);
        for (size_t i = 0; i < n; i++)
            (*out)[i] = (unsigned char)('a' + i % 26);
        return 0;
    }
    return fail("unknown value token %s", token);
}

static int flags_of(const char *token, uint32_t *flags)
{
    if (strcmp(token, "none") == 0)
        *flags = 0;
    else if (strcmp(token, "shared") == 0)
        *flags = HREG_SHARED;
    else if (strcmp(token, "detached") == 0)
        *flags = HREG_DETACHED;
    else if (strcmp(token, "shared+detached") == 0)
        *flags = HREG_SHARED | HREG_DETACHED;
    else if (strcmp(token, "unknown") == 0)
        *flags = 0x4;
    else
        return fail("unknown flags token %s", token);
    return 0;
}

static int number_of(const char *token, uint64_t *n)
{
    char *end;
    errno = 0;
    *n = strtoull(token, &end, 10);
    if (errno || *end || !*token)
        return fail("not a number: %s", token);
    return 0;
}

/* What an op did: its status, a number (handle, length or count) and the
   bytes read, if any. Also the line a child answers. */
typedef struct {
    int status;
    uint64_t number;
    bool has_data;
    size_t len;
    unsigned char data[GET_CAP];
} outcome_t;

static void format_outcome(const outcome_t *o, FILE *out)
{
    fprintf(out, "%s %" PRIu64 " ", status_name(o->status), o->number);
    if (!o->has_data) {
        fputs("-\n", out);
        return;
    }
    fputc('x', out);
    for (size_t i = 0; i < o->len; i++)
        fprintf(out, "%02x", o->data[i]);
    fputc('\n', out);
}

static int parse_outcome(char *text, outcome_t *o)
{
    char status[32], data[2 * GET_CAP + 2];
    uint64_t number;
    if (sscanf(text, "%31s %" SCNu64 " %131073s", status, &number, data) != 3)
        return fail("bad answer from a child: %s", text);
    o->status = -1;
    for (int s = 0; s <= 12; s++)
        if (strcmp(status, STATUS_NAMES[s]) == 0)
            o->status = s;
    o->number = number;
    o->has_data = data[0] == 'x';
    o->len = 0;
    if (o->has_data) {
        for (const char *p = data + 1; p[0] && p[1]; p += 2) {
            unsigned byte;
            sscanf(p, "%2x", &byte);
            o->data[o->len++] = (unsigned char)byte;
        }
    }
    return 0;
}

/* ---- Running one single op with libhreg ---- */

static int args_wanted(const char *op, int got, int wanted)
{
    if (got != wanted)
        return fail("%s takes %d arguments, got %d", op, wanted, got);
    return 0;
}

/* A get-family call: checks that *len is untouched on errors but BUFFER. */
static int after_get(int status, size_t len, const unsigned char *buf, outcome_t *o)
{
    o->status = status;
    if (status == HREG_OK || status == HREG_ERR_BUFFER) {
        o->number = len;
        if (status == HREG_OK) {
            if (len > sizeof o->data)
                return fail("a value of %zu bytes is longer than the runner's buffer", len);
            o->has_data = true;
            o->len = len;
            if (len > 0)
                memcpy(o->data, buf, len);
        }
    } else if (len != LEN_SENTINEL) {
        return fail("*len changed to %zu on %s", len, status_name(status));
    }
    return 0;
}

/* Runs op with its (resolved) arguments; -1 on a runner error. */
static int execute(hreg_client *c, const char *op, char **args, int nargs, outcome_t *o)
{
    memset(o, 0, offsetof(outcome_t, data));
    uint64_t h = 0;
    unsigned char *v = NULL;
    size_t vlen = 0;
    int rc = 0;
    bool takes_handle = strcmp(op, "insert") != 0 && strcmp(op, "objects") != 0 &&
                        strcmp(op, "flush") != 0 &&
                        strcmp(op, "insert_null") != 0 && strcmp(op, "submit_null") != 0 &&
                        strcmp(op, "null_client") != 0 && strcmp(op, "stats_null") != 0 &&
                        strcmp(op, "insert_noout") != 0;
    if (takes_handle && (nargs < 1 || number_of(args[0], &h) < 0))
        return fail("%s needs a handle", op);

    if (strcmp(op, "insert") == 0) {
        uint32_t flags;
        if (args_wanted(op, nargs, 2) < 0 || value(args[0], &v, &vlen) < 0 ||
            flags_of(args[1], &flags) < 0)
            return -1;
        hreg_handle out = 0;
        o->status = hreg_insert(c, v, vlen, flags, &out);
        o->number = out;
    } else if (strcmp(op, "get") == 0) {
        if (args_wanted(op, nargs, 1) < 0)
            return -1;
        unsigned char *buf = malloc(GET_CAP);
        size_t len = LEN_SENTINEL;
        int status = hreg_get(c, h, buf, GET_CAP, &len);
        rc = after_get(status, len, buf, o);
        free(buf);
    } else if (strcmp(op, "get_into") == 0 || strcmp(op, "get_null") == 0) {
        uint64_t cap;
        if (args_wanted(op, nargs, 2) < 0 || number_of(args[1], &cap) < 0)
            return -1;
        /* get_into with CAP 0 is C's size probe: buf NULL. */
        bool null = strcmp(op, "get_null") == 0 || cap == 0;
        unsigned char *buf = null ? NULL : malloc(cap);
        size_t len = LEN_SENTINEL;
        int status = hreg_get(c, h, buf, cap, &len);
        rc = after_get(status, len, buf, o);
        free(buf);
    } else if (strcmp(op, "get_nolen") == 0) {
        unsigned char buf[16];
        if (args_wanted(op, nargs, 1) < 0)
            return -1;
        o->status = hreg_get(c, h, buf, sizeof buf, NULL);
    } else if (strcmp(op, "replace") == 0) {
        if (args_wanted(op, nargs, 2) < 0 || value(args[1], &v, &vlen) < 0)
            return -1;
        o->status = hreg_replace(c, h, v, vlen);
    } else if (strcmp(op, "replace_null") == 0) {
        uint64_t len;
        if (args_wanted(op, nargs, 2) < 0 || number_of(args[1], &len) < 0)
            return -1;
        o->status = hreg_replace(c, h, NULL, len);
    } else if (strcmp(op, "retain") == 0 && args_wanted(op, nargs, 1) == 0) {
        o->status = hreg_retain(c, h);
    } else if (strcmp(op, "release") == 0 && args_wanted(op, nargs, 1) == 0) {
        o->status = hreg_release(c, h);
    } else if (strcmp(op, "remove") == 0 && args_wanted(op, nargs, 1) == 0) {
        o->status = hreg_remove(c, h);
    } else if (strcmp(op, "flush") == 0 && args_wanted(op, nargs, 0) == 0) {
        o->status = hreg_flush(c);
    } else if (strcmp(op, "objects") == 0 && args_wanted(op, nargs, 0) == 0) {
        hreg_stats s;
        o->status = hreg_stats_get(c, &s);
        o->number = s.objects;
    } else if (strcmp(op, "insert_null") == 0) {
        uint64_t len;
        if (args_wanted(op, nargs, 1) < 0 || number_of(args[0], &len) < 0)
            return -1;
        hreg_handle out = 0;
        o->status = hreg_insert(c, NULL, len, 0, &out);
        o->number = out;
    } else if (strcmp(op, "insert_noout") == 0) {
        if (args_wanted(op, nargs, 1) < 0 || value(args[0], &v, &vlen) < 0)
            return -1;
        o->status = hreg_insert(c, v, vlen, 0, NULL);
    } else if (strcmp(op, "submit_null") == 0) {
        uint64_t n;
        if (args_wanted(op, nargs, 1) < 0 || number_of(args[0], &n) < 0)
            return -1;
        o->status = hreg_submit(c, NULL, n);
    } else if (strcmp(op, "stats_null") == 0 && args_wanted(op, nargs, 0) == 0) {
        o->status = hreg_stats_get(c, NULL);
    } else if (strcmp(op, "null_client") == 0 && args_wanted(op, nargs, 0) == 0) {
        /* Every call with a NULL client: INVALID, or the first other status. */
        unsigned char buf[4];
        size_t len = LEN_SENTINEL;
        hreg_handle out;
        hreg_stats s;
        hreg_op one = {.opcode = HREG_OP_RETAIN, .handle = 1};
        int got[] = {
            hreg_insert(NULL, "x", 1, 0, &out), hreg_get(NULL, 1, buf, sizeof buf, &len),
            hreg_replace(NULL, 1, "x", 1),      hreg_retain(NULL, 1),
            hreg_release(NULL, 1),              hreg_remove(NULL, 1),
            hreg_submit(NULL, &one, 1),         hreg_stats_get(NULL, &s),
        };
        hreg_disconnect(NULL); /* a no-op */
        o->status = HREG_ERR_INVALID;
        for (size_t i = 0; i < sizeof got / sizeof got[0]; i++)
            if (got[i] != HREG_ERR_INVALID) {
                o->status = got[i];
                break;
            }
        if (len != LEN_SENTINEL)
            rc = fail("hreg_get(NULL client) changed *len");
    } else if (failure[0] == 0) {
        rc = fail("the c runner does not know the op `%s`", op);
    } else {
        rc = -1;
    }
    free(v);
    return rc;
}

/* The ops `execute` knows, and those a batch knows. */
static const char *OPS[] = {"insert",       "get",         "get_into",  "replace",
                            "retain",       "release",     "remove",    "objects",
                            "get_null",     "get_nolen",   "insert_null", "replace_null",
                            "submit_null",  "null_client", "stats_null", "insert_noout",
                            "flush",        NULL};
static const char *BATCH_OPS[] = {"insert",  "get",     "get_into", "replace", "retain",
                                  "release", "remove",  "raw",      NULL};

static bool known(const char **list, const char *op)
{
    for (; *list; list++)
        if (strcmp(*list, op) == 0)
            return true;
    return false;
}

/* ---- The daemon ---- */

typedef struct {
    pid_t pid;
    char dir[64];
    char socket[96];
} daemon_t;

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int start_daemon(daemon_t *d, const char *hregd, char **args, int nargs)
{
    strcpy(d->dir, "/tmp/hreg-c-XXXXXX");
    if (!mkdtemp(d->dir) || chmod(d->dir, 0755) != 0)
        return fail("mkdtemp: %s", strerror(errno));
    snprintf(d->socket, sizeof d->socket, "%s/hreg.sock", d->dir);
    char *argv[64] = {(char *)hregd, "--socket", d->socket, "--socket-mode", "666"};
    int argc = 5;
    for (int i = 0; i < nargs && argc < 62; i++)
        argv[argc++] = args[i];
    argv[argc] = NULL;
    d->pid = fork();
    if (d->pid < 0)
        return fail("fork: %s", strerror(errno));
    if (d->pid == 0) {
        setenv("RUST_LOG", "error", 1);
        execv(hregd, argv);
        _exit(127);
    }
    double deadline = now() + 20;
    for (;;) {
        hreg_client *c = NULL;
        if (hreg_connect(d->socket, &c) == HREG_OK) {
            hreg_disconnect(c);
            return 0;
        }
        if (now() > deadline || waitpid(d->pid, NULL, WNOHANG) == d->pid)
            return fail("hregd did not start");
        usleep(10000);
    }
}

static void stop_daemon(daemon_t *d)
{
    if (d->pid > 0) {
        kill(d->pid, SIGKILL);
        waitpid(d->pid, NULL, 0);
        d->pid = 0;
    }
    unlink(d->socket);
    rmdir(d->dir);
}

/* ---- Actors: sessions and child processes ---- */

typedef struct {
    char name[32];
    hreg_client *client; /* a session */
    pid_t pid;           /* a process */
    FILE *to, *from;
} actor_t;

static actor_t actors[MAX_ACTORS];
static int nactors;

static struct {
    char name[32];
    uint64_t handle;
} vars[MAX_VARS];
static int nvars;

static actor_t *find_actor(const char *name)
{
    for (int i = 0; i < nactors; i++)
        if (strcmp(actors[i].name, name) == 0)
            return &actors[i];
    return NULL;
}

static void drop_actor(actor_t *a)
{
    *a = actors[--nactors];
}

/* The child's whole life; never returns. */
static void child_main(const char *socket, bool nobody, int in, int out)
{
    for (int fd = 3; fd < 4096; fd++)
        if (fd != in && fd != out)
            close(fd);
    FILE *from = fdopen(in, "r"), *to = fdopen(out, "w");
    if (nobody && (setgroups(0, NULL) != 0 || setgid(NOBODY) != 0 || setuid(NOBODY) != 0)) {
        fprintf(to, "could not drop to uid 65534\n");
        _exit(1);
    }
    hreg_client *c = NULL;
    int s = hreg_connect(socket, &c);
    if (s != HREG_OK) {
        fprintf(to, "connect: %s\n", hreg_strerror(s));
        _exit(1);
    }
    fprintf(to, "ready\n");
    fflush(to);
    static outcome_t o;
    char buf[4096];
    while (fgets(buf, sizeof buf, from)) {
        char *tok[MAX_TOKENS];
        int n = 0;
        for (char *save = NULL, *t = strtok_r(buf, " \n", &save); t && n < MAX_TOKENS;
             t = strtok_r(NULL, " \n", &save))
            tok[n++] = t;
        failure[0] = 0;
        if (n == 0 || execute(c, tok[0], tok + 1, n - 1, &o) < 0)
            fprintf(to, "ERROR %s\n", failure);
        else
            format_outcome(&o, to);
        fflush(to);
    }
    hreg_disconnect(c);
    _exit(0);
}

static int spawn_child(actor_t *a, const char *socket, bool nobody)
{
    int down[2], up[2];
    if (pipe(down) != 0 || pipe(up) != 0)
        return fail("pipe: %s", strerror(errno));
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0)
        return fail("fork: %s", strerror(errno));
    if (pid == 0) {
        close(down[1]);
        close(up[0]);
        child_main(socket, nobody, down[0], up[1]);
    }
    close(down[0]);
    close(up[1]);
    a->pid = pid;
    a->to = fdopen(down[1], "w");
    a->from = fdopen(up[0], "r");
    char buf[256];
    if (!fgets(buf, sizeof buf, a->from) || strcmp(buf, "ready\n") != 0)
        return fail("the child process did not start: %s", buf);
    return 0;
}

static int child_run(actor_t *a, char **tok, int n, outcome_t *o)
{
    for (int i = 0; i < n; i++)
        fprintf(a->to, "%s%s", i ? " " : "", tok[i]);
    fputc('\n', a->to);
    fflush(a->to);
    static char buf[2 * GET_CAP + 64];
    if (!fgets(buf, sizeof buf, a->from))
        return fail("the child process exited");
    if (strncmp(buf, "ERROR ", 6) == 0)
        return fail("%s", buf + 6);
    return parse_outcome(buf, o);
}

static void end_child(actor_t *a, bool hard)
{
    if (hard)
        kill(a->pid, SIGKILL);
    fclose(a->to);
    int status = 0;
    waitpid(a->pid, &status, 0);
    fclose(a->from);
    a->pid = 0;
    if (!hard && !(WIFEXITED(status) && WEXITSTATUS(status) == 0))
        fail("the child process exited with status %d", status);
}

static void end_actors(void)
{
    while (nactors > 0) {
        actor_t *a = &actors[nactors - 1];
        if (a->pid)
            end_child(a, true);
        else
            hreg_disconnect(a->client);
        nactors--;
    }
}

/* ---- Checking ---- */

/* tok[] with every $name replaced by its number (in `store`). */
static int resolve(char **tok, int n, char **out, char store[][24])
{
    for (int i = 0; i < n; i++) {
        out[i] = tok[i];
        if (tok[i][0] != '$')
            continue;
        int v = 0;
        while (v < nvars && strcmp(vars[v].name, tok[i] + 1) != 0)
            v++;
        if (v == nvars)
            return fail("%s is not bound", tok[i]);
        snprintf(store[i], 24, "%" PRIu64, vars[v].handle);
        out[i] = store[i];
    }
    return 0;
}

/* Checks `o` against the expectation tokens (after "->"); binds $names. */
static int check(const char *op, char **expect, int nexpect, const outcome_t *o)
{
    if (strcmp(expect[0], status_name(o->status)) != 0)
        return fail("expected %s%s%s, got %s", expect[0], nexpect > 1 ? " " : "",
                    nexpect > 1 ? expect[1] : "", status_name(o->status));
    if (nexpect < 2)
        return 0;
    const char *extra = expect[1];
    if (extra[0] == '$') {
        if (strncmp(op, "insert", 6) != 0)
            return fail("only an insert binds a handle, not %s", op);
        if (nvars == MAX_VARS)
            return fail("too many names");
        snprintf(vars[nvars].name, sizeof vars[nvars].name, "%s", extra + 1);
        vars[nvars++].handle = o->number;
        return 0;
    }
    if (strcmp(expect[0], "BUFFER") == 0 || strcmp(op, "objects") == 0) {
        uint64_t n;
        if (number_of(extra, &n) < 0)
            return -1;
        if (n != o->number)
            return fail("expected %s %s, got %" PRIu64, expect[0], extra, o->number);
        return 0;
    }
    unsigned char *v;
    size_t vlen;
    if (value(extra, &v, &vlen) < 0)
        return -1;
    bool same = o->has_data && o->len == vlen && memcmp(o->data, v, vlen) == 0;
    free(v);
    if (!same)
        return fail("expected the value %s, got %zu bytes%s", extra, o->len,
                    o->has_data ? "" : " (none read)");
    return 0;
}

/* ---- Batches ---- */

/* Runs the batch of lines [from, to) (ops) ended by `submit -> STATUS`. */
static int run_batch(actor_t *a, int from, int to)
{
    static hreg_op ops[MAX_BATCH];
    static outcome_t o;
    int n = to - from;
    if (n > MAX_BATCH)
        return fail("batch too long");
    memset(ops, 0, sizeof ops);
    int rc = 0;
    for (int i = 0; i < n && rc == 0; i++) {
        line_t *l = &lines[from + i];
        int at = arrow(l);
        char *args[MAX_TOKENS], store[MAX_TOKENS][24];
        if (resolve(l->tok + 1, at - 1, args, store) < 0)
            return fail("line %d: %s", l->number, failure);
        int nargs = at - 1;
        const char *op = l->tok[0];
        hreg_op *p = &ops[i];
        uint64_t h = 0, cap = 0;
        unsigned char *v = NULL;
        size_t vlen = 0;
        if (strcmp(op, "insert") == 0) {
            p->opcode = HREG_OP_INSERT;
            rc = nargs == 2 ? value(args[0], &v, &vlen) : fail("insert takes 2 arguments");
            if (rc == 0)
                rc = flags_of(args[1], &p->flags);
            p->buf = v;
            p->len = vlen;
        } else if (strcmp(op, "raw") == 0) {
            uint64_t code;
            rc = nargs == 3 ? number_of(args[0], &code) : fail("raw takes 3 arguments");
            if (rc == 0)
                rc = flags_of(args[1], &p->flags);
            if (rc == 0)
                rc = number_of(args[2], &h);
            p->opcode = (uint32_t)code;
            p->handle = h;
        } else {
            rc = nargs >= 1 ? number_of(args[0], &h) : fail("%s needs a handle", op);
            p->handle = h;
            if (strcmp(op, "get") == 0) {
                p->opcode = HREG_OP_GET;
                p->buf = malloc(GET_CAP);
                p->len = GET_CAP;
            } else if (strcmp(op, "get_into") == 0) {
                p->opcode = HREG_OP_GET;
                if (rc == 0)
                    rc = nargs == 2 ? number_of(args[1], &cap) : fail("get_into takes 2 arguments");
                p->buf = cap ? malloc(cap) : NULL;
                p->len = cap;
            } else if (strcmp(op, "replace") == 0) {
                p->opcode = HREG_OP_REPLACE;
                if (rc == 0)
                    rc = nargs == 2 ? value(args[1], &v, &vlen) : fail("replace takes 2 arguments");
                p->buf = v;
                p->len = vlen;
            } else if (strcmp(op, "retain") == 0) {
                p->opcode = HREG_OP_RETAIN;
            } else if (strcmp(op, "release") == 0) {
                p->opcode = HREG_OP_RELEASE;
            } else if (strcmp(op, "remove") == 0) {
                p->opcode = HREG_OP_REMOVE;
            } else {
                rc = fail("the c runner cannot express the batch op `%s`", op);
            }
        }
        if (rc < 0)
            rc = fail("line %d: %s", l->number, failure);
    }
    int status = rc == 0 ? hreg_submit(a->client, ops, n) : -1;
    int first = HREG_OK;
    for (int i = 0; i < n && rc == 0; i++) {
        line_t *l = &lines[from + i];
        int at = arrow(l);
        memset(&o, 0, offsetof(outcome_t, data));
        o.status = ops[i].status;
        if (ops[i].opcode == HREG_OP_INSERT && o.status == HREG_OK)
            o.number = ops[i].handle;
        if (ops[i].opcode == HREG_OP_GET && strcmp(l->tok[0], "raw") != 0 &&
            (o.status == HREG_OK || o.status == HREG_ERR_BUFFER)) {
            o.number = ops[i].len;
            if (o.status == HREG_OK) {
                if (ops[i].len > sizeof o.data) {
                    rc = fail("a value longer than the runner's buffer");
                    break;
                }
                o.has_data = true;
                o.len = ops[i].len;
                if (o.len)
                    memcpy(o.data, ops[i].buf, o.len);
            }
        }
        if (first == HREG_OK)
            first = o.status;
        if (check(l->tok[0], l->tok + at + 1, l->n - at - 1, &o) < 0)
            rc = fail("line %d (in the batch): %s: %s", l->number, l->tok[0], failure);
    }
    for (int i = 0; i < n; i++)
        if (ops[i].opcode != HREG_OP_RETAIN && ops[i].opcode != HREG_OP_RELEASE &&
            ops[i].opcode != HREG_OP_REMOVE)
            free(ops[i].buf);
    if (rc < 0)
        return -1;
    line_t *end = &lines[to];
    const char *want = end->tok[arrow(end) + 1];
    if (strcmp(want, status_name(status)) != 0 || status != first)
        return fail("line %d: hreg_submit returned %s (first failed op: %s), expected %s",
                    end->number, status_name(status), status_name(first), want);
    return 0;
}

/* ---- Cases ---- */

/* Lines [from, to) are the body of a case (between `case` and `end`). */
static int validate(int from, int to)
{
    bool in_batch = false;
    for (int i = from; i < to; i++) {
        line_t *l = &lines[i];
        const char *t0 = l->tok[0];
        if (in_batch) {
            if (strcmp(t0, "submit") == 0) {
                if (arrow(l) != 1 || l->n != 3)
                    return fail("line %d: expected `submit -> STATUS`", l->number);
                in_batch = false;
            } else if (arrow(l) < 1 || !known(BATCH_OPS, t0)) {
                return fail("line %d: the c runner cannot run `%s` in a batch", l->number, t0);
            }
            continue;
        }
        if ((strcmp(t0, "languages") == 0 && l->n > 1) || strcmp(t0, "daemon") == 0 ||
            ((strcmp(t0, "session") == 0 || strcmp(t0, "close") == 0 ||
              strcmp(t0, "kill") == 0) &&
             l->n == 2) ||
            (strcmp(t0, "process") == 0 && (l->n == 2 || (l->n == 3 && is(l, 2, "nobody")))))
            continue;
        if (l->n == 2 && is(l, 1, "batch")) {
            in_batch = true;
            continue;
        }
        int op = strcmp(t0, "eventually") == 0 ? 2 : 1;
        int at = arrow(l);
        if (at <= op || l->n - at - 1 < 1 || l->n - at - 1 > 2)
            return fail("line %d: unknown statement", l->number);
        if (!known(OPS, l->tok[op]))
            return fail("line %d: the c runner does not know the op `%s`", l->number,
                        l->tok[op]);
    }
    if (in_batch)
        return fail("the case ends inside a batch");
    return 0;
}

static int run_steps(int from, int to, const char *socket)
{
    static outcome_t o;
    for (int i = from; i < to; i++) {
        line_t *l = &lines[i];
        const char *t0 = l->tok[0];
        if (strcmp(t0, "languages") == 0 || strcmp(t0, "daemon") == 0)
            continue;
        if (strcmp(t0, "session") == 0 || strcmp(t0, "process") == 0) {
            if (nactors == MAX_ACTORS)
                return fail("too many sessions");
            actor_t *a = &actors[nactors];
            memset(a, 0, sizeof *a);
            snprintf(a->name, sizeof a->name, "%s", l->tok[1]);
            if (t0[0] == 's') {
                int s = hreg_connect(socket, &a->client);
                if (s != HREG_OK)
                    return fail("line %d: connect: %s", l->number, hreg_strerror(s));
            } else if (spawn_child(a, socket, l->n == 3) < 0) {
                return fail("line %d: %s", l->number, failure);
            }
            nactors++;
            continue;
        }
        if (strcmp(t0, "close") == 0 || strcmp(t0, "kill") == 0) {
            actor_t *a = find_actor(l->tok[1]);
            if (!a || (t0[0] == 'k' && !a->pid))
                return fail("line %d: cannot %s %s", l->number, t0, l->tok[1]);
            failure[0] = 0;
            if (a->pid)
                end_child(a, t0[0] == 'k');
            else
                hreg_disconnect(a->client);
            drop_actor(a);
            if (failure[0])
                return fail("line %d: %s", l->number, failure);
            continue;
        }
        if (l->n == 2 && is(l, 1, "batch")) {
            actor_t *a = find_actor(t0);
            if (!a || a->pid)
                return fail("line %d: a batch needs a session, not %s", l->number, t0);
            int end = i + 1;
            while (!is(&lines[end], 0, "submit"))
                end++;
            if (run_batch(a, i + 1, end) < 0)
                return -1;
            i = end;
            continue;
        }
        bool eventually = strcmp(t0, "eventually") == 0;
        int first = eventually ? 1 : 0;
        int at = arrow(l);
        actor_t *a = find_actor(l->tok[first]);
        if (!a)
            return fail("line %d: no session or process %s", l->number, l->tok[first]);
        char *args[MAX_TOKENS], store[MAX_TOKENS][24];
        int n = at - first - 1;
        if (resolve(l->tok + first + 1, n, args, store) < 0)
            return fail("line %d: %s", l->number, failure);
        double deadline = now() + EVENTUALLY_SECONDS;
        for (;;) {
            failure[0] = 0;
            int rc = a->pid ? child_run(a, args, n, &o)
                            : execute(a->client, args[0], args + 1, n - 1, &o);
            if (rc < 0)
                return fail("line %d: %s", l->number, failure);
            if (check(args[0], l->tok + at + 1, l->n - at - 1, &o) == 0)
                break;
            if (!eventually || now() > deadline)
                return fail("line %d: %s: %s", l->number, args[0], failure);
            usleep(10000);
        }
    }
    return 0;
}

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: %s HREGD CASES\n", argv[0]);
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    read_cases(argv[2]);
    char *global[MAX_TOKENS * 4];
    int nglobal = 0, passed = 0, failed = 0, other = 0, not_run = 0, cases = 0;
    bool root = geteuid() == 0;
    for (int i = 0; i < nlines; i++) {
        line_t *l = &lines[i];
        if (is(l, 0, "daemon")) {
            for (int t = 1; t < l->n && nglobal < MAX_TOKENS * 4; t++)
                global[nglobal++] = l->tok[t];
            continue;
        }
        if (!is(l, 0, "case") || l->n != 2) {
            fprintf(stderr, "conformance: line %d: unknown statement outside a case\n",
                    l->number);
            return 1;
        }
        const char *name = l->tok[1];
        int from = i + 1, to = from;
        while (to < nlines && !(is(&lines[to], 0, "end") && lines[to].n == 1))
            to++;
        if (to == nlines) {
            fprintf(stderr, "conformance: case %s has no end\n", name);
            return 1;
        }
        i = to;
        cases++;
        /* Languages, needs root, and this case's daemon arguments. */
        bool for_c = true, needs_root = false;
        char langs[256] = "";
        char *args[MAX_TOKENS * 8];
        int nargs = 0;
        for (int g = 0; g < nglobal; g++)
            args[nargs++] = global[g];
        for (int s = from; s < to; s++) {
            line_t *x = &lines[s];
            if (is(x, 0, "languages")) {
                for_c = false;
                for (int t = 1; t < x->n; t++) {
                    for_c = for_c || strcmp(x->tok[t], "c") == 0;
                    strncat(langs, " ", sizeof langs - strlen(langs) - 1);
                    strncat(langs, x->tok[t], sizeof langs - strlen(langs) - 1);
                }
            }
            if (is(x, 0, "process") && is(x, 2, "nobody"))
                needs_root = true;
            if (is(x, 0, "daemon"))
                for (int t = 1; t < x->n && nargs < MAX_TOKENS * 8 - 1; t++)
                    args[nargs++] = x->tok[t];
        }
        if (!for_c) {
            printf("conformance c: %s ... n/a (languages:%s)\n", name, langs);
            other++;
            continue;
        }
        if (needs_root && !root) {
            printf("conformance c: %s ... NOT RUN: needs root to run a process as uid 65534\n",
                   name);
            not_run++;
            continue;
        }
        failure[0] = 0;
        nvars = 0;
        daemon_t d = {0};
        int rc = validate(from, to);
        if (rc == 0)
            rc = start_daemon(&d, argv[1], args, nargs);
        if (rc == 0)
            rc = run_steps(from, to, d.socket);
        end_actors();
        stop_daemon(&d);
        if (rc == 0) {
            printf("conformance c: %s ... ok\n", name);
            passed++;
        } else {
            printf("conformance c: %s ... FAILED: %s\n", name, failure);
            failed++;
        }
        fflush(stdout);
    }
    printf("conformance c: %d passed, %d failed, %d for other languages, %d not run (need "
           "root)\n",
           passed, failed, other, not_run);
    if (cases < 20) {
        printf("conformance c: only %d cases in %s\n", cases, argv[2]);
        return 1;
    }
    return failed ? 1 : 0;
}
