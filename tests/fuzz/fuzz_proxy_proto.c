/*
 * fuzz_proxy_proto.c - libFuzzer target for the PROXY protocol parser.
 *
 * Parses the input at once with proxy_parse and again through a
 * proxy_parser fed in pieces whose sizes come from the first input byte;
 * both must agree on the status, the header length and the addresses, and
 * a complete header must lie within the input and its limits.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proxy_proto.h"
#include "fuzz_check.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    size_t step = (size_t)(data[0] % 17) + 1;
    data++;
    size--;
    uint8_t *copy = malloc(size ? size : 1);
    if (!copy)
        return 0;
    if (size)
        memcpy(copy, data, size);

    struct proxy_header a, b;
    int ra = proxy_parse(copy, size, &a);
    FUZZ_CHECK(ra >= PROXY_ERR_TLV && ra <= PROXY_DONE);
    (void)proxy_strerror(ra);
    if (ra == PROXY_DONE) {
        FUZZ_CHECK(a.len <= size);
        FUZZ_CHECK(a.version == 1 ? a.len <= PROXY_V1_MAX : a.len <= PROXY_HEADER_MAX);
        char s[200];
        proxy_addr_str(&a.src, s, sizeof(s));
        proxy_addr_str(&a.dst, s, sizeof(s));
    }

    struct proxy_parser *p = malloc(sizeof(*p));
    if (!p) {
        free(copy);
        return 0;
    }
    proxy_parser_init(p);
    size_t off = 0, used = 0;
    int rb = PROXY_NEED_MORE;
    while (rb == PROXY_NEED_MORE && off < size) {
        size_t n = step < size - off ? step : size - off;
        rb = proxy_parser_feed(p, copy + off, n, &used, &b);
        FUZZ_CHECK(used <= n);
        off += used;
    }
    /* Fed in pieces, an error may show before the whole input is seen:
     * the one-shot parse of the same bytes must fail as well. */
    if (rb == PROXY_DONE || ra == PROXY_DONE) {
        FUZZ_CHECK(rb == ra);
        FUZZ_CHECK(off == a.len && b.len == a.len && a.local == b.local);
        FUZZ_CHECK(memcmp(&a.src, &b.src, sizeof(a.src)) == 0);
        FUZZ_CHECK(memcmp(&a.dst, &b.dst, sizeof(a.dst)) == 0);
    } else if (rb < 0) {
        FUZZ_CHECK(ra < 0);
    } else {
        FUZZ_CHECK(ra == PROXY_NEED_MORE);
    }
    free(p);
    free(copy);
    return 0;
}
