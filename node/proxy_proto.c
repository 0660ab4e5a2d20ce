/*
 * proxy_proto.c - PROXY protocol v1 (text) and v2 (binary) headers.
 *
 * Both versions are recognised by their first bytes; every check that can
 * fail on a prefix fails on it, so that a client that sends no header is
 * refused on its first packet. The v1 line is split at single spaces and its
 * addresses read with inet_pton; v2 is read field by field with its length
 * bounded before anything is waited for.
 */
#include "proxy_proto.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <sys/un.h>

static const uint8_t proxy_v2_sig[12] = {0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D,
                                         0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A};
static const char proxy_v1_sig[] = "PROXY ";

const char *proxy_strerror(int status)
{
    switch (status) {
    case PROXY_NEED_MORE:
        return "incomplete PROXY header";
    case PROXY_DONE:
        return "PROXY header complete";
    case PROXY_ERR_SIGNATURE:
        return "no PROXY protocol header";
    case PROXY_ERR_SYNTAX:
        return "malformed PROXY v1 header";
    case PROXY_ERR_VERSION:
        return "bad PROXY v2 version or command";
    case PROXY_ERR_FAMILY:
        return "unsupported PROXY v2 address family or protocol";
    case PROXY_ERR_LENGTH:
        return "bad PROXY v2 header length";
    case PROXY_ERR_TLV:
        return "malformed PROXY v2 TLVs";
    default:
        return "unknown PROXY status";
    }
}

/* A decimal port, 0..65535, no sign, no leading zero (section 2.1). */
static bool proxy_v1_port(const char *s, size_t n, uint16_t *port)
{
    if (n == 0 || n > 5 || (n > 1 && s[0] == '0'))
        return false;
    unsigned v = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return false;
        v = v * 10 + (unsigned)(s[i] - '0');
    }
    if (v > 65535)
        return false;
    *port = (uint16_t)v;
    return true;
}

static bool proxy_v1_addr(int family, const char *s, size_t n, uint16_t port,
                          struct sockaddr_storage *ss)
{
    char tmp[INET6_ADDRSTRLEN];
    if (n == 0 || n >= sizeof(tmp))
        return false;
    memcpy(tmp, s, n);
    tmp[n] = '\0';
    memset(ss, 0, sizeof(*ss));
    if (family == AF_INET) {
        struct sockaddr_in *a = (struct sockaddr_in *)ss;
        a->sin_family = AF_INET;
        a->sin_port = htons(port);
        return inet_pton(AF_INET, tmp, &a->sin_addr) == 1;
    }
    struct sockaddr_in6 *a = (struct sockaddr_in6 *)ss;
    a->sin6_family = AF_INET6;
    a->sin6_port = htons(port);
    return inet_pton(AF_INET6, tmp, &a->sin6_addr) == 1;
}

/* "PROXY TCP4 SRC DST SPORT DPORT\r\n" | "PROXY TCP6 ..." | "PROXY UNKNOWN...\r\n" */
static int proxy_parse_v1(const uint8_t *buf, size_t len, struct proxy_header *h)
{
    size_t scan = len < PROXY_V1_MAX ? len : PROXY_V1_MAX;
    const uint8_t *cr = NULL;
    for (size_t i = 0; i < scan; i++) {
        if (buf[i] == '\r') {
            cr = buf + i;
            break;
        }
        if (buf[i] == '\n' || buf[i] == '\0')
            return PROXY_ERR_SYNTAX;
    }
    if (!cr)
        return len >= PROXY_V1_MAX ? PROXY_ERR_SYNTAX : PROXY_NEED_MORE;
    size_t line = (size_t)(cr - buf);
    if (line + 1 >= len)
        return line + 2 > PROXY_V1_MAX ? PROXY_ERR_SYNTAX : PROXY_NEED_MORE;
    if (cr[1] != '\n' || line + 2 > PROXY_V1_MAX)
        return PROXY_ERR_SYNTAX;

    /* Split the line after "PROXY " into at most 5 words at single spaces. */
    const char *s = (const char *)buf + 6, *end = (const char *)cr;
    const char *w[5];
    size_t wn[5], n = 0;
    while (s <= end && n < 5) {
        const char *sp = memchr(s, ' ', (size_t)(end - s));
        const char *we = sp ? sp : end;
        w[n] = s;
        wn[n++] = (size_t)(we - s);
        if (!sp)
            break;
        s = sp + 1;
        if (n == 1 && wn[0] == 7 && memcmp(w[0], "UNKNOWN", 7) == 0)
            break;
    }
    memset(h, 0, sizeof(*h));
    h->version = 1;
    h->len = line + 2;
    if (n >= 1 && wn[0] == 7 && memcmp(w[0], "UNKNOWN", 7) == 0) {
        /* The rest of the line is to be ignored (section 2.1). */
        h->local = true;
        return PROXY_DONE;
    }
    if (n != 5 || w[4] + wn[4] != end || wn[0] != 4 || memcmp(w[0], "TCP", 3) != 0 ||
        (w[0][3] != '4' && w[0][3] != '6'))
        return PROXY_ERR_SYNTAX;
    int family = w[0][3] == '4' ? AF_INET : AF_INET6;
    uint16_t sport, dport;
    if (!proxy_v1_port(w[3], wn[3], &sport) || !proxy_v1_port(w[4], wn[4], &dport) ||
        !proxy_v1_addr(family, w[1], wn[1], sport, &h->src) ||
        !proxy_v1_addr(family, w[2], wn[2], dport, &h->dst))
        return PROXY_ERR_SYNTAX;
    return PROXY_DONE;
}

static int proxy_check_tlvs(const uint8_t *p, size_t n)
{
    /* Each TLV: type (1), length (2, big endian), value (section 2.2.7). */
    while (n > 0) {
        if (n < 3)
            return PROXY_ERR_TLV;
        size_t l = ((size_t)p[1] << 8) | p[2];
        if (l > n - 3)
            return PROXY_ERR_TLV;
        p += 3 + l;
        n -= 3 + l;
    }
    return PROXY_DONE;
}

static int proxy_parse_v2(const uint8_t *buf, size_t len, struct proxy_header *h)
{
    if (len >= 13) {
        uint8_t ver = buf[12] >> 4, cmd = buf[12] & 0x0F;
        if (ver != 2 || cmd > 1)
            return PROXY_ERR_VERSION;
    }
    if (len >= 14) {
        uint8_t fam = buf[13] >> 4, proto = buf[13] & 0x0F;
        if (fam > 3 || proto > 2)
            return PROXY_ERR_FAMILY;
    }
    if (len < 16)
        return PROXY_NEED_MORE;
    bool local = (buf[12] & 0x0F) == 0;
    uint8_t fam = buf[13] >> 4, proto = buf[13] & 0x0F;
    size_t body = ((size_t)buf[14] << 8) | buf[15];
    if (body > PROXY_V2_BODY_MAX)
        return PROXY_ERR_LENGTH;
    /* MQTT is a stream: a proxied datagram flow makes no sense here. */
    if (!local && proto == 2)
        return PROXY_ERR_FAMILY;
    size_t need = fam == 1 ? 12 : fam == 2 ? 36 : fam == 3 ? 216 : 0;
    if (!local && body < need)
        return PROXY_ERR_LENGTH;
    if (len < 16 + body)
        return PROXY_NEED_MORE;

    memset(h, 0, sizeof(*h));
    h->version = 2;
    h->len = 16 + body;
    /* LOCAL: the proxy's own connection (health check); UNSPEC: unknown
     * addresses. Both keep the socket's addresses (section 2.2). */
    if (local || fam == 0 || proto == 0) {
        h->local = true;
        return PROXY_DONE;
    }
    const uint8_t *a = buf + 16;
    if (fam == 1) {
        struct sockaddr_in *s = (struct sockaddr_in *)&h->src, *d = (struct sockaddr_in *)&h->dst;
        s->sin_family = d->sin_family = AF_INET;
        memcpy(&s->sin_addr, a, 4);
        memcpy(&d->sin_addr, a + 4, 4);
        memcpy(&s->sin_port, a + 8, 2);
        memcpy(&d->sin_port, a + 10, 2);
    } else if (fam == 2) {
        struct sockaddr_in6 *s = (struct sockaddr_in6 *)&h->src;
        struct sockaddr_in6 *d = (struct sockaddr_in6 *)&h->dst;
        s->sin6_family = d->sin6_family = AF_INET6;
        memcpy(&s->sin6_addr, a, 16);
        memcpy(&d->sin6_addr, a + 16, 16);
        memcpy(&s->sin6_port, a + 32, 2);
        memcpy(&d->sin6_port, a + 34, 2);
    } else {
        struct sockaddr_un *s = (struct sockaddr_un *)&h->src, *d = (struct sockaddr_un *)&h->dst;
        s->sun_family = d->sun_family = AF_UNIX;
        /* 108 bytes each, NUL padded; keep a terminating NUL. */
        memcpy(s->sun_path, a, sizeof(s->sun_path) - 1);
        memcpy(d->sun_path, a + 108, sizeof(d->sun_path) - 1);
    }
    return proxy_check_tlvs(buf + 16 + need, body - need);
}

int proxy_parse(const uint8_t *buf, size_t len, struct proxy_header *h)
{
    if (len == 0)
        return PROXY_NEED_MORE;
    if (buf[0] == proxy_v2_sig[0]) {
        size_t n = len < sizeof(proxy_v2_sig) ? len : sizeof(proxy_v2_sig);
        if (memcmp(buf, proxy_v2_sig, n) != 0)
            return PROXY_ERR_SIGNATURE;
        return n < sizeof(proxy_v2_sig) ? PROXY_NEED_MORE : proxy_parse_v2(buf, len, h);
    }
    size_t n = len < 6 ? len : 6;
    if (memcmp(buf, proxy_v1_sig, n) != 0)
        return PROXY_ERR_SIGNATURE;
    return n < 6 ? PROXY_NEED_MORE : proxy_parse_v1(buf, len, h);
}

void proxy_parser_init(struct proxy_parser *p)
{
    p->len = 0;
    p->status = PROXY_NEED_MORE;
}

int proxy_parser_feed(struct proxy_parser *p, const uint8_t *data, size_t len, size_t *used,
                      struct proxy_header *h)
{
    *used = 0;
    if (p->status != PROXY_NEED_MORE)
        return p->status;
    size_t take = sizeof(p->buf) - p->len;
    if (take > len)
        take = len;
    memcpy(p->buf + p->len, data, take);
    size_t before = p->len;
    p->len += take;
    int r = proxy_parse(p->buf, p->len, h);
    if (r == PROXY_NEED_MORE && p->len == sizeof(p->buf))
        r = PROXY_ERR_LENGTH; /* cannot happen: the limits are checked first */
    p->status = r;
    if (r == PROXY_DONE)
        *used = h->len - before;
    else if (r == PROXY_NEED_MORE)
        *used = take;
    return r;
}

char *proxy_addr_str(const struct sockaddr_storage *a, char *out, size_t outlen)
{
    char ip[INET6_ADDRSTRLEN] = "?";
    if (a->ss_family == AF_INET) {
        const struct sockaddr_in *s = (const struct sockaddr_in *)a;
        inet_ntop(AF_INET, &s->sin_addr, ip, sizeof(ip));
        snprintf(out, outlen, "%s:%u", ip, ntohs(s->sin_port));
    } else if (a->ss_family == AF_INET6) {
        const struct sockaddr_in6 *s = (const struct sockaddr_in6 *)a;
        inet_ntop(AF_INET6, &s->sin6_addr, ip, sizeof(ip));
        snprintf(out, outlen, "[%s]:%u", ip, ntohs(s->sin6_port));
    } else if (a->ss_family == AF_UNIX) {
        const struct sockaddr_un *s = (const struct sockaddr_un *)a;
        snprintf(out, outlen, "unix:%.*s", (int)sizeof(s->sun_path), s->sun_path);
    } else {
        snprintf(out, outlen, "unknown");
    }
    return out;
}
