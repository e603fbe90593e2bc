/*
 * producer: inserts the value given on the command line as a DETACHED
 * object (it outlives this process) and prints its handle. Pair it with
 * consumer, which reads the value in another process and removes it.
 *
 *   cc producer.c $(pkg-config --cflags --libs hreg) -o producer
 *   ./producer 'hello from C'            # uses $HREG_SOCKET or the default
 *
 * Errors are reported with hreg_last_error(), which says more than
 * hreg_strerror(status): the socket paths tried, the limit passed, ...
 */
#include <hreg.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: %s VALUE\n", argv[0]);
        return 2;
    }
    hreg_client *client;
    int status = hreg_connect(NULL, &client); /* NULL: the default socket */
    if (status != HREG_OK) {
        fprintf(stderr, "producer: connect: %s\n", hreg_last_error());
        return 1;
    }
    hreg_handle h;
    status = hreg_insert(client, argv[1], strlen(argv[1]), HREG_DETACHED, &h);
    if (status != HREG_OK) {
        fprintf(stderr, "producer: insert: %s\n", hreg_last_error());
        hreg_disconnect(client);
        return 1;
    }
    printf("%" PRIu64 "\n", h);
    hreg_disconnect(client); /* the DETACHED object stays */
    return 0;
}
