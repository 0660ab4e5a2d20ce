/*
 * log.h - leveled logging to stderr, as text or as JSON lines.
 *
 * Thread safe: each call writes one whole line with a timestamp and level.
 * Text: "2026-11-27T09:30:00.123Z INFO message". JSON (log_format json, for
 * log collectors): one object per line, built with jansson:
 *   {"time": "...", "level": "info", "msg": "..."}
 * and for the events of a client (log_event) also "event", "client_id",
 * "address" and, when there is one, "reason".
 */
#ifndef STARLING_LOG_H
#define STARLING_LOG_H

#include <stddef.h>

enum log_level { LOG_LEVEL_ERROR = 0, LOG_LEVEL_WARN = 1, LOG_LEVEL_INFO = 2, LOG_LEVEL_DEBUG = 3 };

void log_set_level(enum log_level level);
enum log_level log_get_level(void);
/* Parse "error", "warn", "info", "debug". Returns 0 or -EINVAL. */
int log_level_parse(const char *s, enum log_level *out);

enum log_format { LOG_FORMAT_TEXT = 0, LOG_FORMAT_JSON = 1 };

void log_set_format(enum log_format format);
enum log_format log_get_format(void);
/* Parse "text", "json". Returns 0 or -EINVAL. */
int log_format_parse(const char *s, enum log_format *out);

void log_msg(enum log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/*
 * An event of one client, one line: `event` is a short name ("connect",
 * "disconnect", "takeover", "auth_failure", "kick", "ban"), client_id its
 * id_len bytes (may be empty), address "host:port" of the connection,
 * reason a short text or NULL, fmt details for the human (may be ""). The
 * text form is "ADDRESS: EVENT client 'ID' (REASON): DETAILS".
 */
void log_event(enum log_level level, const char *event, const char *client_id, size_t id_len,
               const char *address, const char *reason, const char *fmt, ...)
    __attribute__((format(printf, 7, 8)));

#define log_error(...) log_msg(LOG_LEVEL_ERROR, __VA_ARGS__)
#define log_warn(...) log_msg(LOG_LEVEL_WARN, __VA_ARGS__)
#define log_info(...) log_msg(LOG_LEVEL_INFO, __VA_ARGS__)
#define log_debug(...)                                                                             \
    do {                                                                                           \
        if (log_get_level() >= LOG_LEVEL_DEBUG)                                                    \
            log_msg(LOG_LEVEL_DEBUG, __VA_ARGS__);                                                 \
    } while (0)

#endif
