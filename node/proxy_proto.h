/*
 * proxy_proto.h - the PROXY protocol header, versions 1 and 2.
 *
 * A load balancer (AWS NLB, GCP, Azure, HAProxy) that speaks the PROXY
 * protocol sends one header before the client's bytes, carrying the
 * client's real address. This module recognises and decodes it; it does no
 * I/O. Specification: "The PROXY protocol, Versions 1 & 2" (haproxy.org,
 * doc/proxy-protocol.txt); section numbers below refer to it.
 *
 * Two ways to use it:
 *  - proxy_parse: stateless, on a buffer holding the first bytes of the
 *    connection; call again with more bytes after PROXY_NEED_MORE;
 *  - struct proxy_parser: feed the bytes as they arrive; it keeps at most
 *    PROXY_HEADER_MAX of them and says how many of each chunk belonged to
 *    the header, so the rest goes on to MQTT (or TLS).
 * A header longer than PROXY_HEADER_MAX, or anything that is not a valid
 * header, is an error: the connection must be closed (section 2.1, 2.2).
 * Errors are detected as early as possible: the first bytes of a
 * connection without a header fail at once, without waiting for more.
 *
 * Pure functions, no global state; a struct proxy_parser belongs to one
 * connection (one thread).
 */
#ifndef STARLING_PROXY_PROTO_H
#define STARLING_PROXY_PROTO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

/* v1: at most 107 bytes with the CRLF (section 2.1). */
#define PROXY_V1_MAX 107
/* v2: 16 bytes, then addresses and TLVs; we accept up to 4 KiB of them. */
#define PROXY_V2_BODY_MAX 4096
#define PROXY_HEADER_MAX (16 + PROXY_V2_BODY_MAX)

enum proxy_status {
    PROXY_NEED_MORE = 0, /* a valid prefix: feed more bytes */
    PROXY_DONE = 1,      /* a complete header: see struct proxy_header */
    /* errors are negative: */
    PROXY_ERR_SIGNATURE = -1, /* not a PROXY header at all */
    PROXY_ERR_SYNTAX = -2,    /* v1 line malformed, or too long */
    PROXY_ERR_VERSION = -3,   /* v2 version or command not 2 / LOCAL|PROXY */
    PROXY_ERR_FAMILY = -4,    /* v2 family or protocol unknown, or UDP */
    PROXY_ERR_LENGTH = -5,    /* v2 length too small for the family, or over the limit */
    PROXY_ERR_TLV = -6,       /* v2 TLVs do not fill the header exactly */
};

struct proxy_header {
    int version; /* 1 or 2 */
    /* True when the header carries no client address (v2 LOCAL, v2 UNSPEC,
     * v1 UNKNOWN): use the connection's own addresses (section 2.2). */
    bool local;
    /* The client (src) and the address it connected to (dst): AF_INET,
     * AF_INET6 or AF_UNIX (v2 only); unset when local. */
    struct sockaddr_storage src, dst;
    size_t len; /* bytes of the connection that were the header */
};

/*
 * Decode a header at the start of buf (len bytes). Returns PROXY_DONE and
 * fills *h, PROXY_NEED_MORE (buf is a valid, incomplete prefix), or a
 * negative enum proxy_status.
 */
int proxy_parse(const uint8_t *buf, size_t len, struct proxy_header *h);

/* A short name for a status, for logs. */
const char *proxy_strerror(int status);

struct proxy_parser {
    uint8_t buf[PROXY_HEADER_MAX];
    size_t len;
    int status;
};

/* Start a parser for a new connection. */
void proxy_parser_init(struct proxy_parser *p);

/*
 * Feed the next len bytes of the connection. Returns as proxy_parse. On
 * PROXY_DONE, *used is how many of these bytes were the header's end (the
 * rest, data + *used, are the client's); on PROXY_NEED_MORE all were used.
 * Once DONE or an error, further calls return the same status and use none.
 */
int proxy_parser_feed(struct proxy_parser *p, const uint8_t *data, size_t len, size_t *used,
                      struct proxy_header *h);

/* Format an address of a header ("1.2.3.4:5", "[::1]:5", "unix:/path")
 * into out; for logs and $SYS. Returns out. */
char *proxy_addr_str(const struct sockaddr_storage *a, char *out, size_t outlen);

#endif
