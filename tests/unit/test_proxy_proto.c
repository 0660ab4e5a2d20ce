/*
 * test_proxy_proto.c - PROXY protocol v1 and v2 headers (node/proxy_proto.h).
 */
#include <CUnit/Basic.h>
#include <CUnit/CUnit.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <sys/un.h>

#include "proxy_proto.h"

static const uint8_t SIG[12] = {0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D,
                                0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A};

static const char *addr(const struct sockaddr_storage *a)
{
    static char s[2][160];
    static int i;
    i ^= 1;
    return proxy_addr_str(a, s[i], sizeof(s[i]));
}

static int parse_str(const char *s, struct proxy_header *h)
{
    return proxy_parse((const uint8_t *)s, strlen(s), h);
}

static void test_v1_tcp4(void)
{
    struct proxy_header h;
    const char *s = "PROXY TCP4 192.168.0.1 10.0.0.2 56324 1883\r\n\x10\x0c";
    CU_ASSERT_EQUAL(parse_str(s, &h), PROXY_DONE);
    CU_ASSERT_EQUAL(h.version, 1);
    CU_ASSERT_FALSE(h.local);
    CU_ASSERT_EQUAL(h.len, strlen(s) - 2);
    CU_ASSERT_STRING_EQUAL(addr(&h.src), "192.168.0.1:56324");
    CU_ASSERT_STRING_EQUAL(addr(&h.dst), "10.0.0.2:1883");
}

static void test_v1_tcp6_and_unknown(void)
{
    struct proxy_header h;
    CU_ASSERT_EQUAL(parse_str("PROXY TCP6 2001:db8::1 ::1 65535 0\r\n", &h), PROXY_DONE);
    CU_ASSERT_STRING_EQUAL(addr(&h.src), "[2001:db8::1]:65535");
    CU_ASSERT_STRING_EQUAL(addr(&h.dst), "[::1]:0");
    CU_ASSERT_EQUAL(parse_str("PROXY UNKNOWN\r\n", &h), PROXY_DONE);
    CU_ASSERT_TRUE(h.local);
    CU_ASSERT_EQUAL(h.len, 15);
    CU_ASSERT_EQUAL(parse_str("PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n", &h), PROXY_DONE);
    CU_ASSERT_TRUE(h.local);
}

/* The longest line allowed is 107 bytes with its CRLF (section 2.1). */
static void test_v1_limit(void)
{
    struct proxy_header h;
    char line[200];
    /* "PROXY UNKNOWN " + padding + CRLF = exactly 107 bytes. */
    memset(line, 0, sizeof(line));
    strcpy(line, "PROXY UNKNOWN ");
    memset(line + 14, 'x', 107 - 2 - 14);
    strcpy(line + 105, "\r\n");
    CU_ASSERT_EQUAL(proxy_parse((uint8_t *)line, 107, &h), PROXY_DONE);
    CU_ASSERT_EQUAL(h.len, 107);
    line[105] = 'x';
    strcpy(line + 106, "\r\n");
    CU_ASSERT_EQUAL(proxy_parse((uint8_t *)line, 108, &h), PROXY_ERR_SYNTAX);
    /* Without a CR in the first 107 bytes, no need to wait for more. */
    memset(line, 'x', sizeof(line));
    memcpy(line, "PROXY ", 6);
    CU_ASSERT_EQUAL(proxy_parse((uint8_t *)line, 106, &h), PROXY_NEED_MORE);
    CU_ASSERT_EQUAL(proxy_parse((uint8_t *)line, 107, &h), PROXY_ERR_SYNTAX);
}

static void test_v1_malformed(void)
{
    static const char *bad[] = {
        "PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n",
        "PROXY TCP4 1.2.3.4 5.6.7.8 1 2\rX",
        "PROXY TCP4 1.2.3.4  5.6.7.8 1 2\r\n",
        "PROXY TCP4 1.2.3.4 5.6.7.8 1 2 \r\n",
        "PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n",
        "PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n",
        "PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n",
        "PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n",
        "PROXY TCP4 1.2.3.4 5.6.7.8 -1 2\r\n",
        "PROXY TCP4 ::1 5.6.7.8 1 2\r\n",
        "PROXY TCP6 1.2.3.4 ::1 1 2\r\n",
        "PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n",
        "PROXY tcp4 1.2.3.4 5.6.7.8 1 2\r\n",
        "PROXY TCP4 1.2.3.256 5.6.7.8 1 2\r\n",
        "PROXY \r\n",
        "PROXY TCP4\r\n",
        "PROXY UNKNOWNX\r\n",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        struct proxy_header h;
        int r = parse_str(bad[i], &h);
        if (r != PROXY_ERR_SYNTAX)
            fprintf(stderr, "accepted or wrong error %d: %s\n", r, bad[i]);
        CU_ASSERT_EQUAL(r, PROXY_ERR_SYNTAX);
    }
}

/* A connection without a header fails on its first byte(s). */
static void test_no_header_fails_early(void)
{
    struct proxy_header h;
    CU_ASSERT_EQUAL(proxy_parse((const uint8_t *)"\x10", 1, &h), PROXY_ERR_SIGNATURE);
    CU_ASSERT_EQUAL(proxy_parse((const uint8_t *)"\x16\x03\x01", 3, &h), PROXY_ERR_SIGNATURE);
    CU_ASSERT_EQUAL(parse_str("GET /mqtt", &h), PROXY_ERR_SIGNATURE);
    CU_ASSERT_EQUAL(parse_str("PROX", &h), PROXY_NEED_MORE);
    CU_ASSERT_EQUAL(parse_str("PROXX", &h), PROXY_ERR_SIGNATURE);
    CU_ASSERT_EQUAL(proxy_parse(SIG, 5, &h), PROXY_NEED_MORE);
    uint8_t b[12];
    memcpy(b, SIG, 12);
    b[6] = 'x';
    CU_ASSERT_EQUAL(proxy_parse(b, 7, &h), PROXY_ERR_SIGNATURE);
    CU_ASSERT_EQUAL(proxy_parse(b, 0, &h), PROXY_NEED_MORE);
}

/* Build a v2 header: command, family/protocol, address bytes, TLV bytes. */
static size_t v2(uint8_t *out, uint8_t vc, uint8_t fp, const void *addrs, size_t alen,
                 const void *tlvs, size_t tlen)
{
    memcpy(out, SIG, 12);
    out[12] = vc;
    out[13] = fp;
    size_t body = alen + tlen;
    out[14] = (uint8_t)(body >> 8);
    out[15] = (uint8_t)body;
    if (alen)
        memcpy(out + 16, addrs, alen);
    if (tlen)
        memcpy(out + 16 + alen, tlvs, tlen);
    return 16 + body;
}

static void test_v2_tcp4_with_tlvs(void)
{
    uint8_t a[12] = {203, 0, 113, 7, 10, 1, 2, 3, 0xdb, 0xf0, 0x07, 0x5b};
    /* AWS VPC endpoint id (0xEA), a NOOP, an empty TLV. */
    uint8_t t[] = {0xEA, 0x00, 0x05, 0x01, 'v', 'p', 'c', 'e', 0x04, 0x00, 0x01, 0x00, 0xE0, 0, 0};
    uint8_t b[128];
    size_t n = v2(b, 0x21, 0x11, a, sizeof(a), t, sizeof(t));
    b[n] = 0x10; /* MQTT follows */
    struct proxy_header h;
    CU_ASSERT_EQUAL(proxy_parse(b, n + 1, &h), PROXY_DONE);
    CU_ASSERT_EQUAL(h.version, 2);
    CU_ASSERT_FALSE(h.local);
    CU_ASSERT_EQUAL(h.len, n);
    CU_ASSERT_STRING_EQUAL(addr(&h.src), "203.0.113.7:56304");
    CU_ASSERT_STRING_EQUAL(addr(&h.dst), "10.1.2.3:1883");
    /* A TLV running past the end. */
    t[2] = 0x06;
    n = v2(b, 0x21, 0x11, a, sizeof(a), t, 8);
    CU_ASSERT_EQUAL(proxy_parse(b, n, &h), PROXY_ERR_TLV);
    /* Two stray bytes. */
    n = v2(b, 0x21, 0x11, a, sizeof(a), "\x01\x00", 2);
    CU_ASSERT_EQUAL(proxy_parse(b, n, &h), PROXY_ERR_TLV);
}

static void test_v2_tcp6_unix_local(void)
{
    uint8_t a[216] = {0};
    inet_pton(AF_INET6, "2001:db8::42", a);
    inet_pton(AF_INET6, "fd00::1", a + 16);
    a[32] = 0x30;
    a[33] = 0x39;
    a[34] = 0x07;
    a[35] = 0x5b;
    uint8_t b[512];
    struct proxy_header h;
    size_t n = v2(b, 0x21, 0x21, a, 36, NULL, 0);
    CU_ASSERT_EQUAL(proxy_parse(b, n, &h), PROXY_DONE);
    CU_ASSERT_STRING_EQUAL(addr(&h.src), "[2001:db8::42]:12345");
    CU_ASSERT_STRING_EQUAL(addr(&h.dst), "[fd00::1]:1883");

    memset(a, 0, sizeof(a));
    strcpy((char *)a, "/run/client.sock");
    memset(a + 108, 'p', 108); /* unterminated: kept to 107 bytes */
    n = v2(b, 0x21, 0x31, a, 216, NULL, 0);
    CU_ASSERT_EQUAL(proxy_parse(b, n, &h), PROXY_DONE);
    CU_ASSERT_STRING_EQUAL(addr(&h.src), "unix:/run/client.sock");
    CU_ASSERT_EQUAL(strlen(addr(&h.dst)), 5 + 107);

    /* LOCAL: a health check from the balancer itself; addresses ignored. */
    n = v2(b, 0x20, 0x00, NULL, 0, NULL, 0);
    CU_ASSERT_EQUAL(proxy_parse(b, n, &h), PROXY_DONE);
    CU_ASSERT_TRUE(h.local);
    CU_ASSERT_EQUAL(h.len, 16);
    n = v2(b, 0x20, 0x11, a, 12, NULL, 0);
    CU_ASSERT_EQUAL(proxy_parse(b, n, &h), PROXY_DONE);
    CU_ASSERT_TRUE(h.local);
    /* PROXY with UNSPEC family: unknown addresses. */
    n = v2(b, 0x21, 0x00, NULL, 0, NULL, 0);
    CU_ASSERT_EQUAL(proxy_parse(b, n, &h), PROXY_DONE);
    CU_ASSERT_TRUE(h.local);
}

static void test_v2_errors(void)
{
    uint8_t a[36] = {0}, b[8192];
    struct proxy_header h;
    size_t n = v2(b, 0x11, 0x11, a, 12, NULL, 0);
    CU_ASSERT_EQUAL(proxy_parse(b, 13, &h), PROXY_ERR_VERSION); /* fails before the rest */
    n = v2(b, 0x22, 0x11, a, 12, NULL, 0);
    CU_ASSERT_EQUAL(proxy_parse(b, n, &h), PROXY_ERR_VERSION);
    n = v2(b, 0x21, 0x41, a, 12, NULL, 0);
    CU_ASSERT_EQUAL(proxy_parse(b, 14, &h), PROXY_ERR_FAMILY);
    n = v2(b, 0x21, 0x13, a, 12, NULL, 0);
    CU_ASSERT_EQUAL(proxy_parse(b, n, &h), PROXY_ERR_FAMILY);
    n = v2(b, 0x21, 0x12, a, 12, NULL, 0); /* UDP */
    CU_ASSERT_EQUAL(proxy_parse(b, n, &h), PROXY_ERR_FAMILY);
    n = v2(b, 0x21, 0x21, a, 12, NULL, 0); /* TCP6 in 12 bytes */
    CU_ASSERT_EQUAL(proxy_parse(b, 16, &h), PROXY_ERR_LENGTH);
    /* Over the limit: refused from the 16 bytes, not waited for. */
    v2(b, 0x21, 0x11, a, 12, NULL, 0);
    b[14] = 0x10;
    b[15] = 0x01;
    CU_ASSERT_EQUAL(proxy_parse(b, 16, &h), PROXY_ERR_LENGTH);
    b[14] = 0x10;
    b[15] = 0x00; /* exactly 4096: wait for it */
    CU_ASSERT_EQUAL(proxy_parse(b, 16, &h), PROXY_NEED_MORE);
    (void)n;
}

/* Byte by byte through the stateful parser, with client data behind. */
static void test_parser_feed_pieces(void)
{
    const char *v1 = "PROXY TCP4 1.1.1.1 2.2.2.2 1000 1883\r\n";
    uint8_t stream[256];
    size_t hl = strlen(v1);
    memcpy(stream, v1, hl);
    memcpy(stream + hl, "\x10\x02\x00\x00", 4);
    for (size_t chunk = 1; chunk <= hl + 4; chunk++) {
        struct proxy_parser p;
        struct proxy_header h;
        proxy_parser_init(&p);
        size_t off = 0, used = 0;
        int r = PROXY_NEED_MORE;
        while (r == PROXY_NEED_MORE && off < hl + 4) {
            size_t n = chunk < hl + 4 - off ? chunk : hl + 4 - off;
            r = proxy_parser_feed(&p, stream + off, n, &used, &h);
            off += used;
            if (r == PROXY_NEED_MORE)
                CU_ASSERT_EQUAL(used, n);
        }
        CU_ASSERT_EQUAL(r, PROXY_DONE);
        CU_ASSERT_EQUAL(off, hl); /* the MQTT bytes are left over */
        CU_ASSERT_STRING_EQUAL(addr(&h.src), "1.1.1.1:1000");
        size_t u2;
        CU_ASSERT_EQUAL(proxy_parser_feed(&p, stream, 1, &u2, &h), PROXY_DONE);
        CU_ASSERT_EQUAL(u2, 0);
    }
    struct proxy_parser p;
    struct proxy_header h;
    size_t used;
    proxy_parser_init(&p);
    CU_ASSERT_EQUAL(proxy_parser_feed(&p, (const uint8_t *)"\x10\x0c", 2, &used, &h),
                    PROXY_ERR_SIGNATURE);
    CU_ASSERT_EQUAL(used, 0);
    CU_ASSERT_STRING_EQUAL(proxy_strerror(PROXY_ERR_SIGNATURE), "no PROXY protocol header");
}

int main(void)
{
    if (CU_initialize_registry() != CUE_SUCCESS)
        return 1;
    CU_pSuite s = CU_add_suite("proxy_proto", NULL, NULL);
    CU_add_test(s, "v1_tcp4", test_v1_tcp4);
    CU_add_test(s, "v1_tcp6_and_unknown", test_v1_tcp6_and_unknown);
    CU_add_test(s, "v1_limit", test_v1_limit);
    CU_add_test(s, "v1_malformed", test_v1_malformed);
    CU_add_test(s, "no_header_fails_early", test_no_header_fails_early);
    CU_add_test(s, "v2_tcp4_with_tlvs", test_v2_tcp4_with_tlvs);
    CU_add_test(s, "v2_tcp6_unix_local", test_v2_tcp6_unix_local);
    CU_add_test(s, "v2_errors", test_v2_errors);
    CU_add_test(s, "parser_feed_pieces", test_parser_feed_pieces);
    CU_basic_set_mode(CU_BRM_VERBOSE);
    CU_basic_run_tests();
    unsigned failed = CU_get_number_of_failures();
    CU_cleanup_registry();
    return failed ? 1 : 0;
}
