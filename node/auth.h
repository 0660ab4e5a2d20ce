/*
 * auth.h - the node's loaded security files: the password file, the ACL
 * file and the TLS server context, and how they are swapped on reload.
 *
 * auth_load reads everything the configuration names at start-up (an
 * error stops the node, naming the file and the reason). auth_reload (on
 * SIGHUP) reads them again and swaps each one that loaded; one that fails
 * keeps the old one and is reported. Readers take a reference
 * (auth_passwd, auth_acl, auth_tls) under a short mutex and drop it when
 * done, so a swap never frees what a connection or a check still uses.
 *
 * Thread safe: any thread may take references; auth_load / auth_reload /
 * auth_free run on the main thread.
 */
#ifndef STARLING_AUTH_H
#define STARLING_AUTH_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>

struct config;
struct passwd_db;
struct acl;
struct tls_ctx;

struct auth {
    pthread_mutex_t lock;
    struct passwd_db *passwd; /* NULL without password_file */
    struct acl *acl;          /* NULL without acl_file */
    struct tls_ctx *tls;      /* NULL without a TLS listener */
    /* fixed for the node's life (what the configuration names) */
    bool has_acl;
    bool inited;
};

/* Load what cfg names. Returns 0, or a negative errno with err saying which
 * file and why. */
int auth_load(struct auth *a, const struct config *cfg, char *err, size_t errlen);
/* Load again and swap; returns the number of files that failed (each logged). */
int auth_reload(struct auth *a, const struct config *cfg);
void auth_free(struct auth *a);

/* A reference on the current db / acl / context (NULL when none); the
 * caller drops it with passwd_unref / acl_unref / tls_ctx_unref. */
struct passwd_db *auth_passwd(struct auth *a);
struct acl *auth_acl(struct auth *a);
struct tls_ctx *auth_tls(struct auth *a);

/* Whether the configuration has a TLS listener (tls_port or wss_port). */
bool auth_wants_tls(const struct config *cfg);

#endif
