/*
 * forwarder: run a command while relaying 127.0.0.1:PORT to a unix socket.
 *
 *   forwarder LISTEN SOCKET -- COMMAND [ARG...]
 *   forwarder --version
 *
 * LISTEN is IPV4:PORT (e.g. 127.0.0.1:8080). The port is listening before COMMAND starts.
 * Each TCP connection accepted there is connected to the unix socket SOCKET and the bytes are
 * copied both ways unchanged, half-closes included, until both sides are done. COMMAND runs as
 * a child with the forwarder's stdin, stdout, stderr and environment; SIGTERM, SIGINT, SIGHUP,
 * SIGQUIT, SIGUSR1 and SIGUSR2 are passed on to it. When it exits the forwarder exits too,
 * with its exit status (128 + N if it was killed by signal N), dropping open connections.
 * As PID 1 of a container it also reaps orphaned processes, as an init would.
 *
 * Exit status of its own: 125 for bad arguments or a port it cannot listen on, and, as env(1)
 * does, 126 when COMMAND cannot be run and 127 when it is not found.
 *
 * Built statically (no libc needed in the image, no name lookups) with one poll() loop: no
 * threads, one fixed buffer per direction of each connection, nothing allocated per byte.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#define VERSION "1"
#define BUFFER_SIZE (32 * 1024)
#define EXIT_OWN 125
#define EXIT_CANNOT_RUN 126
#define EXIT_NOT_FOUND 127

/* Bytes read from fd[i] that are still to be written to fd[1 - i]. */
struct direction {
    char buffer[BUFFER_SIZE];
    size_t start, end;
    int eof;      /* fd[i] will send nothing more */
    int shut;     /* the end was passed on: fd[1 - i] was shut for writing */
};

/* fd[0] is the accepted TCP connection, fd[1] the unix socket. */
struct connection {
    int fd[2];
    struct direction dir[2];
};

static const int forwarded_signals[] = {SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2};
#define FORWARDED_COUNT (sizeof forwarded_signals / sizeof forwarded_signals[0])

static volatile sig_atomic_t child_pid = 0;
static int wake_fd = -1; /* write end of the self-pipe SIGCHLD writes to */

static void on_signal(int sig) {
    int saved = errno;
    if (sig == SIGCHLD) {
        char byte = 0;
        if (write(wake_fd, &byte, 1) < 0) {
            /* The pipe is full: a wake-up is already pending. */
        }
    } else if (child_pid > 0) {
        kill((pid_t)child_pid, sig);
    }
    errno = saved;
}

static int usage(void) {
    fprintf(stderr, "usage: forwarder IPV4:PORT SOCKET -- COMMAND [ARG...]\n");
    return EXIT_OWN;
}

static int listen_on(const char *address) {
    const char *colon = strrchr(address, ':');
    char host[INET_ADDRSTRLEN];
    struct sockaddr_in sin;
    char *end;
    long port;
    int fd, one = 1;

    if (colon == NULL || (size_t)(colon - address) >= sizeof host) {
        fprintf(stderr, "forwarder: %s is not IPV4:PORT\n", address);
        return -1;
    }
    memcpy(host, address, (size_t)(colon - address));
    host[colon - address] = '\0';
    port = strtol(colon + 1, &end, 10);
    memset(&sin, 0, sizeof sin);
    sin.sin_family = AF_INET;
    sin.sin_port = htons((unsigned short)port);
    if (*end != '\0' || end == colon + 1 || port < 1 || port > 65535 ||
        inet_pton(AF_INET, host, &sin.sin_addr) != 1) {
        fprintf(stderr, "forwarder: %s is not IPV4:PORT\n", address);
        return -1;
    }
    fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        perror("forwarder: socket");
        return -1;
    }
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(fd, (struct sockaddr *)&sin, sizeof sin) < 0 || listen(fd, SOMAXCONN) < 0) {
        fprintf(stderr, "forwarder: cannot listen on %s: %s\n", address, strerror(errno));
        close(fd);
        return -1;
    }
    return fd;
}

/* A connected, non-blocking unix socket, or -1. Connecting to a local socket does not wait
 * for the server, only (briefly) for room in its backlog. */
static int connect_to(const char *path) {
    struct sockaddr_un sun;
    int fd;

    memset(&sun, 0, sizeof sun);
    sun.sun_family = AF_UNIX;
    if (strlen(path) >= sizeof sun.sun_path) {
        fprintf(stderr, "forwarder: socket path too long: %s\n", path);
        return -1;
    }
    strcpy(sun.sun_path, path);
    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        perror("forwarder: socket");
        return -1;
    }
    if (connect(fd, (struct sockaddr *)&sun, sizeof sun) < 0) {
        fprintf(stderr, "forwarder: cannot connect to %s: %s\n", path, strerror(errno));
        close(fd);
        return -1;
    }
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    return fd;
}

static pid_t start_child(char **argv, const sigset_t *mask) {
    pid_t pid = fork();
    if (pid != 0)
        return pid;
    for (size_t i = 0; i < FORWARDED_COUNT; i++)
        signal(forwarded_signals[i], SIG_DFL);
    signal(SIGCHLD, SIG_DFL);
    signal(SIGPIPE, SIG_DFL);
    sigprocmask(SIG_SETMASK, mask, NULL);
    execvp(argv[0], argv);
    fprintf(stderr, "forwarder: cannot run %s: %s\n", argv[0], strerror(errno));
    _exit(errno == ENOENT ? EXIT_NOT_FOUND : EXIT_CANNOT_RUN);
}

static int wants_read(const struct connection *c, int i) {
    return !c->dir[i].eof && c->dir[i].start == c->dir[i].end;
}

static int wants_write(const struct connection *c, int i) {
    return c->dir[1 - i].start < c->dir[1 - i].end;
}

/* Move bytes for one side of a connection; returns 0 when the connection must be closed. */
static int pump(struct connection *c, int i) {
    struct direction *in = &c->dir[i], *out = &c->dir[1 - i];

    if (wants_read(c, i)) {
        ssize_t n = read(c->fd[i], in->buffer, BUFFER_SIZE);
        if (n > 0) {
            in->start = 0;
            in->end = (size_t)n;
        } else if (n == 0) {
            in->eof = 1;
        } else if (errno != EAGAIN && errno != EINTR) {
            return 0;
        }
    }
    /* Write what is pending towards fd[i] (from the other side), and, optimistically, what
     * was just read from fd[i] towards the other side. */
    for (int k = 0; k < 2; k++) {
        struct direction *d = k == 0 ? out : in;
        int to = k == 0 ? c->fd[i] : c->fd[1 - i];
        while (d->start < d->end) {
            ssize_t n = write(to, d->buffer + d->start, d->end - d->start);
            if (n < 0) {
                if (errno == EAGAIN || errno == EINTR)
                    break;
                return 0;
            }
            d->start += (size_t)n;
        }
    }
    for (int k = 0; k < 2; k++) {
        struct direction *d = &c->dir[k];
        if (d->eof && !d->shut && d->start == d->end) {
            shutdown(c->fd[1 - k], SHUT_WR);
            d->shut = 1;
        }
    }
    return !(c->dir[0].shut && c->dir[1].shut);
}

static void drop(struct connection *c) {
    close(c->fd[0]);
    close(c->fd[1]);
    free(c);
}

static int exit_status(int status) {
    if (WIFEXITED(status))
        return WEXITSTATUS(status);
    if (WIFSIGNALED(status))
        return 128 + WTERMSIG(status);
    return EXIT_OWN;
}

int main(int argc, char **argv) {
    struct connection **conns = NULL;
    struct pollfd *fds = NULL;
    size_t count = 0, capacity = 0;
    int pipe_fds[2], listener, accepting = 1;
    sigset_t all, original;
    struct sigaction action;
    pid_t pid;

    if (argc == 2 && strcmp(argv[1], "--version") == 0) {
        printf("forwarder %s\n", VERSION);
        return 0;
    }
    if (argc < 5 || strcmp(argv[3], "--") != 0)
        return usage();
    listener = listen_on(argv[1]);
    if (listener < 0)
        return EXIT_OWN;
    if (pipe2(pipe_fds, O_NONBLOCK | O_CLOEXEC) < 0) {
        perror("forwarder: pipe");
        return EXIT_OWN;
    }
    wake_fd = pipe_fds[1];

    /* Handlers go in with every signal blocked, so none runs before the child's pid is known;
     * the child restores the defaults and the mask before it execs. */
    sigfillset(&all);
    sigprocmask(SIG_BLOCK, &all, &original);
    memset(&action, 0, sizeof action);
    action.sa_handler = on_signal;
    sigfillset(&action.sa_mask);
    action.sa_flags = SA_RESTART;
    for (size_t i = 0; i < FORWARDED_COUNT; i++)
        sigaction(forwarded_signals[i], &action, NULL);
    action.sa_flags = SA_RESTART | SA_NOCLDSTOP;
    sigaction(SIGCHLD, &action, NULL);
    signal(SIGPIPE, SIG_IGN);
    pid = start_child(argv + 4, &original);
    if (pid < 0) {
        perror("forwarder: fork");
        return EXIT_OWN;
    }
    child_pid = pid;
    sigprocmask(SIG_SETMASK, &original, NULL);

    for (;;) {
        size_t nfds = 2 + 2 * count;
        if (capacity < count + 1) {
            capacity = capacity ? 2 * capacity : 16;
            conns = realloc(conns, capacity * sizeof *conns);
            fds = realloc(fds, (2 + 2 * capacity) * sizeof *fds);
            if (conns == NULL || fds == NULL) {
                fprintf(stderr, "forwarder: out of memory\n");
                kill(pid, SIGTERM);
                return EXIT_OWN;
            }
        }
        fds[0] = (struct pollfd){.fd = pipe_fds[0], .events = POLLIN};
        fds[1] = (struct pollfd){.fd = accepting ? listener : -1, .events = POLLIN};
        for (size_t k = 0; k < count; k++) {
            for (int i = 0; i < 2; i++) {
                short events = (short)((wants_read(conns[k], i) ? POLLIN : 0) |
                                       (wants_write(conns[k], i) ? POLLOUT : 0));
                /* An fd with nothing to do is left out: a hung-up socket would otherwise
                 * report POLLHUP again and again. */
                fds[2 + 2 * k + (size_t)i] =
                    (struct pollfd){.fd = events ? conns[k]->fd[i] : -1, .events = events};
            }
        }
        if (poll(fds, nfds, -1) < 0) {
            if (errno == EINTR)
                continue;
            perror("forwarder: poll");
            kill(pid, SIGTERM);
            return EXIT_OWN;
        }

        if (fds[0].revents) {
            char drain[64];
            int status;
            pid_t reaped;
            while (read(pipe_fds[0], drain, sizeof drain) > 0) {
            }
            while ((reaped = waitpid(-1, &status, WNOHANG)) > 0) {
                if (reaped == pid)
                    return exit_status(status);
            }
        }

        /* Existing connections first, while fds still matches conns index for index; a dropped
         * connection's slot takes the last one (and its poll results). */
        for (size_t k = 0; k < count;) {
            struct connection *c = conns[k];
            int keep = 1;
            for (int i = 0; i < 2 && keep; i++) {
                if (fds[2 + 2 * k + (size_t)i].revents)
                    keep = pump(c, i);
            }
            if (keep) {
                k++;
                continue;
            }
            drop(c);
            conns[k] = conns[--count];
            fds[2 + 2 * k] = fds[2 + 2 * count];
            fds[2 + 2 * k + 1] = fds[2 + 2 * count + 1];
            accepting = 1;
        }

        if (fds[1].revents) {
            int client = accept4(listener, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
            if (client < 0) {
                /* Out of descriptors: stop accepting until a connection closes. */
                if (errno == EMFILE || errno == ENFILE)
                    accepting = 0;
                continue;
            }
            int upstream = connect_to(argv[2]);
            struct connection *c = upstream < 0 ? NULL : calloc(1, sizeof *c);
            if (c == NULL) {
                close(client);
                if (upstream >= 0)
                    close(upstream);
                continue;
            }
            c->fd[0] = client;
            c->fd[1] = upstream;
            conns[count++] = c;
        }
    }
}
