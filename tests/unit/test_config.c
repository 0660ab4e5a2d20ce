/*
 * test_config.c - unit tests for config.c and log.c.
 */
#include <CUnit/Basic.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <jansson.h>

#include "config.h"
#include "log.h"

static char err[1024];

/* Write content to a new temporary file; the caller unlinks and frees the path. */
static char *tmpfile_with(const char *content)
{
    const char *dir = getenv("TMPDIR");
    char *path;
    if (asprintf(&path, "%s/starling_test_config_XXXXXX", dir && *dir ? dir : "/tmp") < 0)
        return NULL;
    int fd = mkstemp(path);
    if (fd < 0) {
        free(path);
        return NULL;
    }
    size_t len = strlen(content);
    if (write(fd, content, len) != (ssize_t)len) {
        close(fd);
        unlink(path);
        free(path);
        return NULL;
    }
    close(fd);
    return path;
}

/* Load content as a config file over c; on return *pathp (if given) holds the path. */
static int load_string(struct config *c, const char *content, char **pathp)
{
    char *path = tmpfile_with(content);
    CU_ASSERT_PTR_NOT_NULL_FATAL(path);
    err[0] = '\0';
    int rc = config_load_file(c, path, err, sizeof(err));
    unlink(path);
    if (pathp)
        *pathp = path;
    else
        free(path);
    return rc;
}

static void test_defaults(void)
{
    struct config c;
    memset(&c, 0xa5, sizeof(c));
    config_defaults(&c);
    CU_ASSERT_STRING_EQUAL(c.bind_address, "0.0.0.0");
    CU_ASSERT_EQUAL(c.port, 1883);
    CU_ASSERT_EQUAL(c.workers, 0);
    CU_ASSERT_EQUAL(c.log_level, LOG_LEVEL_INFO);
    CU_ASSERT_EQUAL(c.max_packet_size, 1048576);
    CU_ASSERT_EQUAL(c.max_connections, 0);
    CU_ASSERT_EQUAL(c.receive_maximum, 65535);
    CU_ASSERT_EQUAL(c.max_inflight, 20);
    CU_ASSERT_EQUAL(c.max_queued_messages, 1000000);
    CU_ASSERT_EQUAL(c.max_queued_bytes, 4194304);
    CU_ASSERT_EQUAL(c.queue_full_policy, QUEUE_DROP_NEW);
    CU_ASSERT_EQUAL(c.slow_subscriber_policy, SLOW_BACKPRESSURE);
    CU_ASSERT_EQUAL(c.max_publisher_pause_ms, 5000);
    CU_ASSERT_EQUAL(c.max_write_buffer, 262144);
    CU_ASSERT_FALSE(c.queue_qos0_offline);
    CU_ASSERT_EQUAL(c.topic_alias_maximum, 10);
    CU_ASSERT_EQUAL(c.max_keepalive, 65535);
    CU_ASSERT_EQUAL(c.max_topic_levels, 200);
    CU_ASSERT_EQUAL(c.connect_timeout, 10);
    CU_ASSERT_EQUAL(c.sys_interval, 10);
    CU_ASSERT_EQUAL(c.max_session_expiry, 0);
    CU_ASSERT_TRUE(c.retain_available);
    CU_ASSERT_EQUAL(c.max_qos, 2);
    CU_ASSERT_TRUE(c.allow_zero_length_clientid);
}

static void test_every_key_from_file(void)
{
    struct config c;
    config_defaults(&c);
    const char *content = "bind_address 127.0.0.1\n"
                          "port 1884\n"
                          "workers 3\n"
                          "log_level debug\n"
                          "max_packet_size 65536\n"
                          "max_connections 5000\n"
                          "receive_maximum 100\n"
                          "max_inflight_messages 50\n"
                          "max_queued_messages 200\n"
                          "max_queued_bytes 1099511627776\n"
                          "queue_full_policy drop_oldest\n"
                          "queue_qos0_messages true\n"
                          "topic_alias_maximum 0\n"
                          "max_keepalive 600\n"
                          "max_topic_levels 0\n"
                          "connect_timeout 30\n"
                          "sys_interval 0\n"
                          "max_session_expiry 4294967295\n"
                          "retain_available no\n"
                          "max_qos 1\n"
                          "allow_zero_length_clientid off\n";
    CU_ASSERT_EQUAL(load_string(&c, content, NULL), 0);
    CU_ASSERT_STRING_EQUAL(c.bind_address, "127.0.0.1");
    CU_ASSERT_EQUAL(c.port, 1884);
    CU_ASSERT_EQUAL(c.workers, 3);
    CU_ASSERT_EQUAL(c.log_level, LOG_LEVEL_DEBUG);
    CU_ASSERT_EQUAL(c.max_packet_size, 65536);
    CU_ASSERT_EQUAL(c.max_connections, 5000);
    CU_ASSERT_EQUAL(c.receive_maximum, 100);
    CU_ASSERT_EQUAL(c.max_inflight, 50);
    CU_ASSERT_EQUAL(c.max_queued_messages, 200);
    CU_ASSERT_EQUAL(c.max_queued_bytes, 1099511627776ULL);
    CU_ASSERT_EQUAL(c.queue_full_policy, QUEUE_DROP_OLDEST);
    CU_ASSERT_TRUE(c.queue_qos0_offline);
    CU_ASSERT_EQUAL(c.topic_alias_maximum, 0);
    CU_ASSERT_EQUAL(c.max_keepalive, 600);
    CU_ASSERT_EQUAL(c.max_topic_levels, 0);
    CU_ASSERT_EQUAL(c.connect_timeout, 30);
    CU_ASSERT_EQUAL(c.sys_interval, 0);
    CU_ASSERT_EQUAL(c.max_session_expiry, 4294967295u);
    CU_ASSERT_FALSE(c.retain_available);
    CU_ASSERT_EQUAL(c.max_qos, 1);
    CU_ASSERT_FALSE(c.allow_zero_length_clientid);
}

static void test_security_keys(void)
{
    struct config c;
    config_defaults(&c);
    CU_ASSERT_EQUAL(c.tls_port, 0);
    CU_ASSERT_EQUAL(c.ws_port, 0);
    CU_ASSERT_EQUAL(c.wss_port, 0);
    CU_ASSERT_EQUAL(c.proxy_protocol, 0);
    CU_ASSERT_EQUAL(c.tls_min_version, 12);
    CU_ASSERT_EQUAL(c.max_topic_length, 65535);
    CU_ASSERT_TRUE(config_allow_anonymous(&c));
    const char *content = "tls_port 8883\n"
                          "ws_port 8083\n"
                          "wss_port 8084\n"
                          "proxy_protocol tcp,wss\n"
                          "tls_certfile /etc/s/cert.pem\n"
                          "tls_keyfile /etc/s/key.pem\n"
                          "tls_cafile /etc/s/ca.pem\n"
                          "tls_require_certificate true\n"
                          "tls_use_identity_as_username yes\n"
                          "tls_ciphers ECDHE-ECDSA-AES128-GCM-SHA256\n"
                          "tls_min_version tlsv1.3\n"
                          "ws_origins https://a.example, https://b.example\n"
                          "password_file /etc/s/passwd\n"
                          "acl_file /etc/s/acl\n"
                          "max_connections_per_listener 10\n"
                          "max_connection_rate 5\n"
                          "max_subscriptions_per_client 7\n"
                          "max_topic_length 100\n"
                          "max_publish_rate 50\n";
    CU_ASSERT_EQUAL(load_string(&c, content, NULL), 0);
    CU_ASSERT_EQUAL(c.tls_port, 8883);
    CU_ASSERT_EQUAL(c.ws_port, 8083);
    CU_ASSERT_EQUAL(c.wss_port, 8084);
    CU_ASSERT_EQUAL(c.proxy_protocol, (1u << CONFIG_XPORT_TCP) | (1u << CONFIG_XPORT_WSS));
    CU_ASSERT_STRING_EQUAL(c.tls_certfile, "/etc/s/cert.pem");
    CU_ASSERT_STRING_EQUAL(c.tls_keyfile, "/etc/s/key.pem");
    CU_ASSERT_STRING_EQUAL(c.tls_cafile, "/etc/s/ca.pem");
    CU_ASSERT_TRUE(c.tls_require_certificate);
    CU_ASSERT_TRUE(c.tls_use_identity_as_username);
    CU_ASSERT_STRING_EQUAL(c.tls_ciphers, "ECDHE-ECDSA-AES128-GCM-SHA256");
    CU_ASSERT_EQUAL(c.tls_min_version, 13);
    CU_ASSERT_STRING_EQUAL(c.ws_origins, "https://a.example, https://b.example");
    CU_ASSERT_STRING_EQUAL(c.password_file, "/etc/s/passwd");
    CU_ASSERT_STRING_EQUAL(c.acl_file, "/etc/s/acl");
    CU_ASSERT_EQUAL(c.max_connections_per_listener, 10);
    CU_ASSERT_EQUAL(c.max_connection_rate, 5);
    CU_ASSERT_EQUAL(c.max_subscriptions_per_client, 7);
    CU_ASSERT_EQUAL(c.max_topic_length, 100);
    CU_ASSERT_EQUAL(c.max_publish_rate, 50);
    /* a password file turns anonymous access off unless said otherwise */
    CU_ASSERT_FALSE(config_allow_anonymous(&c));
    char err[256];
    CU_ASSERT_EQUAL(config_set(&c, "allow_anonymous", "true", err, sizeof(err)), 0);
    CU_ASSERT_TRUE(config_allow_anonymous(&c));
    CU_ASSERT_EQUAL(config_set(&c, "password_file", "", err, sizeof(err)), 0);
    CU_ASSERT_EQUAL(config_set(&c, "allow_anonymous", "false", err, sizeof(err)), 0);
    CU_ASSERT_FALSE(config_allow_anonymous(&c));
    CU_ASSERT_EQUAL(config_set(&c, "proxy_protocol", "none", err, sizeof(err)), 0);
    CU_ASSERT_EQUAL(c.proxy_protocol, 0);
    CU_ASSERT_EQUAL(config_set(&c, "proxy_protocol", "tcp,udp", err, sizeof(err)), -EINVAL);
    CU_ASSERT_PTR_NOT_NULL(strstr(err, "unknown listener"));
    CU_ASSERT_EQUAL(config_set(&c, "tls_min_version", "tlsv1.1", err, sizeof(err)), -EINVAL);
    CU_ASSERT_PTR_NOT_NULL(strstr(err, "tls_min_version"));
    CU_ASSERT_EQUAL(config_set(&c, "allow_anonymous", "maybe", err, sizeof(err)), -EINVAL);
    CU_ASSERT_EQUAL(config_set(&c, "tls_port", "70000", err, sizeof(err)), -EINVAL);
    CU_ASSERT_EQUAL(config_set(&c, "max_topic_length", "0", err, sizeof(err)), -EINVAL);
    CU_ASSERT_STRING_EQUAL(config_xport_name(CONFIG_XPORT_WSS), "wss");
}

static void test_set_values(void)
{
    struct config c;
    config_defaults(&c);
    CU_ASSERT_EQUAL(config_set(&c, "bind_address", "::", err, sizeof(err)), 0);
    CU_ASSERT_STRING_EQUAL(c.bind_address, "::");
    CU_ASSERT_EQUAL(config_set(&c, "bind_address", "fe80::1:2:3:4", err, sizeof(err)), 0);
    CU_ASSERT_STRING_EQUAL(c.bind_address, "fe80::1:2:3:4");
    CU_ASSERT_EQUAL(config_set(&c, "port", "65535", err, sizeof(err)), 0);
    CU_ASSERT_EQUAL(c.port, 65535);
    CU_ASSERT_EQUAL(config_set(&c, "port", "1", err, sizeof(err)), 0);
    CU_ASSERT_EQUAL(c.port, 1);
    CU_ASSERT_EQUAL(config_set(&c, "workers", "256", err, sizeof(err)), 0);
    CU_ASSERT_EQUAL(c.workers, 256);
    CU_ASSERT_EQUAL(config_set(&c, "max_packet_size", "64", err, sizeof(err)), 0);
    CU_ASSERT_EQUAL(c.max_packet_size, 64);
    CU_ASSERT_EQUAL(config_set(&c, "max_packet_size", "268435455", err, sizeof(err)), 0);
    CU_ASSERT_EQUAL(c.max_packet_size, 268435455);
    CU_ASSERT_EQUAL(config_set(&c, "max_connections", "10000000", err, sizeof(err)), 0);
    CU_ASSERT_EQUAL(c.max_connections, 10000000);
    CU_ASSERT_EQUAL(config_set(&c, "max_queued_bytes", "0", err, sizeof(err)), 0);
    CU_ASSERT_EQUAL(c.max_queued_bytes, 0);
    CU_ASSERT_EQUAL(config_set(&c, "max_qos", "0", err, sizeof(err)), 0);
    CU_ASSERT_EQUAL(c.max_qos, 0);
    CU_ASSERT_EQUAL(config_set(&c, "queue_full_policy", "drop_new", err, sizeof(err)), 0);
    CU_ASSERT_EQUAL(c.queue_full_policy, QUEUE_DROP_NEW);
    CU_ASSERT_EQUAL(config_set(&c, "slow_subscriber_policy", "Drop_Oldest", err, sizeof(err)), 0);
    CU_ASSERT_EQUAL(c.slow_subscriber_policy, SLOW_DROP_OLDEST);
    CU_ASSERT_EQUAL(config_set(&c, "slow_subscriber_policy", "disconnect", err, sizeof(err)), 0);
    CU_ASSERT_EQUAL(c.slow_subscriber_policy, SLOW_DISCONNECT);
    CU_ASSERT_EQUAL(config_set(&c, "max_publisher_pause", "0", err, sizeof(err)), 0);
    CU_ASSERT_EQUAL(c.max_publisher_pause_ms, 0);
    CU_ASSERT_EQUAL(config_set(&c, "port", "01883", err, sizeof(err)), 0);
    CU_ASSERT_EQUAL(c.port, 1883);

    const char *truthy[] = {"true", "yes", "on", "1", "TRUE", "Yes"};
    const char *falsy[] = {"false", "no", "off", "0", "False", "OFF"};
    for (size_t i = 0; i < 6; i++) {
        CU_ASSERT_EQUAL(config_set(&c, "retain_available", falsy[i], err, sizeof(err)), 0);
        CU_ASSERT_FALSE(c.retain_available);
        CU_ASSERT_EQUAL(config_set(&c, "retain_available", truthy[i], err, sizeof(err)), 0);
        CU_ASSERT_TRUE(c.retain_available);
    }
    const char *levels[] = {"error", "warn", "info", "debug"};
    for (int i = 0; i < 4; i++) {
        CU_ASSERT_EQUAL(config_set(&c, "log_level", levels[i], err, sizeof(err)), 0);
        CU_ASSERT_EQUAL(c.log_level, (enum log_level)i);
    }
}

/* Expect config_set to fail on key=value, leave c untouched, and say why. */
static void expect_bad(const char *key, const char *value, const char *reason)
{
    struct config c, before;
    config_defaults(&c);
    before = c;
    err[0] = '\0';
    int rc = config_set(&c, key, value, err, sizeof(err));
    CU_ASSERT_EQUAL(rc, -EINVAL);
    CU_ASSERT_EQUAL(memcmp(&c, &before, sizeof(c)), 0);
    char prefix[256];
    snprintf(prefix, sizeof(prefix), "bad value '%s' for key '%s': ", value, key);
    CU_ASSERT_EQUAL(strncmp(err, prefix, strlen(prefix)), 0);
    CU_ASSERT_PTR_NOT_NULL(strstr(err, "(expected "));
    if (reason)
        CU_ASSERT_PTR_NOT_NULL(strstr(err, reason));
    if (rc != -EINVAL || strncmp(err, prefix, strlen(prefix)) != 0)
        fprintf(stderr, "\n  %s=%s: rc %d, err '%s'\n", key, value, rc, err);
}

static void test_bad_integers(void)
{
    expect_bad("port", "0", "out of range");
    expect_bad("port", "65536", "out of range");
    expect_bad("port", "", "empty value");
    expect_bad("port", "18x3", "not a decimal integer");
    expect_bad("port", "1883 ", "not a decimal integer");
    expect_bad("port", " 1883", "not a decimal integer");
    expect_bad("port", "+1883", "not a decimal integer");
    expect_bad("port", "-1", "not a decimal integer");
    expect_bad("port", "0x10", "not a decimal integer");
    expect_bad("port", "1e3", "not a decimal integer");
    expect_bad("port", "99999999999999999999999", "out of range");
    expect_bad("port", "tcp://10.0.0.1:1883", "not a decimal integer");
    expect_bad("workers", "257", "out of range");
    expect_bad("workers", "-1", "not a decimal integer");
    expect_bad("max_packet_size", "63", "out of range");
    expect_bad("max_packet_size", "268435456", "out of range");
    expect_bad("max_connections", "10000001", "out of range");
    expect_bad("receive_maximum", "0", "out of range");
    expect_bad("receive_maximum", "65536", "out of range");
    expect_bad("max_inflight_messages", "0", "out of range");
    expect_bad("max_inflight_messages", "65536", "out of range");
    expect_bad("max_queued_messages", "10000001", "out of range");
    expect_bad("max_queued_bytes", "1099511627777", "out of range");
    expect_bad("max_queued_bytes", "64M", "not a decimal integer");
    expect_bad("slow_subscriber_policy", "sometimes", "not a slow subscriber policy");
    expect_bad("max_publisher_pause", "3600001", "out of range");
    expect_bad("max_write_buffer", "4095", "out of range");
    expect_bad("topic_alias_maximum", "65536", "out of range");
    expect_bad("max_keepalive", "0", "out of range");
    expect_bad("max_keepalive", "65536", "out of range");
    expect_bad("max_topic_levels", "65536", "out of range");
    expect_bad("max_topic_levels", "-1", NULL);
    expect_bad("connect_timeout", "0", "out of range");
    expect_bad("connect_timeout", "3601", "out of range");
    expect_bad("sys_interval", "86401", "out of range");
    expect_bad("max_session_expiry", "4294967296", "out of range");
    expect_bad("max_session_expiry", "18446744073709551616", "out of range");
    expect_bad("max_qos", "3", "out of range");
    expect_bad("max_qos", "1.0", "not a decimal integer");

    /* The error states the accepted range. */
    struct config c;
    config_defaults(&c);
    CU_ASSERT_EQUAL(config_set(&c, "port", "0", err, sizeof(err)), -EINVAL);
    CU_ASSERT_STRING_EQUAL(err,
                           "bad value '0' for key 'port': out of range (expected an integer in "
                           "1..65535)");
}

static void test_bad_words(void)
{
    expect_bad("bind_address", "", "empty value");
    expect_bad("bind_address", "localhost", "not an IP address");
    expect_bad("bind_address", "1.2.3", "not an IP address");
    expect_bad("bind_address", "256.0.0.1", "not an IP address");
    expect_bad("bind_address", "0.0.0.0 ", "not an IP address");
    expect_bad("bind_address", "1234:1234:1234:1234:1234:1234:1234:1234:1234:1234:1234:1234:1234",
               "too long");
    expect_bad("log_level", "verbose", "not a log level");
    expect_bad("log_level", "", "empty value");
    expect_bad("log_level", "warning", "error|warn|info|debug");
    expect_bad("queue_full_policy", "drop", "drop_new|drop_oldest");
    expect_bad("queue_full_policy", "", "empty value");
    expect_bad("queue_qos0_messages", "maybe", "not a boolean");
    expect_bad("retain_available", "2", "true|false|yes|no|on|off|1|0");
    expect_bad("allow_zero_length_clientid", "", "empty value");
}

static void test_unknown_key(void)
{
    struct config c;
    config_defaults(&c);
    CU_ASSERT_EQUAL(config_set(&c, "prot", "1883", err, sizeof(err)), -EINVAL);
    CU_ASSERT_STRING_EQUAL(err, "unknown key 'prot'");
    /* Keys are case sensitive in files. */
    CU_ASSERT_EQUAL(config_set(&c, "PORT", "1883", err, sizeof(err)), -EINVAL);
    CU_ASSERT_STRING_EQUAL(err, "unknown key 'PORT'");
    /* A NULL or empty error buffer is allowed. */
    CU_ASSERT_EQUAL(config_set(&c, "prot", "1883", NULL, 0), -EINVAL);
    CU_ASSERT_EQUAL(config_set(&c, "port", "x", err, 0), -EINVAL);
}

static void test_file_errors(void)
{
    struct config c, before;
    config_defaults(&c);
    before = c;
    char *path, want[1200];

    /* Unknown key: exact "FILE:LINE:" prefix; nothing applied. */
    CU_ASSERT_EQUAL(load_string(&c, "port 1884\n# comment\n\nfoo bar\n", &path), -EINVAL);
    snprintf(want, sizeof(want), "%s:4: unknown key 'foo'", path);
    CU_ASSERT_STRING_EQUAL(err, want);
    CU_ASSERT_EQUAL(memcmp(&c, &before, sizeof(c)), 0);
    free(path);

    /* Bad value. */
    CU_ASSERT_EQUAL(load_string(&c, "max_qos 1\n  port   70000  \n", &path), -EINVAL);
    snprintf(want, sizeof(want),
             "%s:2: bad value '70000' for key 'port': out of range (expected an integer in "
             "1..65535)",
             path);
    CU_ASSERT_STRING_EQUAL(err, want);
    CU_ASSERT_EQUAL(memcmp(&c, &before, sizeof(c)), 0);
    free(path);

    /* A key with no value. */
    CU_ASSERT_EQUAL(load_string(&c, "port\n", &path), -EINVAL);
    snprintf(want, sizeof(want), "%s:1: missing value for key 'port'", path);
    CU_ASSERT_EQUAL(strncmp(err, want, strlen(want)), 0);
    free(path);
    CU_ASSERT_EQUAL(load_string(&c, "\n\nmax_qos   \t \n", &path), -EINVAL);
    snprintf(want, sizeof(want), "%s:3: missing value for key 'max_qos'", path);
    CU_ASSERT_EQUAL(strncmp(err, want, strlen(want)), 0);
    free(path);

    /* No inline comments: the value is the rest of the line. */
    CU_ASSERT_EQUAL(load_string(&c, "port 1884 # the port\n", &path), -EINVAL);
    snprintf(want, sizeof(want), "%s:1: bad value '1884 # the port' for key 'port'", path);
    CU_ASSERT_EQUAL(strncmp(err, want, strlen(want)), 0);
    free(path);

    /* Unknown key with no value is reported as unknown. */
    CU_ASSERT_EQUAL(load_string(&c, "bogus\n", &path), -EINVAL);
    snprintf(want, sizeof(want), "%s:1: unknown key 'bogus'", path);
    CU_ASSERT_STRING_EQUAL(err, want);
    free(path);
    CU_ASSERT_EQUAL(memcmp(&c, &before, sizeof(c)), 0);
}

static void test_file_comments_blank(void)
{
    struct config c;
    config_defaults(&c);
    const char *content = "# Starling config\n"
                          "\n"
                          "   \t\n"
                          "   # indented comment\n"
                          "#port 1\n"
                          "\tport\t 1885 \t\r\n"
                          "log_level warn\r\n"
                          "port 1886\n"       /* later line wins */
                          "bind_address ::1"; /* no final newline */
    CU_ASSERT_EQUAL(load_string(&c, content, NULL), 0);
    CU_ASSERT_EQUAL(c.port, 1886);
    CU_ASSERT_EQUAL(c.log_level, LOG_LEVEL_WARN);
    CU_ASSERT_STRING_EQUAL(c.bind_address, "::1");

    /* Empty file: nothing changes. */
    struct config before = c;
    CU_ASSERT_EQUAL(load_string(&c, "", NULL), 0);
    CU_ASSERT_EQUAL(memcmp(&c, &before, sizeof(c)), 0);
}

static void test_file_not_found(void)
{
    struct config c, before;
    config_defaults(&c);
    before = c;
    const char *path = "/nonexistent/starling/starling.conf";
    CU_ASSERT_EQUAL(config_load_file(&c, path, err, sizeof(err)), -ENOENT);
    char want[256];
    snprintf(want, sizeof(want), "%s: %s", path, strerror(ENOENT));
    CU_ASSERT_STRING_EQUAL(err, want);
    CU_ASSERT_EQUAL(memcmp(&c, &before, sizeof(c)), 0);

    /* A directory opens but cannot be read. */
    int rc = config_load_file(&c, "/", err, sizeof(err));
    CU_ASSERT_EQUAL(rc, -EISDIR);
    snprintf(want, sizeof(want), "/: %s", strerror(EISDIR));
    CU_ASSERT_STRING_EQUAL(err, want);
}

static void test_env(void)
{
    struct config c;
    config_defaults(&c);
    char *env[] = {"PATH=/usr/bin",
                   "STARLING_PORT=1999",
                   "STARLING_MAX_PACKET_SIZE=4096",
                   "STARLING_LOG_LEVEL=error",
                   "STARLING_Queue_Full_Policy=drop_oldest",
                   "STARLING_TEST_BIN=/x/starling",
                   "STARLING_TEST_WORKERS=2",
                   "STARLINGPORT=3",
                   "starling_port=4",
                   "STARLING_BIND_ADDRESS=::",
                   "STARLING_MAX_TOPIC_LEVELS=32",
                   NULL};
    CU_ASSERT_EQUAL(config_load_env(&c, env, err, sizeof(err)), 0);
    CU_ASSERT_EQUAL(c.port, 1999);
    CU_ASSERT_EQUAL(c.max_packet_size, 4096);
    CU_ASSERT_EQUAL(c.log_level, LOG_LEVEL_ERROR);
    CU_ASSERT_EQUAL(c.queue_full_policy, QUEUE_DROP_OLDEST);
    CU_ASSERT_STRING_EQUAL(c.bind_address, "::");
    CU_ASSERT_EQUAL(c.max_topic_levels, 32);
    CU_ASSERT_EQUAL(c.workers, 0);

    /* Environment overrides the file. */
    config_defaults(&c);
    CU_ASSERT_EQUAL(load_string(&c, "port 1884\nmax_qos 1\n", NULL), 0);
    char *env2[] = {"STARLING_PORT=1885", NULL};
    CU_ASSERT_EQUAL(config_load_env(&c, env2, err, sizeof(err)), 0);
    CU_ASSERT_EQUAL(c.port, 1885);
    CU_ASSERT_EQUAL(c.max_qos, 1);

    /* Empty environment. */
    char *env3[] = {NULL};
    CU_ASSERT_EQUAL(config_load_env(&c, env3, err, sizeof(err)), 0);
    CU_ASSERT_EQUAL(config_load_env(&c, NULL, err, sizeof(err)), 0);
}

static void test_env_errors(void)
{
    struct config c, before;
    config_defaults(&c);
    before = c;

    char *unknown[] = {"STARLING_PORT=1999", "STARLING_FOO=1", NULL};
    CU_ASSERT_EQUAL(config_load_env(&c, unknown, err, sizeof(err)), -EINVAL);
    CU_ASSERT_STRING_EQUAL(err, "STARLING_FOO: unknown key 'foo'");
    CU_ASSERT_EQUAL(memcmp(&c, &before, sizeof(c)), 0);

    char *bad[] = {"STARLING_MAX_QOS=5", NULL};
    CU_ASSERT_EQUAL(config_load_env(&c, bad, err, sizeof(err)), -EINVAL);
    CU_ASSERT_STRING_EQUAL(err, "STARLING_MAX_QOS: bad value '5' for key 'max_qos': out of range "
                                "(expected an integer in 0..2)");

    char *empty[] = {"STARLING_PORT=", NULL};
    CU_ASSERT_EQUAL(config_load_env(&c, empty, err, sizeof(err)), -EINVAL);
    CU_ASSERT_EQUAL(strncmp(err, "STARLING_PORT: bad value '' for key 'port': empty value", 55), 0);

    /* What Kubernetes injects for a Service named "starling". */
    char *k8s[] = {"STARLING_PORT=tcp://10.96.0.12:1883", NULL};
    CU_ASSERT_EQUAL(config_load_env(&c, k8s, err, sizeof(err)), -EINVAL);
    const char *want = "STARLING_PORT: bad value 'tcp://10.96.0.12:1883' for key 'port': ";
    CU_ASSERT_EQUAL(strncmp(err, want, strlen(want)), 0);
    CU_ASSERT_PTR_NOT_NULL(strstr(err, "enableServiceLinks: false"));
    char *k8s2[] = {"STARLING_SERVICE_HOST=10.96.0.12", NULL};
    CU_ASSERT_EQUAL(config_load_env(&c, k8s2, err, sizeof(err)), -EINVAL);
    want = "STARLING_SERVICE_HOST: unknown key 'service_host'";
    CU_ASSERT_EQUAL(strncmp(err, want, strlen(want)), 0);
    CU_ASSERT_PTR_NOT_NULL(strstr(err, "enableServiceLinks: false"));
    CU_ASSERT_EQUAL(memcmp(&c, &before, sizeof(c)), 0);

    /* A very long variable name is still reported as unknown. */
    char longvar[400];
    memset(longvar, 'A', sizeof(longvar));
    memcpy(longvar, "STARLING_", 9);
    strcpy(longvar + 390, "=1");
    char *longenv[] = {longvar, NULL};
    CU_ASSERT_EQUAL(config_load_env(&c, longenv, err, sizeof(err)), -EINVAL);
    CU_ASSERT_PTR_NOT_NULL(strstr(err, "unknown key"));
}

/* admin_port, admin_bind, api_key, metrics_auth: the admin HTTP API. */
static void test_admin_keys(void)
{
    struct config c;
    config_defaults(&c);
    CU_ASSERT_EQUAL(c.admin_port, 18083);
    CU_ASSERT_STRING_EQUAL(c.admin_bind, "");
    CU_ASSERT_STRING_EQUAL(c.api_key, "");
    CU_ASSERT_FALSE(c.metrics_auth);

    CU_ASSERT_EQUAL(load_string(&c,
                                "bind_address 0.0.0.0\nadmin_port 0\nadmin_bind ::1\n"
                                "api_key ops-1.a_b:s3cr3t:with:colons\nmetrics_auth yes\n",
                                NULL),
                    0);
    CU_ASSERT_EQUAL(c.admin_port, 0);
    CU_ASSERT_STRING_EQUAL(c.admin_bind, "::1");
    CU_ASSERT_STRING_EQUAL(c.bind_address, "0.0.0.0"); /* admin_bind is its own field */
    CU_ASSERT_STRING_EQUAL(c.api_key, "ops-1.a_b:s3cr3t:with:colons");
    CU_ASSERT_TRUE(c.metrics_auth);

    char *env[] = {"STARLING_ADMIN_PORT=28083", "STARLING_API_KEY=k:0123456789", NULL};
    CU_ASSERT_EQUAL(config_load_env(&c, env, err, sizeof(err)), 0);
    CU_ASSERT_EQUAL(c.admin_port, 28083);
    CU_ASSERT_STRING_EQUAL(c.api_key, "k:0123456789");

    /* Errors name the line and the rule, but never quote the secret. */
    config_defaults(&c);
    struct config before = c;
    static const struct {
        const char *line, *why;
    } bad[] = {
        {"api_key nocolonsecret\n", "no ':' between the key and the secret"},
        {"api_key :secretsecret\n", "the key must have 1 to 64 characters"},
        {"api_key bad key:secretsecret\n", "the key may hold only letters"},
        {"api_key k/1:secretsecret\n", "the key may hold only letters"},
        {"api_key k:short\n", "the secret must have 8 to 128 characters"},
        {"api_key k:secret\twith-tab\n", "printable ASCII characters without blanks"},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        char *path;
        CU_ASSERT_EQUAL(load_string(&c, bad[i].line, &path), -EINVAL);
        char want[512];
        snprintf(want, sizeof(want), "%s:1: bad value for key 'api_key': ", path);
        CU_ASSERT_EQUAL(strncmp(err, want, strlen(want)), 0);
        CU_ASSERT_PTR_NOT_NULL(strstr(err, bad[i].why));
        CU_ASSERT_PTR_NULL(strstr(err, "secret\twith"));
        CU_ASSERT_PTR_NULL(strstr(err, "secretsecret"));
        free(path);
    }
    char longkey[300];
    memset(longkey, 'k', sizeof(longkey));
    memcpy(longkey + 65, ":secretsecret", 14);
    CU_ASSERT_EQUAL(config_set(&c, "api_key", longkey, err, sizeof(err)), -EINVAL);
    memset(longkey, 's', sizeof(longkey) - 1);
    longkey[sizeof(longkey) - 1] = '\0';
    longkey[1] = ':'; /* a secret of 298 characters */
    CU_ASSERT_EQUAL(config_set(&c, "api_key", longkey, err, sizeof(err)), -EINVAL);
    CU_ASSERT_EQUAL(config_set(&c, "admin_port", "65536", err, sizeof(err)), -EINVAL);
    CU_ASSERT_EQUAL(config_set(&c, "admin_bind", "localhost", err, sizeof(err)), -EINVAL);
    CU_ASSERT_STRING_EQUAL(err, "bad value 'localhost' for key 'admin_bind': not an IP address "
                                "(expected an IPv4 or IPv6 address literal such as 0.0.0.0 or ::)");
    CU_ASSERT_EQUAL(config_set(&c, "metrics_auth", "maybe", err, sizeof(err)), -EINVAL);
    CU_ASSERT_EQUAL(memcmp(&c, &before, sizeof(c)), 0);

    char *envbad[] = {"STARLING_API_KEY=k:tiny", NULL};
    CU_ASSERT_EQUAL(config_load_env(&c, envbad, err, sizeof(err)), -EINVAL);
    CU_ASSERT_STRING_EQUAL(err, "STARLING_API_KEY: bad value for key 'api_key': the secret must "
                                "have 8 to 128 characters (expected KEY:SECRET)");
}

/* The cluster keys: defaults, values, errors, seeds, the derived values. */
static void test_cluster_keys(void)
{
    struct config c;
    config_defaults(&c);
    CU_ASSERT_STRING_EQUAL(c.node_name, "");
    CU_ASSERT_STRING_EQUAL(c.cluster_address, "");
    CU_ASSERT_EQUAL(c.cluster_port, 4370);
    CU_ASSERT_EQUAL(c.raft_port, 4371);
    CU_ASSERT_STRING_EQUAL(c.cluster_seeds, "");
    CU_ASSERT_STRING_EQUAL(c.cluster_dns, "");
    CU_ASSERT_STRING_EQUAL(c.cluster_name, "starling");
    CU_ASSERT_STRING_EQUAL(c.cluster_secret, "");
    CU_ASSERT_EQUAL(c.cluster_claim_timeout, 5000);
    CU_ASSERT_EQUAL(c.cluster_down_after, 5000);
    CU_ASSERT_EQUAL(c.cluster_resend_wait, 60000);
    CU_ASSERT_EQUAL(c.cluster_outbox_messages, 1000000);
    CU_ASSERT_EQUAL(c.cluster_outbox_bytes, 256ull << 20);
    CU_ASSERT_FALSE(config_clustered(&c));

    CU_ASSERT_EQUAL(load_string(&c,
                                "node_name n1\ncluster_address 127.0.0.11\ncluster_port 5370\n"
                                "raft_port 5371\n"
                                "cluster_seeds 127.0.0.11, 127.0.0.12:6000 ,seed-3.example\n"
                                "cluster_name prod\ncluster_secret s3cr3t\n"
                                "cluster_claim_timeout 250\ncluster_down_after 3000\n"
                                "cluster_resend_wait 0\n"
                                "cluster_outbox_messages 5000\ncluster_outbox_bytes 1048576\n",
                                NULL),
                    0);
    CU_ASSERT_EQUAL(c.cluster_outbox_messages, 5000);
    CU_ASSERT_EQUAL(c.cluster_outbox_bytes, 1048576);
    /* below their minimum: refused */
    struct config bad;
    config_defaults(&bad);
    CU_ASSERT(load_string(&bad, "cluster_outbox_messages 15\n", NULL) < 0);
    CU_ASSERT(load_string(&bad, "cluster_outbox_bytes 65535\n", NULL) < 0);
    /* above its maximum: refused */
    CU_ASSERT(load_string(&bad, "cluster_resend_wait 600001\n", NULL) < 0);
    CU_ASSERT_STRING_EQUAL(c.node_name, "n1");
    CU_ASSERT_STRING_EQUAL(c.cluster_address, "127.0.0.11");
    CU_ASSERT_EQUAL(c.cluster_port, 5370);
    CU_ASSERT_EQUAL(c.raft_port, 5371);
    CU_ASSERT_STRING_EQUAL(c.cluster_name, "prod");
    CU_ASSERT_STRING_EQUAL(c.cluster_secret, "s3cr3t");
    CU_ASSERT_EQUAL(c.cluster_claim_timeout, 250);
    CU_ASSERT_EQUAL(c.cluster_down_after, 3000);
    CU_ASSERT_EQUAL(c.cluster_resend_wait, 0);
    CU_ASSERT_TRUE(config_clustered(&c));
    char seeds[4][256];
    CU_ASSERT_EQUAL(config_seeds_split(&c, seeds, 4, err, sizeof(err)), 3);
    CU_ASSERT_STRING_EQUAL(seeds[0], "127.0.0.11:5371");
    CU_ASSERT_STRING_EQUAL(seeds[1], "127.0.0.12:6000");
    CU_ASSERT_STRING_EQUAL(seeds[2], "seed-3.example:5371");
    CU_ASSERT_EQUAL(config_cluster_resolve(&c, err, sizeof(err)), 0);
    CU_ASSERT_STRING_EQUAL(c.cluster_address, "127.0.0.11");

    char *env[] = {"STARLING_CLUSTER_DNS=starling-headless.ns.svc", "STARLING_RAFT_PORT=7000",
                   NULL};
    CU_ASSERT_EQUAL(config_load_env(&c, env, err, sizeof(err)), 0);
    CU_ASSERT_STRING_EQUAL(c.cluster_dns, "starling-headless.ns.svc");
    CU_ASSERT_EQUAL(c.raft_port, 7000);

    /* Defaults derived when clustering: the host name, bind_address. */
    config_defaults(&c);
    CU_ASSERT_EQUAL(config_set(&c, "cluster_seeds", "10.0.0.1", err, sizeof(err)), 0);
    CU_ASSERT_EQUAL(config_cluster_resolve(&c, err, sizeof(err)), -EINVAL);
    CU_ASSERT_PTR_NOT_NULL(strstr(err, "cluster_address is required"));
    CU_ASSERT_EQUAL(config_set(&c, "bind_address", "10.0.0.7", err, sizeof(err)), 0);
    CU_ASSERT_EQUAL(config_cluster_resolve(&c, err, sizeof(err)), 0);
    CU_ASSERT_STRING_EQUAL(c.cluster_address, "10.0.0.7");
    CU_ASSERT_NOT_EQUAL(c.node_name[0], '\0');
    CU_ASSERT_EQUAL(config_set(&c, "raft_port", "4370", err, sizeof(err)), 0);
    CU_ASSERT_EQUAL(config_cluster_resolve(&c, err, sizeof(err)), -EINVAL);
    CU_ASSERT_STRING_EQUAL(err, "cluster_port and raft_port must differ (both are 4370)");

    /* Bad values: clear reasons, nothing changed. */
    config_defaults(&c);
    struct config before = c;
    CU_ASSERT_EQUAL(config_set(&c, "cluster_address", "::1", err, sizeof(err)), -EINVAL);
    CU_ASSERT_STRING_EQUAL(err, "bad value '::1' for key 'cluster_address': not an IPv4 address "
                                "(expected an IPv4 address literal such as 10.0.0.5)");
    CU_ASSERT_EQUAL(config_set(&c, "cluster_seeds", "a,,b", err, sizeof(err)), -EINVAL);
    CU_ASSERT_PTR_NOT_NULL(strstr(err, "an empty item"));
    CU_ASSERT_EQUAL(config_set(&c, "cluster_seeds", "a,", err, sizeof(err)), -EINVAL);
    CU_ASSERT_EQUAL(config_set(&c, "cluster_seeds", "a:0", err, sizeof(err)), -EINVAL);
    CU_ASSERT_PTR_NOT_NULL(strstr(err, "a bad port"));
    CU_ASSERT_EQUAL(config_set(&c, "cluster_seeds", "a:70000", err, sizeof(err)), -EINVAL);
    CU_ASSERT_EQUAL(config_set(&c, "cluster_seeds", "a b", err, sizeof(err)), -EINVAL);
    CU_ASSERT_PTR_NOT_NULL(strstr(err, "a bad host name"));
    CU_ASSERT_EQUAL(config_set(&c, "cluster_dns", "bad/name", err, sizeof(err)), -EINVAL);
    CU_ASSERT_EQUAL(config_set(&c, "node_name", "two words", err, sizeof(err)), -EINVAL);
    CU_ASSERT_EQUAL(config_set(&c, "node_name", "", err, sizeof(err)), -EINVAL);
    CU_ASSERT_EQUAL(config_set(&c, "cluster_secret", "has space", err, sizeof(err)), -EINVAL);
    CU_ASSERT_PTR_NULL(strstr(err, "has space"));
    CU_ASSERT_EQUAL(config_set(&c, "cluster_port", "0", err, sizeof(err)), -EINVAL);
    CU_ASSERT_EQUAL(config_set(&c, "cluster_claim_timeout", "10", err, sizeof(err)), -EINVAL);
    CU_ASSERT_EQUAL(memcmp(&c, &before, sizeof(c)), 0);
}

static void test_worker_count(void)
{
    struct config c;
    config_defaults(&c);
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    int n = config_worker_count(&c);
    CU_ASSERT(n >= 1);
    if (cpus >= 1 && cpus <= 256)
        CU_ASSERT_EQUAL(n, cpus);
    c.workers = 7;
    CU_ASSERT_EQUAL(config_worker_count(&c), 7);
}

static void test_log_level(void)
{
    enum log_level l;
    CU_ASSERT_EQUAL(log_level_parse("error", &l), 0);
    CU_ASSERT_EQUAL(l, LOG_LEVEL_ERROR);
    CU_ASSERT_EQUAL(log_level_parse("warn", &l), 0);
    CU_ASSERT_EQUAL(l, LOG_LEVEL_WARN);
    CU_ASSERT_EQUAL(log_level_parse("info", &l), 0);
    CU_ASSERT_EQUAL(l, LOG_LEVEL_INFO);
    CU_ASSERT_EQUAL(log_level_parse("debug", &l), 0);
    CU_ASSERT_EQUAL(l, LOG_LEVEL_DEBUG);
    CU_ASSERT_EQUAL(log_level_parse("trace", &l), -EINVAL);
    CU_ASSERT_EQUAL(log_level_parse("", &l), -EINVAL);

    enum log_level old = log_get_level();
    log_set_level(LOG_LEVEL_DEBUG);
    CU_ASSERT_EQUAL(log_get_level(), LOG_LEVEL_DEBUG);
    log_set_level(old);
}

/* Run fn with stderr redirected to a temporary file; return what it wrote. */
static char *capture_stderr(void (*fn)(void))
{
    char *path = tmpfile_with("");
    if (!path)
        return NULL;
    fflush(stderr);
    int saved = dup(STDERR_FILENO);
    int fd = open(path, O_WRONLY | O_TRUNC | O_APPEND);
    dup2(fd, STDERR_FILENO);
    close(fd);
    fn();
    dup2(saved, STDERR_FILENO);
    close(saved);
    FILE *f = fopen(path, "r");
    unlink(path);
    free(path);
    if (!f)
        return NULL;
    static char out[1 << 20];
    size_t n = fread(out, 1, sizeof(out) - 1, f);
    out[n] = '\0';
    fclose(f);
    return out;
}

static void emit_levels(void)
{
    log_set_level(LOG_LEVEL_WARN);
    log_error("an error %d", 42);
    log_warn("a warning\n");
    log_info("not shown");
    log_debug("not shown either");
    log_set_level(LOG_LEVEL_INFO);
}

static void emit_long(void)
{
    static char big[10000];
    memset(big, 'x', sizeof(big) - 1);
    log_error("%s", big);
}

static bool is_timestamp(const char *s)
{
    /* 2026-11-27T09:30:00.123Z */
    const char *pat = "dddd-dd-ddTdd:dd:dd.dddZ";
    for (size_t i = 0; pat[i]; i++) {
        if (pat[i] == 'd' ? (s[i] < '0' || s[i] > '9') : s[i] != pat[i])
            return false;
    }
    return true;
}

static void test_log_output(void)
{
    char *out = capture_stderr(emit_levels);
    CU_ASSERT_PTR_NOT_NULL_FATAL(out);
    char *nl = strchr(out, '\n');
    CU_ASSERT_PTR_NOT_NULL_FATAL(nl);
    CU_ASSERT_TRUE(is_timestamp(out));
    CU_ASSERT_EQUAL(strncmp(out + 24, " ERROR an error 42\n", 19), 0);
    char *second = nl + 1;
    CU_ASSERT_TRUE(is_timestamp(second));
    CU_ASSERT_STRING_EQUAL(second + 24, " WARN a warning\n");
    CU_ASSERT_PTR_NULL(strstr(out, "not shown"));

    out = capture_stderr(emit_long);
    CU_ASSERT_PTR_NOT_NULL_FATAL(out);
    size_t len = strlen(out);
    CU_ASSERT(len > 1000 && len <= 4096);
    CU_ASSERT_EQUAL(strchr(out, '\n'), out + len - 1);
    CU_ASSERT(len >= 4 && strcmp(out + len - 4, "...\n") == 0);
}

static void emit_json(void)
{
    log_set_format(LOG_FORMAT_JSON);
    log_warn("a \"quoted\" \\ message\twith a tab");
    /* a client id is bytes: 0xff is no UTF-8, a newline must not split the line */
    log_event(LOG_LEVEL_INFO, "connect", "id\xff\nx", 5, "127.0.0.1:1234", NULL, "MQTT %s", "5.0");
    log_event(LOG_LEVEL_INFO, "disconnect", "caf\xc3\xa9", 5, "[::1]:99", "keep alive timeout",
              "%s", "");
    static char big[10000];
    memset(big, '"', sizeof(big) - 1); /* each one escaped: twice as long */
    log_error("%s", big);
    log_debug("not shown");
    log_set_format(LOG_FORMAT_TEXT);
}

static void emit_event_text(void)
{
    log_event(LOG_LEVEL_INFO, "auth_failure", "c1", 2, "10.0.0.1:5", "not authorized", "%s",
              "CONNECT refused");
    log_event(LOG_LEVEL_DEBUG, "connect", "c2", 2, "10.0.0.1:6", NULL, "not shown");
}

static void test_log_json(void)
{
    enum log_format f;
    CU_ASSERT_EQUAL(log_format_parse("json", &f), 0);
    CU_ASSERT_EQUAL(f, LOG_FORMAT_JSON);
    CU_ASSERT_EQUAL(log_format_parse("TEXT", &f), 0);
    CU_ASSERT_EQUAL(f, LOG_FORMAT_TEXT);
    CU_ASSERT_EQUAL(log_format_parse("xml", &f), -EINVAL);
    struct config c;
    config_defaults(&c);
    CU_ASSERT_EQUAL(c.log_format, LOG_FORMAT_TEXT);
    CU_ASSERT_EQUAL(config_set(&c, "log_format", "json", err, sizeof(err)), 0);
    CU_ASSERT_EQUAL(c.log_format, LOG_FORMAT_JSON);
    CU_ASSERT_EQUAL(config_set(&c, "log_format", "yaml", err, sizeof(err)), -EINVAL);
    CU_ASSERT_PTR_NOT_NULL(strstr(err, "text|json"));

    log_set_level(LOG_LEVEL_INFO);
    char *out = capture_stderr(emit_json);
    CU_ASSERT_PTR_NOT_NULL_FATAL(out);
    json_t *doc[4] = {NULL};
    int n = 0;
    for (char *line = out, *nl; (nl = strchr(line, '\n')); line = nl + 1) {
        *nl = '\0';
        CU_ASSERT(strlen(line) < 4096);
        if (n < 4)
            doc[n] = json_loads(line, 0, NULL);
        CU_ASSERT_PTR_NOT_NULL(doc[n < 4 ? n : 3]);
        n++;
    }
    CU_ASSERT_EQUAL_FATAL(n, 4);
    for (int i = 0; i < 4; i++)
        CU_ASSERT_PTR_NOT_NULL_FATAL(doc[i]);
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(doc[0], "level")), "warn");
    CU_ASSERT_TRUE(is_timestamp(json_string_value(json_object_get(doc[0], "time"))));
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(doc[0], "msg")),
                           "a \"quoted\" \\ message\twith a tab");
    CU_ASSERT_PTR_NULL(json_object_get(doc[0], "event"));

    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(doc[1], "event")), "connect");
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(doc[1], "client_id")), "id??x");
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(doc[1], "address")), "127.0.0.1:1234");
    CU_ASSERT_PTR_NULL(json_object_get(doc[1], "reason"));
    CU_ASSERT_PTR_NOT_NULL(strstr(json_string_value(json_object_get(doc[1], "msg")), "MQTT 5.0"));

    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(doc[2], "client_id")), "caf\xc3\xa9");
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(doc[2], "reason")),
                           "keep alive timeout");
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(doc[2], "msg")),
                           "[::1]:99: disconnect client 'caf\xc3\xa9' (keep alive timeout)");

    /* too long for one line: the message is shortened, the line stays JSON */
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(doc[3], "level")), "error");
    CU_ASSERT(json_string_length(json_object_get(doc[3], "msg")) < 4000);
    for (int i = 0; i < 4; i++)
        json_decref(doc[i]);

    out = capture_stderr(emit_event_text);
    CU_ASSERT_PTR_NOT_NULL_FATAL(out);
    CU_ASSERT_TRUE(is_timestamp(out));
    CU_ASSERT_STRING_EQUAL(out + 24, " INFO 10.0.0.1:5: auth_failure client 'c1' (not authorized): "
                                     "CONNECT refused\n");
}

#define LOG_THREADS 8
#define LOG_LINES 200

static void *log_thread(void *arg)
{
    long id = (long)arg;
    for (int i = 0; i < LOG_LINES; i++)
        log_info("thread %ld line %d %s", id, i, "padding padding padding padding padding");
    return NULL;
}

static void emit_threads(void)
{
    pthread_t t[LOG_THREADS];
    for (long i = 0; i < LOG_THREADS; i++)
        pthread_create(&t[i], NULL, log_thread, (void *)i);
    for (int i = 0; i < LOG_THREADS; i++)
        pthread_join(t[i], NULL);
}

static void test_log_threads(void)
{
    log_set_level(LOG_LEVEL_INFO);
    char *out = capture_stderr(emit_threads);
    CU_ASSERT_PTR_NOT_NULL_FATAL(out);
    int lines = 0, good = 0;
    for (char *line = out, *nl; (nl = strchr(line, '\n')); line = nl + 1) {
        *nl = '\0';
        long id;
        int i, used = 0;
        lines++;
        if (is_timestamp(line) &&
            sscanf(line + 24, " INFO thread %ld line %d %n", &id, &i, &used) == 2 &&
            strcmp(line + 24 + used, "padding padding padding padding padding") == 0)
            good++;
    }
    CU_ASSERT_EQUAL(lines, LOG_THREADS * LOG_LINES);
    CU_ASSERT_EQUAL(good, LOG_THREADS * LOG_LINES);
}

int main(void)
{
    if (CU_initialize_registry() != CUE_SUCCESS)
        return 2;
    CU_pSuite s = CU_add_suite("config", NULL, NULL);
    if (!s) {
        CU_cleanup_registry();
        return 2;
    }
    struct {
        const char *name;
        CU_TestFunc fn;
    } tests[] = {
        {"defaults", test_defaults},
        {"every key from a file", test_every_key_from_file},
        {"security and limit keys", test_security_keys},
        {"config_set good values", test_set_values},
        {"bad integers", test_bad_integers},
        {"bad words", test_bad_words},
        {"unknown key", test_unknown_key},
        {"file errors", test_file_errors},
        {"comments and blank lines", test_file_comments_blank},
        {"file not found", test_file_not_found},
        {"environment", test_env},
        {"environment errors", test_env_errors},
        {"admin API keys", test_admin_keys},
        {"cluster keys", test_cluster_keys},
        {"worker count", test_worker_count},
        {"log level", test_log_level},
        {"log output", test_log_output},
        {"log from many threads", test_log_threads},
        {"log format json and client events", test_log_json},
    };
    for (size_t i = 0; i < sizeof(tests) / sizeof(tests[0]); i++) {
        if (!CU_add_test(s, tests[i].name, tests[i].fn)) {
            CU_cleanup_registry();
            return 2;
        }
    }
    CU_basic_set_mode(CU_BRM_VERBOSE);
    CU_basic_run_tests();
    unsigned failed = CU_get_number_of_failures() + CU_get_number_of_tests_failed();
    CU_cleanup_registry();
    return failed ? 1 : 0;
}
