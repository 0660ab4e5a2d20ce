/*
 * static.c - the dashboard's static files (admin/dashboard, embedded at
 * build time by embed.cmake into admin_assets[]).
 *
 *   GET /                      index.html
 *   GET /index.html            index.html
 *   GET /dashboard/NAME        any embedded file
 *
 * They need no API key (the API calls the page makes do). Every answer of
 * the admin port carries the security headers of admin_security_headers;
 * the page's own Content-Security-Policy allows only the port's own scripts,
 * styles and API (no inline script, no framing).
 */
#include <string.h>

#include <microhttpd.h>

#include "admin_int.h"

#define DASHBOARD_PREFIX "/dashboard/"

/* script-src 'self' and no 'unsafe-inline': app.js is the only script */
static const char dashboard_csp[] =
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'";

/* JSON answers carry no active content at all. */
static const char api_csp[] = "default-src 'none'; frame-ancestors 'none'";

static const char *admin_asset_type(const char *name)
{
    const char *dot = strrchr(name, '.');
    if (!dot)
        return "application/octet-stream";
    if (strcmp(dot, ".html") == 0)
        return "text/html; charset=utf-8";
    if (strcmp(dot, ".js") == 0)
        return "text/javascript; charset=utf-8";
    if (strcmp(dot, ".css") == 0)
        return "text/css; charset=utf-8";
    if (strcmp(dot, ".png") == 0)
        return "image/png";
    if (strcmp(dot, ".svg") == 0)
        return "image/svg+xml";
    return "application/octet-stream";
}

const struct admin_asset *admin_asset_find(const char *path)
{
    const char *name = NULL;
    if (strcmp(path, "/") == 0 || strcmp(path, "/index.html") == 0)
        name = "index.html";
    else if (strncmp(path, DASHBOARD_PREFIX, sizeof(DASHBOARD_PREFIX) - 1) == 0)
        name = path + sizeof(DASHBOARD_PREFIX) - 1;
    if (!name || !*name)
        return NULL;
    for (size_t i = 0; i < admin_n_assets; i++)
        if (strcmp(admin_assets[i].name, name) == 0)
            return &admin_assets[i];
    return NULL;
}

void admin_security_headers(struct MHD_Response *resp, bool page)
{
    MHD_add_response_header(resp, "Content-Security-Policy", page ? dashboard_csp : api_csp);
    MHD_add_response_header(resp, "X-Frame-Options", "DENY");
    MHD_add_response_header(resp, "X-Content-Type-Options", "nosniff");
    MHD_add_response_header(resp, "Referrer-Policy", "no-referrer");
    MHD_add_response_header(resp, "Cross-Origin-Opener-Policy", "same-origin");
}

void admin_reply_asset(struct admin_req *r, const struct admin_asset *as)
{
    /* the bytes live in the binary: no copy */
    struct MHD_Response *resp =
        MHD_create_response_from_buffer(as->len, (void *)as->data, MHD_RESPMEM_PERSISTENT);
    r->page = true;
    admin_reply_response(r, MHD_HTTP_OK, resp, admin_asset_type(as->name));
}
