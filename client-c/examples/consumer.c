/*
 * consumer: takes a handle (decimal or 0x hex) on the command line, prints
 * the object's value, then removes the object. The value may have been put
 * there by another process, e.g. producer.
 *
 *   cc consumer.c $(pkg-config --cflags --libs hreg) -o consumer
 *   ./consumer "$(./producer 'hello from C')"
 */
#include <errno.h>
#include <hreg.h>
#include <stdio.h>
#include <stdlib.h>

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: %s HANDLE\n", argv[0]);
        return 2;
    }
    char *end;
    errno = 0;
    hreg_handle h = strtoull(argv[1], &end, 0);
    if (errno != 0 || *end != '\0' || end == argv[1]) {
        fprintf(stderr, "consumer: not a handle: %s\n", argv[1]);
        return 2;
    }
    hreg_client *client;
    int status = hreg_connect(NULL, &client);
    if (status != HREG_OK) {
        fprintf(stderr, "consumer: connect: %s\n", hreg_last_error());
        return 1;
    }
    /* Ask for the size first (a NULL buffer with capacity 0), then read. */
    size_t len = 0;
    char *buf = NULL;
    const char *what = "get";
    status = hreg_get(client, h, NULL, 0, &len);
    if (status == HREG_ERR_BUFFER) {
        buf = malloc(len);
        if (buf == NULL) {
            fprintf(stderr, "consumer: get %s: out of memory for %zu bytes\n", argv[1], len);
            hreg_disconnect(client);
            return 1;
        }
        status = hreg_get(client, h, buf, len, &len);
    }
    if (status == HREG_OK) {
        what = "remove";
        status = hreg_remove(client, h);
    }
    if (status == HREG_OK) {
        fwrite(buf, 1, len, stdout);
        putchar('\n');
    } else {
        fprintf(stderr, "consumer: %s %s: %s\n", what, argv[1], hreg_last_error());
    }
    free(buf);
    hreg_disconnect(client);
    return status == HREG_OK ? 0 : 1;
}
