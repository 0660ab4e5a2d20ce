/*
 * main.c - the `starling` command: read the configuration, run the node.
 *
 * Configuration sources, later ones winning: built-in defaults, -c FILE,
 * STARLING_* environment variables, -p PORT.
 */
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "admin.h"
#include "admin_local.h"
#include "broker.h"
#include "cluster_node.h"
#include "tables.h"
#include "config.h"
#include "log.h"
#include "passwd.h"
#include "persist.h"
#include "server.h"

extern char **environ;

static void usage(FILE *out)
{
    fprintf(out, "usage: starling [-c FILE] [-p PORT] [-v] [-h]\n"
                 "       starling passwd [-c | -D] [-b] FILE USER [PASSWORD]\n"
                 "       starling ctl [OPTIONS] COMMAND   (starling ctl --help)\n"
                 "\n"
                 "  -c, --config FILE  read the configuration file FILE\n"
                 "  -p, --port PORT    listen for MQTT on PORT (overrides the file and\n"
                 "                     STARLING_PORT)\n"
                 "  -v, --version      print the version and exit\n"
                 "  -h, --help         print this help and exit\n"
                 "\n"
                 "With no options the node listens on 0.0.0.0:1883 with built-in defaults.\n"
                 "Every configuration key KEY can be set with the environment variable\n"
                 "STARLING_KEY; see docs/configuration.md.\n");
}

/* The admin API (admin/admin.h) on admin_bind (or bind_address) and
 * admin_port, answering from this node through admin_local. */
struct admin_run {
    struct admin_local local;
    struct admin_key_table *keys;
    struct admin *server;
};

/* An API key: the bootstrap key of the configuration, else the API key
 * table (tables.h). */
static int admin_run_verify(void *ud, const char *key, const char *secret)
{
    struct admin_run *ar = ud;
    int rc = admin_key_table_ops.verify(ar->keys, key, secret);
    if (rc != -ENOENT)
        return rc;
    return admin_local_key_verify(&ar->local, key, secret);
}

static const struct admin_keys_ops admin_run_keys = {.verify = admin_run_verify};

static int admin_run_start(struct admin_run *ar, struct broker *b, const struct config *cfg,
                           struct cluster_node *cn)
{
    memset(ar, 0, sizeof(*ar));
    if (cfg->admin_port == 0)
        return 0;
    struct admin_provider p;
    admin_local_init(&ar->local, b, &p);
    if (cn)
        cluster_node_admin(cn, &ar->local, &p);
    ar->keys = admin_key_table_new();
    if (!ar->keys || (cfg->api_key[0] && admin_key_table_add(ar->keys, cfg->api_key) < 0)) {
        log_error("admin API: cannot set up the API keys");
        return -1;
    }
    struct admin_options opt = {
        .bind_address = cfg->admin_bind[0] ? cfg->admin_bind : cfg->bind_address,
        .port = cfg->admin_port,
        .metrics_auth = cfg->metrics_auth,
    };
    if (cfg->admin_tls) {
        /* HTTPS with the MQTT listeners' certificate and key */
        if (!cfg->tls_certfile[0] || !cfg->tls_keyfile[0]) {
            log_error("admin_tls needs tls_certfile and tls_keyfile");
            return -1;
        }
        opt.tls_certfile = cfg->tls_certfile;
        opt.tls_keyfile = cfg->tls_keyfile;
    }
    char err[512];
    if (admin_start(&opt, &p, &admin_run_keys, ar, &ar->server, err, sizeof(err)) < 0) {
        log_error("%s", err);
        return -1;
    }
    log_info("admin API listening on %s:%u (%s)%s", opt.bind_address, admin_port(ar->server),
             admin_tls(ar->server) ? "HTTPS" : "HTTP",
             cfg->api_key[0] ? "" : " (no api_key: only /api/v1/health and /metrics answer)");
    return 0;
}

/* After broker_run returned, before broker_cleanup: no request reads the
 * broker any more. */
static void admin_run_stop(struct admin_run *ar, const struct config *cfg)
{
    if (cfg->admin_port == 0)
        return;
    admin_stop(ar->server);
    admin_local_detach(&ar->local);
    admin_key_table_free(ar->keys);
    ar->server = NULL;
    ar->keys = NULL;
}

/* Parses the command line into *file and *port. Returns -1 to go on, else the
 * exit status. */
static int main_parse_args(int argc, char **argv, const char **file, const char **port)
{
    static const struct option opts[] = {
        {"config", required_argument, NULL, 'c'},
        {"port", required_argument, NULL, 'p'},
        {"version", no_argument, NULL, 'v'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    int ch;
    while ((ch = getopt_long(argc, argv, "c:p:vh", opts, NULL)) != -1) {
        switch (ch) {
        case 'c':
            *file = optarg;
            break;
        case 'p':
            *port = optarg;
            break;
        case 'v':
            printf("starling %s\n", STARLING_VERSION);
            return 0;
        case 'h':
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "starling: unexpected argument '%s'\n", argv[optind]);
        usage(stderr);
        return 2;
    }
    return -1;
}

/* Fills cfg from the defaults, the file (if any), the environment and -p, in
 * that order. Returns 0, or -1 with the reason printed. */
static int main_load_config(struct config *cfg, const char *file, const char *port)
{
    char err[512];
    config_defaults(cfg);
    if (file && config_load_file(cfg, file, err, sizeof(err)) < 0) {
        fprintf(stderr, "starling: %s\n", err);
        return -1;
    }
    if (config_load_env(cfg, environ, err, sizeof(err)) < 0) {
        fprintf(stderr, "starling: %s\n", err);
        return -1;
    }
    if (port && config_set(cfg, "port", port, err, sizeof(err)) < 0) {
        fprintf(stderr, "starling: -p: %s\n", err);
        return -1;
    }
    return 0;
}

/* Starts what cfg asks for on top of the initialised broker b: the
 * authentication files, the cluster (*cn) and the store. Returns 0, or -1
 * with the reason logged and everything started undone. */
static int main_start_parts(struct broker *b, const struct config *cfg, struct cluster_node **cn)
{
    char err[512];
    if (auth_load(&b->auth, &b->cfg, err, sizeof(err)) < 0) {
        /* a bad certificate, key, password or ACL file stops start-up */
        log_error("%s", err);
        broker_cleanup(b);
        return -1;
    }
    /* The cluster (cluster_seeds or cluster_dns): before the store loads the
     * persistent sessions, so that their routes are proposed. */
    if (config_clustered(cfg) && cluster_node_start(cn, b, err, sizeof(err)) < 0) {
        log_error("%s", err);
        server_cleanup(b);
        broker_cleanup(b);
        return -1;
    }
    /* The operator's tables: replicated on a cluster (installed by
     * cluster_node_start), kept in DATA_DIR/tables.json on a single node. */
    if (!*cn && tables_local_open(b, err, sizeof(err)) < 0) {
        log_error("%s", err);
        server_cleanup(b);
        broker_cleanup(b);
        return -1;
    }
    /* then the cluster's forwards become durable (their outbox is in the
     * store) */
    if (persist_open(b, err, sizeof(err)) < 0 ||
        cluster_node_attach_store(*cn, err, sizeof(err)) < 0) {
        log_error("%s", err);
        cluster_node_stop(*cn);
        server_cleanup(b);
        broker_cleanup(b);
        cluster_node_free(*cn);
        return -1;
    }
    return 0;
}

int main(int argc, char **argv)
{
    if (argc >= 2 && strcmp(argv[1], "ctl") == 0)
        return ctl_main(argc - 1, argv + 1);
    if (argc >= 2 && strcmp(argv[1], "passwd") == 0)
        return passwd_main(argc - 1, argv + 1);
    const char *file = NULL, *port = NULL;
    int rc = main_parse_args(argc, argv, &file, &port);
    if (rc >= 0)
        return rc;

    struct config cfg;
    if (main_load_config(&cfg, file, port) < 0)
        return 1;
    log_set_level(cfg.log_level);
    log_set_format(cfg.log_format);
    /* A client that resets its connection must cost an EPIPE, not the node. */
    signal(SIGPIPE, SIG_IGN);

    /* The node's broker: the only one in this process, but nothing below
     * knows that. */
    static struct broker broker;
    struct cluster_node *cn = NULL;
    int r = broker_init(&broker, &cfg);
    if (r == 0 && main_start_parts(&broker, &cfg, &cn) < 0)
        return 1;
#ifndef NDEBUG
    /* Tests of a registry that answers later (registry.h). */
    const char *reg = getenv("STARLING_TEST_REGISTRY");
    if (r == 0 && reg && strcmp(reg, "deferred") == 0)
        broker.registry_ops = &registry_deferred_ops;
#endif
    struct admin_run admin;
    if (r == 0 && admin_run_start(&admin, &broker, &cfg, cn) < 0) {
        admin_run_stop(&admin, &cfg);
        cluster_node_stop(cn);
        server_cleanup(&broker);
        broker_cleanup(&broker);
        cluster_node_free(cn);
        return 1;
    }
    if (r == 0) {
        r = server_run(&broker);
        /* the persistent sessions of the clients just disconnected move
         * whole to where those reconnect (bounded) */
        if (r == 0)
            cluster_node_hand_over(cn);
        admin_run_stop(&admin, &cfg);
    }
    cluster_node_stop(cn);
    server_cleanup(&broker);
    broker_cleanup(&broker);
    /* stopped to rebuild its replicated state: EX_TEMPFAIL, for the
     * supervisor to start it again */
    bool rebuild = cluster_node_rebuilding(cn);
    bool failed = cluster_node_failed(cn);
    cluster_node_free(cn);
    if (r != 0) {
        log_error("start-up failed: %s", strerror(r < 0 ? -r : r));
        return 1;
    }
    /* (74: EX_IOERR, the replicated tables could not be written) */
    return rebuild ? 75 : failed ? 74 : 0;
}
