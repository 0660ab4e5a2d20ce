/*
 * keys.c - API keys: secrets stored hashed, and the in-memory key table that
 * holds the bootstrap key of the configuration (see admin.h).
 *
 * A secret is stored as PBKDF2-HMAC-SHA512 over a random 16-byte salt
 * (OpenSSL): "pbkdf2-sha512$ITERATIONS$SALT$HASH", salt and hash in base64.
 * A request with a key costs one derivation (a few milliseconds,
 * ADMIN_PBKDF2_ITERATIONS) unless the same key and secret matched in the
 * last minute (admin_secret_verify's cache), so the iteration count is a
 * compromise between a stolen table's resistance and the cost of wrong
 * secrets and first requests. Comparisons use
 * CRYPTO_memcmp; an unknown key costs the same derivation as a known one.
 */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <openssl/sha.h>
#include <time.h>

#include "admin.h"

#define ADMIN_PBKDF2_ITERATIONS 10000
#define ADMIN_PBKDF2_MAX_ITERATIONS 10000000
#define SALT_LEN 16
#define HASH_LEN 64
#define KEY_MAX 64
#define SECRET_MIN 8
#define SECRET_MAX 128

static atomic_ulong n_derivations;

unsigned long admin_secret_derivations(void)
{
    return atomic_load(&n_derivations);
}

static int derive(const char *secret, const unsigned char *salt, size_t salt_len,
                  unsigned iterations, unsigned char out[HASH_LEN])
{
    atomic_fetch_add(&n_derivations, 1);
    if (PKCS5_PBKDF2_HMAC(secret, (int)strlen(secret), salt, (int)salt_len, (int)iterations,
                          EVP_sha512(), HASH_LEN, out) != 1)
        return -EIO;
    return 0;
}

int admin_secret_hash(const char *secret, char *out, size_t outlen)
{
    unsigned char salt[SALT_LEN], hash[HASH_LEN];
    /* base64 of 16 bytes: 24 characters; of 64 bytes: 88 (each plus a NUL) */
    unsigned char salt64[25], hash64[89];
    if (RAND_bytes(salt, sizeof(salt)) != 1)
        return -EIO;
    int rc = derive(secret, salt, sizeof(salt), ADMIN_PBKDF2_ITERATIONS, hash);
    if (rc < 0)
        return rc;
    EVP_EncodeBlock(salt64, salt, sizeof(salt));
    EVP_EncodeBlock(hash64, hash, sizeof(hash));
    int n = snprintf(out, outlen, "pbkdf2-sha512$%u$%s$%s", ADMIN_PBKDF2_ITERATIONS, (char *)salt64,
                     (char *)hash64);
    OPENSSL_cleanse(hash, sizeof(hash));
    return n > 0 && (size_t)n < outlen ? 0 : -ENOSPC;
}

/* Decode base64 text of a known decoded length. */
static int b64_decode(const char *s, size_t slen, unsigned char *out, size_t want)
{
    unsigned char tmp[HASH_LEN + 3];
    if (slen == 0 || slen % 4 != 0 || slen / 4 * 3 > sizeof(tmp))
        return -EINVAL;
    int n = EVP_DecodeBlock(tmp, (const unsigned char *)s, (int)slen);
    if (n < 0)
        return -EINVAL;
    /* EVP_DecodeBlock counts the padding's zero bytes */
    size_t pad = (s[slen - 1] == '=') + (s[slen - 2] == '=');
    if ((size_t)n - pad != want)
        return -EINVAL;
    memcpy(out, tmp, want);
    return 0;
}

/* Matches verified lately: SHA-256(stored NUL secret), until when
 * (CLOCK_MONOTONIC s). A stored form changes with the secret, and a deleted
 * key is not looked up, so an entry can only ever confirm a pair that
 * matched; it only saves the derivation. */
#define VERIFIED_SLOTS 16
static struct {
    unsigned char id[SHA256_DIGEST_LENGTH];
    time_t until;
} verified[VERIFIED_SLOTS];
static unsigned verified_next;
static pthread_mutex_t verified_mu = PTHREAD_MUTEX_INITIALIZER;

static time_t mono_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec;
}

/* Fails (false) only when EVP does: the caller then derives. */
static bool verified_id(const char *secret, const char *stored,
                        unsigned char id[SHA256_DIGEST_LENGTH])
{
    EVP_MD_CTX *h = EVP_MD_CTX_new();
    bool ok = h && EVP_DigestInit_ex(h, EVP_sha256(), NULL) == 1 &&
              EVP_DigestUpdate(h, stored, strlen(stored) + 1) == 1 &&
              EVP_DigestUpdate(h, secret, strlen(secret)) == 1 &&
              EVP_DigestFinal_ex(h, id, NULL) == 1;
    EVP_MD_CTX_free(h);
    return ok;
}

static bool verified_lately(const unsigned char id[SHA256_DIGEST_LENGTH])
{
    bool hit = false;
    time_t now = mono_s();
    pthread_mutex_lock(&verified_mu);
    for (unsigned i = 0; i < VERIFIED_SLOTS && !hit; i++)
        hit =
            verified[i].until > now && CRYPTO_memcmp(verified[i].id, id, SHA256_DIGEST_LENGTH) == 0;
    pthread_mutex_unlock(&verified_mu);
    return hit;
}

static void verified_note(const unsigned char id[SHA256_DIGEST_LENGTH])
{
    pthread_mutex_lock(&verified_mu);
    unsigned slot = verified_next++ % VERIFIED_SLOTS;
    memcpy(verified[slot].id, id, SHA256_DIGEST_LENGTH);
    verified[slot].until = mono_s() + ADMIN_VERIFIED_TTL_S;
    pthread_mutex_unlock(&verified_mu);
}

int admin_secret_verify(const char *secret, const char *stored)
{
    unsigned char id[SHA256_DIGEST_LENGTH];
    bool have_id = verified_id(secret, stored, id);
    if (have_id && verified_lately(id))
        return 0;
    static const char prefix[] = "pbkdf2-sha512$";
    if (strncmp(stored, prefix, sizeof(prefix) - 1) != 0)
        return -EINVAL;
    const char *p = stored + sizeof(prefix) - 1;
    char *end;
    errno = 0;
    unsigned long it = strtoul(p, &end, 10);
    if (errno || end == p || *end != '$' || it < 1 || it > ADMIN_PBKDF2_MAX_ITERATIONS)
        return -EINVAL;
    const char *salt_s = end + 1;
    const char *hash_s = strchr(salt_s, '$');
    if (!hash_s)
        return -EINVAL;
    unsigned char salt[SALT_LEN], want[HASH_LEN], got[HASH_LEN];
    if (b64_decode(salt_s, (size_t)(hash_s - salt_s), salt, sizeof(salt)) < 0 ||
        b64_decode(hash_s + 1, strlen(hash_s + 1), want, sizeof(want)) < 0)
        return -EINVAL;
    if (derive(secret, salt, sizeof(salt), (unsigned)it, got) < 0)
        return -EIO;
    int same = CRYPTO_memcmp(got, want, HASH_LEN) == 0;
    OPENSSL_cleanse(got, sizeof(got));
    if (same && have_id)
        verified_note(id);
    return same ? 0 : -EACCES;
}

bool admin_api_key_valid(const char *kv, char *err, size_t errlen)
{
    const char *colon = strchr(kv, ':');
    if (!colon) {
        snprintf(err, errlen, "expected KEY:SECRET");
        return false;
    }
    size_t klen = (size_t)(colon - kv);
    if (klen < 1 || klen > KEY_MAX) {
        snprintf(err, errlen, "the key must have 1 to %d characters", KEY_MAX);
        return false;
    }
    for (size_t i = 0; i < klen; i++) {
        char c = kv[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '_' || c == '-')) {
            snprintf(err, errlen, "the key may hold only letters, digits, '.', '_' and '-'");
            return false;
        }
    }
    const char *secret = colon + 1;
    size_t slen = strlen(secret);
    if (slen < SECRET_MIN || slen > SECRET_MAX) {
        snprintf(err, errlen, "the secret must have %d to %d characters", SECRET_MIN, SECRET_MAX);
        return false;
    }
    for (const char *p = secret; *p; p++) {
        if (*p <= ' ' || *p > '~') {
            snprintf(err, errlen, "the secret may hold only printable ASCII without blanks");
            return false;
        }
    }
    return true;
}

/* ---- the static key table ------------------------------------------------ */

struct admin_key_entry {
    char key[KEY_MAX + 1];
    char stored[ADMIN_SECRET_HASH_MAX];
};

struct admin_key_table {
    struct admin_key_entry *v;
    size_t n;
    char dummy[ADMIN_SECRET_HASH_MAX]; /* verified against for unknown keys */
};

struct admin_key_table *admin_key_table_new(void)
{
    struct admin_key_table *t = calloc(1, sizeof(*t));
    if (!t)
        return NULL;
    if (admin_secret_hash("not a secret of any key", t->dummy, sizeof(t->dummy)) < 0) {
        free(t);
        return NULL;
    }
    return t;
}

void admin_key_table_free(struct admin_key_table *t)
{
    if (!t)
        return;
    if (t->v)
        OPENSSL_cleanse(t->v, t->n * sizeof(*t->v));
    free(t->v);
    free(t);
}

int admin_key_table_add(struct admin_key_table *t, const char *kv)
{
    char why[128];
    if (!admin_api_key_valid(kv, why, sizeof(why)))
        return -EINVAL;
    struct admin_key_entry *nv = realloc(t->v, (t->n + 1) * sizeof(*nv));
    if (!nv)
        return -ENOMEM;
    t->v = nv;
    struct admin_key_entry *e = &t->v[t->n];
    size_t klen = (size_t)(strchr(kv, ':') - kv);
    memcpy(e->key, kv, klen);
    e->key[klen] = '\0';
    int rc = admin_secret_hash(kv + klen + 1, e->stored, sizeof(e->stored));
    if (rc < 0)
        return rc;
    t->n++;
    return 0;
}

static int admin_key_table_verify(void *ud, const char *key, const char *secret)
{
    struct admin_key_table *t = ud;
    for (size_t i = 0; i < t->n; i++)
        if (strcmp(t->v[i].key, key) == 0)
            return admin_secret_verify(secret, t->v[i].stored) == 0 ? 0 : -EACCES;
    (void)admin_secret_verify(secret, t->dummy);
    return -ENOENT;
}

const struct admin_keys_ops admin_key_table_ops = {
    .verify = admin_key_table_verify,
};
