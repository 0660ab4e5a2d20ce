/*
 * acl.h - access control lists in Mosquitto's aclfile syntax.
 *
 *   # comment
 *   topic [read|write|readwrite|deny] FILTER     (rules before any `user`
 *                                                 line: anonymous clients)
 *   user NAME                                    (following topic lines: NAME)
 *   pattern [read|write|readwrite|deny] FILTER   (every client; %u is the
 *                                                 user name, %c the client id)
 *
 * No access word means readwrite. A FILTER is the rest of the line.
 *
 * The decision for a topic name (acl_check with ACL_READ or ACL_WRITE) is
 * Mosquitto 2.0's, checked against a real mosquitto by
 * tests/integration/test_acl.py with the cases of tests/data/acl_cases.txt:
 *
 *  1. The client's own `topic` rules (its user's block; the anonymous block
 *     when it has no user name; none for a user without a block): a matching
 *     `deny` refuses, whatever the order of the lines; otherwise a matching
 *     rule granting the access allows.
 *  2. Otherwise the `pattern` rules, after substitution, the same way (deny
 *     first). When the file has patterns, a client whose user name or client
 *     id contains '+' or '#' is refused here; a pattern with %u never applies
 *     to a client without a user name.
 *  3. Otherwise refused. A file with no rules refuses everything.
 *
 * READ is checked for each message delivered, against its topic name, like
 * WRITE for each PUBLISH. Mosquitto 2.0 grants every SUBSCRIBE and filters
 * at delivery; Starling also answers SUBSCRIBE (ACL_SUBSCRIBE, a filter): it
 * refuses a filter when a `deny` rule covers every topic it matches, or when
 * no read rule matches any topic it matches -- subscriptions that could never
 * deliver anything. Deliveries are still checked one by one.
 *
 * A struct acl is immutable once loaded: any thread may call acl_check
 * concurrently. Reload by loading a new one and swapping the pointer;
 * acl_ref / acl_unref keep the old one alive for its last reader.
 */
#ifndef STARLING_ACL_H
#define STARLING_ACL_H

#include <stdbool.h>
#include <stddef.h>

enum acl_access {
    ACL_READ = 1,      /* receive a message published on a topic name */
    ACL_WRITE = 2,     /* publish on a topic name (also a will, a retain) */
    ACL_SUBSCRIBE = 4, /* subscribe to a topic filter (not $share/..) */
};

struct acl;

/*
 * Parse an aclfile held in memory. On success *out has one reference (the
 * caller's). On error returns -EINVAL or -ENOMEM and writes
 * "line N: reason" into err.
 */
int acl_parse(const char *text, size_t len, struct acl **out, char *err, size_t errlen);

/* Read and parse the file at path; errors name the file and the line. */
int acl_load(const char *path, struct acl **out, char *err, size_t errlen);

struct acl *acl_ref(struct acl *acl);
void acl_unref(struct acl *acl);

/*
 * May this client access topic (a topic name for ACL_READ / ACL_WRITE, a
 * filter for ACL_SUBSCRIBE)? user is NULL for a client without a user name;
 * lengths are explicit, strings need not be NUL-terminated. Thread safe,
 * allocates only for a substituted pattern longer than 256 bytes.
 */
bool acl_check(const struct acl *acl, const char *user, size_t ulen, const char *client_id,
               size_t clen, const char *topic, size_t tlen, enum acl_access access);

/* Do two topic filters match at least one common topic name? */
bool acl_filters_intersect(const char *a, size_t alen, const char *b, size_t blen);

/* Does filter d match every topic name that filter f matches? */
bool acl_filter_covers(const char *d, size_t dlen, const char *f, size_t flen);

#endif
