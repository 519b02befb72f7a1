/*
 * demo_port: a tiny Erlang port program for the relsync example release.
 * Speaks {packet, 2} on stdin/stdout: reads a 2-byte big-endian length and
 * that many bytes, answers PORT_VERSION ":" request. Exits on EOF.
 */
#include <stdio.h>
#include <string.h>
#include <unistd.h>

/* Tests edit the next line to simulate a change of the port program. */
#define PORT_VERSION "v1"

#define MAX_PACKET 65535

static int read_exact(unsigned char *buf, size_t len)
{
    size_t got = 0;
    while (got < len) {
        ssize_t n = read(STDIN_FILENO, buf + got, len - got);
        if (n <= 0)
            return -1;
        got += (size_t)n;
    }
    return 0;
}

static int write_exact(const unsigned char *buf, size_t len)
{
    size_t put = 0;
    while (put < len) {
        ssize_t n = write(STDOUT_FILENO, buf + put, len - put);
        if (n <= 0)
            return -1;
        put += (size_t)n;
    }
    return 0;
}

int main(void)
{
    static unsigned char req[MAX_PACKET];
    static unsigned char reply[2 + MAX_PACKET];
    const size_t prefix = strlen(PORT_VERSION ":");

    for (;;) {
        unsigned char hdr[2];
        if (read_exact(hdr, 2) < 0)
            return 0;
        size_t len = ((size_t)hdr[0] << 8) | hdr[1];
        if (read_exact(req, len) < 0)
            return 1;
        size_t out = prefix + len;
        if (out > MAX_PACKET)
            out = MAX_PACKET;
        memcpy(reply + 2, PORT_VERSION ":", prefix);
        memcpy(reply + 2 + prefix, req, out - prefix);
        reply[0] = (unsigned char)(out >> 8);
        reply[1] = (unsigned char)(out & 0xff);
        if (write_exact(reply, 2 + out) < 0)
            return 1;
    }
}
