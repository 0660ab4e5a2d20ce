/*
 * auth.c - loading and swapping the security files (see auth.h).
 */
#include "auth.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "acl.h"
#include "config.h"
#include "log.h"
#include "passwd.h"
#include "tls.h"

bool auth_wants_tls(const struct config *cfg)
{
    return cfg->tls_port != 0 || cfg->wss_port != 0;
}

static int auth_load_tls(const struct config *cfg, struct tls_ctx **out, char *err, size_t errlen)
{
    if (!cfg->tls_certfile[0] || !cfg->tls_keyfile[0]) {
        snprintf(err, errlen, "tls_port / wss_port need tls_certfile and tls_keyfile");
        return -EINVAL;
    }
    if (cfg->tls_require_certificate && !cfg->tls_cafile[0]) {
        snprintf(err, errlen, "tls_require_certificate needs tls_cafile");
        return -EINVAL;
    }
    struct tls_config tc = {
        .certfile = cfg->tls_certfile,
        .keyfile = cfg->tls_keyfile,
        .cafile = cfg->tls_cafile[0] ? cfg->tls_cafile : NULL,
        .require_certificate = cfg->tls_require_certificate,
        .min_version = cfg->tls_min_version,
        .ciphers = cfg->tls_ciphers[0] ? cfg->tls_ciphers : NULL,
    };
    return tls_ctx_new(&tc, out, err, errlen);
}

int auth_load(struct auth *a, const struct config *cfg, char *err, size_t errlen)
{
    memset(a, 0, sizeof(*a));
    pthread_mutex_init(&a->lock, NULL);
    a->inited = true;
    int r = 0;
    char why[512];
    if (cfg->password_file[0] &&
        (r = passwd_load(cfg->password_file, &a->passwd, why, sizeof(why))) < 0) {
        snprintf(err, errlen, "password_file %s", why);
        return r;
    }
    if (cfg->acl_file[0] && (r = acl_load(cfg->acl_file, &a->acl, why, sizeof(why))) < 0) {
        snprintf(err, errlen, "acl_file %s", why);
        return r;
    }
    a->has_acl = a->acl != NULL;
    if (auth_wants_tls(cfg) && (r = auth_load_tls(cfg, &a->tls, err, errlen)) < 0)
        return r;
    return 0;
}

int auth_reload(struct auth *a, const struct config *cfg)
{
    int failed = 0;
    char why[512];
    if (cfg->password_file[0]) {
        struct passwd_db *db = NULL;
        if (passwd_load(cfg->password_file, &db, why, sizeof(why)) < 0) {
            log_error("reload: password_file %s (the old one stays)", why);
            failed++;
        } else {
            pthread_mutex_lock(&a->lock);
            struct passwd_db *old = a->passwd;
            a->passwd = db;
            pthread_mutex_unlock(&a->lock);
            passwd_unref(old);
            log_info("reload: password_file %s: %zu users", cfg->password_file, passwd_count(db));
        }
    }
    if (cfg->acl_file[0]) {
        struct acl *acl = NULL;
        if (acl_load(cfg->acl_file, &acl, why, sizeof(why)) < 0) {
            log_error("reload: acl_file %s (the old one stays)", why);
            failed++;
        } else {
            pthread_mutex_lock(&a->lock);
            struct acl *old = a->acl;
            a->acl = acl;
            pthread_mutex_unlock(&a->lock);
            acl_unref(old);
            log_info("reload: acl_file %s", cfg->acl_file);
        }
    }
    if (auth_wants_tls(cfg)) {
        struct tls_ctx *ctx = NULL;
        if (auth_load_tls(cfg, &ctx, why, sizeof(why)) < 0) {
            log_error("reload: %s (the old certificate stays)", why);
            failed++;
        } else {
            pthread_mutex_lock(&a->lock);
            struct tls_ctx *old = a->tls;
            a->tls = ctx;
            pthread_mutex_unlock(&a->lock);
            tls_ctx_unref(old);
            log_info("reload: TLS certificate %s", cfg->tls_certfile);
        }
    }
    return failed;
}

void auth_free(struct auth *a)
{
    if (!a->inited)
        return;
    passwd_unref(a->passwd);
    acl_unref(a->acl);
    tls_ctx_unref(a->tls);
    a->passwd = NULL;
    a->acl = NULL;
    a->tls = NULL;
    pthread_mutex_destroy(&a->lock);
    a->inited = false;
}

struct passwd_db *auth_passwd(struct auth *a)
{
    pthread_mutex_lock(&a->lock);
    struct passwd_db *db = a->passwd ? passwd_ref(a->passwd) : NULL;
    pthread_mutex_unlock(&a->lock);
    return db;
}

struct acl *auth_acl(struct auth *a)
{
    pthread_mutex_lock(&a->lock);
    struct acl *acl = a->acl ? acl_ref(a->acl) : NULL;
    pthread_mutex_unlock(&a->lock);
    return acl;
}

struct tls_ctx *auth_tls(struct auth *a)
{
    pthread_mutex_lock(&a->lock);
    struct tls_ctx *ctx = a->tls ? tls_ctx_ref(a->tls) : NULL;
    pthread_mutex_unlock(&a->lock);
    return ctx;
}
