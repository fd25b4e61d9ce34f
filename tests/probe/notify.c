/* A minimal sd_notify(3) client for tests/lifecycle.rs, static so that it runs in any image:
 * notify MESSAGE... sends each MESSAGE as one datagram to $NOTIFY_SOCKET. Exit 0 when all
 * were sent, 1 (with the reason on stderr) when not. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

int main(int argc, char **argv) {
    const char *path = getenv("NOTIFY_SOCKET");
    if (!path || !*path) {
        fprintf(stderr, "notify: NOTIFY_SOCKET is not set\n");
        return 1;
    }
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    if (strlen(path) >= sizeof sa.sun_path) {
        fprintf(stderr, "notify: NOTIFY_SOCKET is too long\n");
        return 1;
    }
    strcpy(sa.sun_path, path);
    int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        perror("notify: socket");
        return 1;
    }
    for (int i = 1; i < argc; i++) {
        if (sendto(fd, argv[i], strlen(argv[i]), 0, (struct sockaddr *)&sa, sizeof sa) < 0) {
            perror("notify: sendto");
            return 1;
        }
    }
    return 0;
}
