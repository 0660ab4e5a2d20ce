/*
 * passwd.h - password files in Mosquitto's format.
 *
 * One entry a line, `user:HASH`, where HASH is one of Mosquitto's formats:
 *
 *   $6$SALT$HASH          SHA-512 of (password || salt)
 *   $7$ITERATIONS$SALT$HASH   PBKDF2-HMAC-SHA512(password, salt, iterations)
 *
 * SALT and HASH are standard base64 (with padding); HASH is 64 bytes. Empty
 * lines and lines starting with '#' are skipped; a trailing "\r" is ignored.
 * New entries are written as $7$ with PASSWD_ITERATIONS rounds and a random
 * 12-byte salt, exactly as `mosquitto_passwd` writes them, so files work in
 * both brokers. See docs/security.md.
 *
 * A struct passwd_db is immutable once loaded, so any thread may call
 * passwd_check on it concurrently. Reload by loading a new db and swapping
 * the pointer; passwd_ref / passwd_unref keep an old db alive until its last
 * reader is done.
 */
#ifndef STARLING_PASSWD_H
#define STARLING_PASSWD_H

#include <stdbool.h>
#include <stddef.h>

/* Rounds of PBKDF2 for new entries (Mosquitto 2.0 writes 101). */
#define PASSWD_ITERATIONS 1000

/* Longest hash string passwd_hash_make writes, with its NUL. */
#define PASSWD_HASH_MAX 160

struct passwd_db;

/*
 * Parse a password file held in memory (text need not be NUL-terminated).
 * On success *out is a new db with one reference (the caller's). On error
 * returns -EINVAL (or -ENOMEM) and writes "line N: reason" into err.
 */
int passwd_parse(const char *text, size_t len, struct passwd_db **out, char *err, size_t errlen);

/* Read and parse the file at path; errors name the file and the line. */
int passwd_load(const char *path, struct passwd_db **out, char *err, size_t errlen);

/* Reference counting (atomic): a db is freed by its last passwd_unref. */
struct passwd_db *passwd_ref(struct passwd_db *db);
void passwd_unref(struct passwd_db *db);

/* Number of users in the db. */
size_t passwd_count(const struct passwd_db *db);

/*
 * Does user (ulen bytes) exist and is pw (pwlen bytes) its password?
 * Returns true only for a match. An unknown user is hashed like the file's
 * first entry, and hashes are compared with CRYPTO_memcmp: in a file of one
 * format and round count (what mosquitto_passwd and starling passwd write),
 * the time taken says neither whether the user exists nor how much of a hash
 * matched.
 */
bool passwd_check(const struct passwd_db *db, const char *user, size_t ulen, const void *pw,
                  size_t pwlen);

/*
 * Verify pw against one hash string ("$6$..." or "$7$..."). Returns 1 on a
 * match, 0 on a mismatch, -EINVAL when the hash string is malformed.
 */
int passwd_hash_verify(const char *hash, const void *pw, size_t pwlen);

/*
 * Write a new "$7$ITERATIONS$SALT$HASH" for pw with a random salt
 * (RAND_bytes) into out (at least PASSWD_HASH_MAX bytes). Returns 0, or
 * -EINVAL / -EIO (the random generator or PBKDF2 failed).
 */
int passwd_hash_make(const void *pw, size_t pwlen, unsigned iterations, char *out, size_t outlen);

/*
 * The same as passwd_hash_make in Mosquitto's older "$6$SALT$HASH" form
 * (salted SHA-512; `mosquitto_passwd -H sha512`). Kept for the -H option.
 */
int passwd_hash_make_sha512(const void *pw, size_t pwlen, char *out, size_t outlen);

/*
 * `starling passwd [-c | -D] [-b] [-H sha512 | -H sha512-pbkdf2] FILE USER
 * [PASSWORD]`: create, update or delete an entry, as mosquitto_passwd does.
 * argv[0] is "passwd". Returns the process exit status. (passwd_main.c)
 */
int passwd_main(int argc, char **argv);

#endif
