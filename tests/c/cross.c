/*
 * cross.c: the C side of the cross-language tests (the Rust side is in
 * client-c/tests/c_api.rs, using the hreg crate directly).
 *
 *   cross put SOCKET VALUE          inserts VALUE SHARED|DETACHED, prints the
 *                                   handle (Rust reads and removes it)
 *   cross get SOCKET HANDLE VALUE   reads HANDLE (inserted by Rust), checks it
 *                                   equals VALUE, and replaces it with
 *                                   "seen by C"
 *   cross hold SOCKET N HANDLE      inserts N objects and retains HANDLE, prints
 *                                   "ready", then waits to be killed with
 *                                   SIGKILL (its references must go with it)
 */
#include "check.h"
#include <hreg.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    if (argc < 4) {
        fprintf(stderr, "usage: see the comment atop cross.c\n");
        return 2;
    }
    hreg_client *c;
    EXPECT(hreg_connect(argv[2], &c), HREG_OK);

    if (strcmp(argv[1], "put") == 0) {
        hreg_handle h;
        EXPECT(hreg_insert(c, argv[3], strlen(argv[3]), HREG_SHARED | HREG_DETACHED, &h),
               HREG_OK);
        printf("%" PRIu64 "\n", h);
    } else if (strcmp(argv[1], "get") == 0 && argc == 5) {
        hreg_handle h = strtoull(argv[3], NULL, 0);
        size_t len = 0, want = strlen(argv[4]);
        EXPECT(hreg_get(c, h, NULL, 0, &len), want ? HREG_ERR_BUFFER : HREG_OK);
        char *buf = malloc(len + 1);
        EXPECT(hreg_get(c, h, buf, len, &len), HREG_OK);
        if (len != want || memcmp(buf, argv[4], len) != 0) {
            fprintf(stderr, "cross get: read %zu bytes, not the %zu expected\n", len, want);
            return 1;
        }
        free(buf);
        EXPECT(hreg_replace(c, h, "seen by C", 9), HREG_OK);
        printf("ok\n");
    } else if (strcmp(argv[1], "hold") == 0 && argc == 5) {
        long n = strtol(argv[3], NULL, 10);
        for (long i = 0; i < n; i++) {
            hreg_handle h;
            EXPECT(hreg_insert(c, "held by C", 9, 0, &h), HREG_OK);
        }
        EXPECT(hreg_retain(c, strtoull(argv[4], NULL, 0)), HREG_OK);
        printf("ready\n");
        fflush(stdout);
        for (;;)
            pause();
    } else {
        fprintf(stderr, "usage: see the comment atop cross.c\n");
        return 2;
    }
    fflush(stdout);
    hreg_disconnect(c);
    return 0;
}
