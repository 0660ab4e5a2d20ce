/*
 * passwd.c - Mosquitto-format password files: parse, check, make hashes.
 *
 * The db is a sorted array of entries searched with bsearch. Every entry keeps
 * its decoded salt and hash; a check hashes the offered password the way the
 * entry says ($6$ or $7$) and compares in constant time. An unknown user is
 * hashed like the file's first entry, so that it costs what a wrong password
 * costs.
 */
#include "passwd.h"
#include "fileio.h"

#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>

#define PASSWD_HASH_LEN 64 /* SHA-512 */
#define PASSWD_SALT_MAX 64
#define PASSWD_SALT_NEW 12 /* what mosquitto_passwd writes */
#define PASSWD_FILE_MAX (64u << 20)

enum passwd_kind { PASSWD_SHA512 = 6, PASSWD_PBKDF2 = 7 };

struct passwd_hash {
    enum passwd_kind kind;
    int iterations;
    size_t salt_len;
    unsigned char salt[PASSWD_SALT_MAX];
    unsigned char hash[PASSWD_HASH_LEN];
};

struct passwd_entry {
    char *user;
    size_t ulen;
    unsigned line;
    struct passwd_hash h;
};

struct passwd_db {
    atomic_int refs;
    size_t n;
    struct passwd_entry *v;
};

static void passwd_errf(char *err, size_t errlen, const char *fmt, ...)
{
    if (!err || !errlen)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

/* Decode standard base64 (padding required, as Mosquitto writes it) into at
 * most cap bytes. Returns the decoded length or -1. */
static long passwd_b64_decode(const char *s, size_t len, unsigned char *out, size_t cap)
{
    if (len == 0 || len % 4 != 0 || len / 4 * 3 > cap + 2)
        return -1;
    for (size_t i = 0; i < len; i++) {
        char c = s[i];
        bool ok = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
                  c == '+' || c == '/' || (c == '=' && i >= len - 2);
        if (!ok)
            return -1;
    }
    if (s[len - 2] == '=' && s[len - 1] != '=')
        return -1;
    size_t pad = (s[len - 1] == '=') + (s[len - 2] == '=');
    unsigned char tmp[PASSWD_SALT_MAX + PASSWD_HASH_LEN + 4];
    if (len / 4 * 3 > sizeof(tmp))
        return -1;
    int n = EVP_DecodeBlock(tmp, (const unsigned char *)s, (int)len);
    if (n < 0 || (size_t)n < pad || (size_t)n - pad > cap)
        return -1;
    memcpy(out, tmp, (size_t)n - pad);
    return (long)((size_t)n - pad);
}

/* Parse "$6$SALT$HASH" or "$7$ITER$SALT$HASH" (len bytes, no NUL needed). */
static int passwd_hash_parse(const char *s, size_t len, struct passwd_hash *h, const char **why)
{
    const char *end = s + len;
    memset(h, 0, sizeof(*h));
    if (len < 3 || s[0] != '$' || (s[1] != '6' && s[1] != '7') || s[2] != '$') {
        *why = "the password is not a $6$ or $7$ hash";
        return -EINVAL;
    }
    h->kind = s[1] == '6' ? PASSWD_SHA512 : PASSWD_PBKDF2;
    const char *p = s + 3;
    if (h->kind == PASSWD_PBKDF2) {
        long long it = 0;
        const char *q = p;
        while (q < end && *q >= '0' && *q <= '9' && it <= INT_MAX)
            it = it * 10 + (*q++ - '0');
        if (q == p || q >= end || *q != '$' || it < 1 || it > INT_MAX) {
            *why = "bad iteration count in the $7$ hash";
            return -EINVAL;
        }
        h->iterations = (int)it;
        p = q + 1;
    }
    const char *d = memchr(p, '$', (size_t)(end - p));
    if (!d) {
        *why = "the hash has no '$' between salt and hash";
        return -EINVAL;
    }
    long sl = passwd_b64_decode(p, (size_t)(d - p), h->salt, sizeof(h->salt));
    if (sl <= 0) {
        *why = "the salt is not valid base64";
        return -EINVAL;
    }
    h->salt_len = (size_t)sl;
    long hl = passwd_b64_decode(d + 1, (size_t)(end - d - 1), h->hash, sizeof(h->hash));
    if (hl != PASSWD_HASH_LEN) {
        *why = "the hash is not 64 bytes of valid base64";
        return -EINVAL;
    }
    return 0;
}

/* Hash pw as h says into out[PASSWD_HASH_LEN]. */
static int passwd_digest(const struct passwd_hash *h, const void *pw, size_t pwlen,
                         unsigned char *out)
{
    if (pwlen > INT_MAX)
        return -EINVAL;
    if (h->kind == PASSWD_PBKDF2) {
        return PKCS5_PBKDF2_HMAC(pw, (int)pwlen, h->salt, (int)h->salt_len, h->iterations,
                                 EVP_sha512(), PASSWD_HASH_LEN, out) == 1
                   ? 0
                   : -EIO;
    }
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    unsigned int n = 0;
    int ok = ctx && EVP_DigestInit_ex(ctx, EVP_sha512(), NULL) == 1 &&
             EVP_DigestUpdate(ctx, pw, pwlen) == 1 &&
             EVP_DigestUpdate(ctx, h->salt, h->salt_len) == 1 &&
             EVP_DigestFinal_ex(ctx, out, &n) == 1 && n == PASSWD_HASH_LEN;
    EVP_MD_CTX_free(ctx);
    return ok ? 0 : -EIO;
}

static bool passwd_hash_matches(const struct passwd_hash *h, const void *pw, size_t pwlen)
{
    unsigned char d[PASSWD_HASH_LEN];
    if (passwd_digest(h, pw, pwlen, d) < 0)
        return false;
    return CRYPTO_memcmp(d, h->hash, PASSWD_HASH_LEN) == 0;
}

int passwd_hash_verify(const char *hash, const void *pw, size_t pwlen)
{
    struct passwd_hash h;
    const char *why;
    if (!hash || passwd_hash_parse(hash, strlen(hash), &h, &why) < 0)
        return -EINVAL;
    return passwd_hash_matches(&h, pw, pwlen) ? 1 : 0;
}

static int passwd_format(const struct passwd_hash *h, char *out, size_t outlen)
{
    char salt[PASSWD_SALT_MAX * 2], hash[PASSWD_HASH_LEN * 2];
    EVP_EncodeBlock((unsigned char *)salt, h->salt, (int)h->salt_len);
    EVP_EncodeBlock((unsigned char *)hash, h->hash, PASSWD_HASH_LEN);
    int n = h->kind == PASSWD_PBKDF2
                ? snprintf(out, outlen, "$7$%d$%s$%s", h->iterations, salt, hash)
                : snprintf(out, outlen, "$6$%s$%s", salt, hash);
    return n < 0 || (size_t)n >= outlen ? -EINVAL : 0;
}

static int passwd_make(enum passwd_kind kind, const void *pw, size_t pwlen, unsigned iterations,
                       char *out, size_t outlen)
{
    struct passwd_hash h = {.kind = kind, .salt_len = PASSWD_SALT_NEW};
    if (!out || outlen < PASSWD_HASH_MAX || iterations < 1 || iterations > INT_MAX)
        return -EINVAL;
    h.iterations = (int)iterations;
    if (RAND_bytes(h.salt, PASSWD_SALT_NEW) != 1)
        return -EIO;
    int r = passwd_digest(&h, pw, pwlen, h.hash);
    if (r < 0)
        return r;
    return passwd_format(&h, out, outlen);
}

int passwd_hash_make(const void *pw, size_t pwlen, unsigned iterations, char *out, size_t outlen)
{
    return passwd_make(PASSWD_PBKDF2, pw, pwlen, iterations, out, outlen);
}

int passwd_hash_make_sha512(const void *pw, size_t pwlen, char *out, size_t outlen)
{
    return passwd_make(PASSWD_SHA512, pw, pwlen, 1, out, outlen);
}

static int passwd_entry_cmp(const void *a, const void *b)
{
    const struct passwd_entry *x = a, *y = b;
    size_t n = x->ulen < y->ulen ? x->ulen : y->ulen;
    int c = memcmp(x->user, y->user, n);
    if (c)
        return c;
    return x->ulen < y->ulen ? -1 : x->ulen > y->ulen;
}

static void passwd_db_free(struct passwd_db *db)
{
    if (!db)
        return;
    for (size_t i = 0; i < db->n; i++) {
        OPENSSL_cleanse(&db->v[i].h, sizeof(db->v[i].h));
        free(db->v[i].user);
    }
    free(db->v);
    free(db);
}

int passwd_parse(const char *text, size_t len, struct passwd_db **out, char *err, size_t errlen)
{
    struct passwd_db *db = calloc(1, sizeof(*db));
    size_t cap = 0;
    unsigned line = 0;
    if (!db)
        return -ENOMEM;
    atomic_init(&db->refs, 1);
    const char *p = text, *end = text + len;
    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        const char *le = nl ? nl : end;
        const char *next = nl ? nl + 1 : end;
        line++;
        if (le > p && le[-1] == '\r')
            le--;
        if (le == p || *p == '#') {
            p = next;
            continue;
        }
        const char *colon = memchr(p, ':', (size_t)(le - p));
        if (!colon || colon == p) {
            passwd_errf(err, errlen, "line %u: expected user:hash", line);
            goto fail;
        }
        if (memchr(p, '\0', (size_t)(le - p))) {
            passwd_errf(err, errlen, "line %u: NUL byte", line);
            goto fail;
        }
        struct passwd_entry e = {.ulen = (size_t)(colon - p), .line = line};
        const char *why = "";
        if (passwd_hash_parse(colon + 1, (size_t)(le - colon - 1), &e.h, &why) < 0) {
            passwd_errf(err, errlen, "line %u: %s", line, why);
            goto fail;
        }
        if (db->n == cap) {
            size_t ncap = cap ? cap * 2 : 16;
            void *nv = realloc(db->v, ncap * sizeof(*db->v));
            if (!nv)
                goto nomem;
            db->v = nv;
            cap = ncap;
        }
        e.user = strndup(p, e.ulen);
        if (!e.user)
            goto nomem;
        db->v[db->n++] = e;
        p = next;
    }
    if (db->n)
        qsort(db->v, db->n, sizeof(*db->v), passwd_entry_cmp);
    for (size_t i = 1; i < db->n; i++) {
        if (passwd_entry_cmp(&db->v[i - 1], &db->v[i]) == 0) {
            unsigned a = db->v[i - 1].line, b = db->v[i].line;
            passwd_errf(err, errlen, "line %u: user '%s' already on line %u", a > b ? a : b,
                        db->v[i].user, a < b ? a : b);
            goto fail;
        }
    }
    *out = db;
    return 0;
nomem:
    passwd_db_free(db);
    passwd_errf(err, errlen, "out of memory");
    return -ENOMEM;
fail:
    passwd_db_free(db);
    return -EINVAL;
}

int passwd_load(const char *path, struct passwd_db **out, char *err, size_t errlen)
{
    char *text;
    size_t len;
    int r = file_read_all(path, PASSWD_FILE_MAX, &text, &len);
    if (r == -EFBIG)
        passwd_errf(err, errlen, "%s: larger than %u bytes", path, PASSWD_FILE_MAX);
    else if (r == -ENOMEM)
        passwd_errf(err, errlen, "%s: out of memory", path);
    else if (r == -EIO)
        passwd_errf(err, errlen, "%s: read error", path);
    else if (r < 0) {
        passwd_errf(err, errlen, "%s: %s", path, strerror(-r));
        return r;
    }
    if (r == 0) {
        char why[256] = "";
        r = passwd_parse(text, len, out, why, sizeof(why));
        if (r < 0)
            passwd_errf(err, errlen, "%s: %s", path, why);
    }
    if (text)
        OPENSSL_cleanse(text, len);
    free(text);
    return r;
}

struct passwd_db *passwd_ref(struct passwd_db *db)
{
    if (db)
        atomic_fetch_add(&db->refs, 1);
    return db;
}

void passwd_unref(struct passwd_db *db)
{
    if (db && atomic_fetch_sub(&db->refs, 1) == 1)
        passwd_db_free(db);
}

size_t passwd_count(const struct passwd_db *db)
{
    return db ? db->n : 0;
}

bool passwd_check(const struct passwd_db *db, const char *user, size_t ulen, const void *pw,
                  size_t pwlen)
{
    /* For an empty db: a $7$ entry with the default rounds. */
    static const struct passwd_hash dummy = {
        .kind = PASSWD_PBKDF2, .iterations = PASSWD_ITERATIONS, .salt_len = PASSWD_SALT_NEW};
    const struct passwd_entry *e = NULL;
    if (db && db->n && user) {
        struct passwd_entry key = {.user = (char *)user, .ulen = ulen};
        e = bsearch(&key, db->v, db->n, sizeof(*db->v), passwd_entry_cmp);
    }
    /* An unknown user is hashed like the file's first entry (files are
     * usually uniform: mosquitto_passwd writes one format and round count). */
    const struct passwd_hash *h = e ? &e->h : db && db->n ? &db->v[0].h : &dummy;
    bool ok = passwd_hash_matches(h, pw, pwlen);
    return e != NULL && ok;
}
