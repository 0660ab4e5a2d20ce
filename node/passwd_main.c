/*
 * passwd_main.c - `starling passwd`: manage a Mosquitto-format password file.
 *
 * The options are mosquitto_passwd's: -c creates (or truncates) the file, -D
 * deletes the user, -b takes the password from the command line (otherwise
 * it is asked twice on the terminal, without echo), -H chooses the hash
 * (sha512-pbkdf2, the default, or sha512). Other lines of the file are kept
 * as they are. The file is replaced atomically (a temporary file in the same
 * directory, fsync, rename); a new file gets mode 0600.
 */
#include "passwd.h"

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <termios.h>
#include <unistd.h>

#include <openssl/crypto.h>

#define PASSWD_PW_MAX 1024

static void passwd_usage(FILE *out)
{
    fprintf(out,
            "usage: starling passwd [-H sha512 | -H sha512-pbkdf2] [-c | -D] FILE USER\n"
            "       starling passwd [-H sha512 | -H sha512-pbkdf2] [-c] -b FILE USER PASSWORD\n"
            "\n"
            "  -b  take the password from the command line (batch mode)\n"
            "  -c  create a new password file, overwriting an existing one\n"
            "  -D  delete USER from the file\n"
            "  -H  hash: sha512-pbkdf2 (default, $7$) or sha512 ($6$, Mosquitto 1.6)\n"
            "\n"
            "The file is in Mosquitto's format; mosquitto and Starling read each other's.\n");
}

/* Read one line from stdin into buf, without echo when stdin is a terminal. */
static int passwd_read_line(const char *prompt, char *buf, size_t cap)
{
    struct termios old, quiet;
    bool tty = isatty(STDIN_FILENO) && tcgetattr(STDIN_FILENO, &old) == 0;
    if (tty) {
        quiet = old;
        quiet.c_lflag &= ~(tcflag_t)ECHO;
        tcsetattr(STDIN_FILENO, TCSAFLUSH, &quiet);
    }
    fputs(prompt, stdout);
    fflush(stdout);
    char *r = fgets(buf, (int)cap, stdin);
    if (tty) {
        tcsetattr(STDIN_FILENO, TCSAFLUSH, &old);
        fputc('\n', stdout);
    }
    if (!r)
        return -1;
    size_t n = strlen(buf);
    if (n && buf[n - 1] == '\n')
        buf[--n] = '\0';
    else if (n + 1 >= cap)
        return -2;
    if (n && buf[n - 1] == '\r')
        buf[--n] = '\0';
    return 0;
}

/* Read the whole file and its mode and owner. */
static int passwd_read_file(const char *path, char **text, size_t *len, struct stat *st)
{
    *text = NULL;
    *len = 0;
    FILE *f = fopen(path, "rb");
    if (!f)
        return -errno;
    if (fstat(fileno(f), st) < 0) {
        int e = errno;
        fclose(f);
        return -e;
    }
    size_t cap = 0;
    for (;;) {
        if (*len == cap) {
            cap = cap ? cap * 2 : 4096;
            char *nt = realloc(*text, cap);
            if (!nt) {
                fclose(f);
                return -ENOMEM;
            }
            *text = nt;
        }
        size_t n = fread(*text + *len, 1, cap - *len, f);
        *len += n;
        if (n == 0)
            break;
    }
    int bad = ferror(f);
    fclose(f);
    return bad ? -EIO : 0;
}

/* Write text to path through a temporary file and rename. The new file
 * gets the old one's mode and, where we may (root), its owner: a file that
 * root edits for a broker running as another user stays readable to it. */
static int passwd_write_file(const char *path, const char *text, size_t len, const struct stat *old)
{
    char *dup = strdup(path);
    if (!dup)
        return -ENOMEM;
    char tmp[4096];
    int n = snprintf(tmp, sizeof(tmp), "%s/.%s.XXXXXX", dirname(dup), basename((char *)path));
    free(dup);
    if (n < 0 || (size_t)n >= sizeof(tmp))
        return -ENAMETOOLONG;
    int fd = mkstemp(tmp);
    if (fd < 0)
        return -errno;
    int r = 0;
    if (fchmod(fd, old ? old->st_mode & 07777 : 0600) < 0)
        r = -errno;
    if (r == 0 && old && (old->st_uid != geteuid() || old->st_gid != getegid()) &&
        fchown(fd, old->st_uid, old->st_gid) < 0 && errno != EPERM)
        r = -errno;
    for (size_t off = 0; r == 0 && off < len;) {
        ssize_t w = write(fd, text + off, len - off);
        if (w < 0 && errno != EINTR)
            r = -errno;
        else if (w > 0)
            off += (size_t)w;
    }
    if (r == 0 && fsync(fd) < 0)
        r = -errno;
    if (close(fd) < 0 && r == 0)
        r = -errno;
    if (r == 0 && rename(tmp, path) < 0)
        r = -errno;
    if (r < 0)
        unlink(tmp);
    return r;
}

/* Append to a growing buffer. */
static int passwd_append(char **buf, size_t *len, size_t *cap, const char *s, size_t n)
{
    if (*len + n + 1 > *cap) {
        size_t nc = (*len + n + 1) * 2;
        char *nb = realloc(*buf, nc);
        if (!nb)
            return -ENOMEM;
        *buf = nb;
        *cap = nc;
    }
    memcpy(*buf + *len, s, n);
    *len += n;
    return 0;
}

struct passwd_opts {
    bool create, del, batch, sha512;
};

/* Parses the options and checks the argument count. Returns -1 to go on (the
 * operands start at optind), else the exit status. */
static int passwd_parse_opts(int argc, char **argv, struct passwd_opts *o)
{
    int ch;
    optind = 1;
    while ((ch = getopt(argc, argv, "+bcDH:h")) != -1) {
        switch (ch) {
        case 'b':
            o->batch = true;
            break;
        case 'c':
            o->create = true;
            break;
        case 'D':
            o->del = true;
            break;
        case 'H':
            if (strcmp(optarg, "sha512") == 0) {
                o->sha512 = true;
            } else if (strcmp(optarg, "sha512-pbkdf2") == 0) {
                o->sha512 = false;
            } else {
                fprintf(stderr, "starling passwd: unknown hash '%s'\n", optarg);
                return 2;
            }
            break;
        case 'h':
            passwd_usage(stdout);
            return 0;
        default:
            passwd_usage(stderr);
            return 2;
        }
    }
    if (o->create && o->del) {
        fprintf(stderr, "starling passwd: -c and -D cannot be used together\n");
        return 2;
    }
    int want = 2 + (o->batch && !o->del);
    if (argc - optind != want) {
        passwd_usage(stderr);
        return 2;
    }
    return -1;
}

/* Fills pw (PASSWD_PW_MAX bytes) from the command line (batch_pw, for -b) or
 * from two prompts that must agree. Returns 0, or 1 (the exit status). */
static int passwd_get_password(const char *batch_pw, char *pw)
{
    char again[PASSWD_PW_MAX];
    if (batch_pw) {
        if (strlen(batch_pw) >= PASSWD_PW_MAX) {
            fprintf(stderr, "starling passwd: password longer than %d bytes\n", PASSWD_PW_MAX - 1);
            return 1;
        }
        strcpy(pw, batch_pw);
    } else {
        if (passwd_read_line("Password: ", pw, PASSWD_PW_MAX) < 0 ||
            passwd_read_line("Reenter password: ", again, sizeof(again)) < 0) {
            fprintf(stderr, "starling passwd: no password read\n");
            return 1;
        }
        int same = strcmp(pw, again) == 0;
        OPENSSL_cleanse(again, sizeof(again));
        if (!same) {
            OPENSSL_cleanse(pw, PASSWD_PW_MAX);
            fprintf(stderr, "starling passwd: the passwords do not match\n");
            return 1;
        }
    }
    if (pw[0] == '\0' || strpbrk(pw, "\r\n")) {
        fprintf(stderr, "starling passwd: empty password or one with a line break\n");
        return 1;
    }
    return 0;
}

/* Appends to out every line of text but USER's; the first of USER's lines is
 * replaced by entry (unless del). Sets *found when USER had a line. Returns 0
 * or -ENOMEM. */
static int passwd_copy_lines(const char *text, size_t len, const char *user, const char *entry,
                             size_t elen, bool del, char **out, size_t *olen, size_t *ocap,
                             bool *found)
{
    size_t ulen = strlen(user);
    for (const char *p = text, *end = text + len; p && p < end;) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        const char *next = nl ? nl + 1 : end;
        bool mine = (size_t)(next - p) > ulen && memcmp(p, user, ulen) == 0 && p[ulen] == ':';
        if (mine) {
            if (!*found && !del && passwd_append(out, olen, ocap, entry, elen) < 0)
                return -ENOMEM;
            *found = true;
        } else {
            if (passwd_append(out, olen, ocap, p, (size_t)(next - p)) < 0)
                return -ENOMEM;
            if (!nl && passwd_append(out, olen, ocap, "\n", 1) < 0)
                return -ENOMEM;
        }
        p = next;
    }
    return 0;
}

/* Rewrites file with USER's entry set to pw's hash (or removed, for -D).
 * Returns the exit status. */
static int passwd_rewrite(const struct passwd_opts *o, const char *file, const char *user,
                          const char *pw)
{
    char *text = NULL, *out = NULL;
    size_t len = 0, olen = 0, ocap = 0;
    struct stat st;
    int rc = 1;
    if (!o->create) {
        int r = passwd_read_file(file, &text, &len, &st);
        if (r < 0) {
            fprintf(stderr, "starling passwd: %s: %s\n", file, strerror(-r));
            goto done;
        }
        struct passwd_db *db = NULL;
        char err[256];
        if (passwd_parse(text, len, &db, err, sizeof(err)) < 0) {
            fprintf(stderr, "starling passwd: %s: %s\n", file, err);
            goto done;
        }
        passwd_unref(db);
    }

    /* Copy every line but USER's; its new entry replaces the old one. */
    char entry[PASSWD_HASH_MAX + PASSWD_PW_MAX];
    size_t elen = 0;
    if (!o->del) {
        char hash[PASSWD_HASH_MAX];
        int r = o->sha512 ? passwd_hash_make_sha512(pw, strlen(pw), hash, sizeof(hash))
                          : passwd_hash_make(pw, strlen(pw), PASSWD_ITERATIONS, hash, sizeof(hash));
        if (r < 0) {
            fprintf(stderr, "starling passwd: hashing failed: %s\n", strerror(-r));
            goto done;
        }
        elen = (size_t)snprintf(entry, sizeof(entry), "%s:%s\n", user, hash);
    }
    bool found = false;
    if (passwd_copy_lines(text, len, user, entry, elen, o->del, &out, &olen, &ocap, &found) < 0)
        goto nomem;
    if (o->del && !found) {
        fprintf(stderr, "starling passwd: user %s not found in %s\n", user, file);
        goto done;
    }
    if (!found && !o->del && passwd_append(&out, &olen, &ocap, entry, elen) < 0)
        goto nomem;
    int r = passwd_write_file(file, out ? out : "", olen, o->create ? NULL : &st);
    if (r < 0) {
        fprintf(stderr, "starling passwd: %s: %s\n", file, strerror(-r));
        goto done;
    }
    rc = 0;
    goto done;
nomem:
    fprintf(stderr, "starling passwd: out of memory\n");
done:
    OPENSSL_cleanse(entry, sizeof(entry));
    if (out)
        OPENSSL_cleanse(out, olen);
    free(out);
    free(text);
    return rc;
}

int passwd_main(int argc, char **argv)
{
    struct passwd_opts o = {0};
    int rc = passwd_parse_opts(argc, argv, &o);
    if (rc >= 0)
        return rc;
    const char *file = argv[optind], *user = argv[optind + 1];
    size_t ulen = strlen(user);
    if (ulen == 0 || strpbrk(user, ":\r\n") || user[0] == '#') {
        fprintf(stderr, "starling passwd: a user name must be non-empty, must not start with "
                        "'#' and must not contain ':' or a line break\n");
        return 1;
    }

    char pw[PASSWD_PW_MAX];
    pw[0] = '\0';
    if (!o.del && passwd_get_password(o.batch ? argv[optind + 2] : NULL, pw) != 0)
        return 1;
    rc = passwd_rewrite(&o, file, user, pw);
    OPENSSL_cleanse(pw, sizeof(pw));
    return rc;
}
