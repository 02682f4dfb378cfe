/*
 * The dashboard's static files under /ui/ (docs/api.md, "Dashboard"), from TRAINQ_UI_DIR.
 *
 * What must stay true:
 *  - only a plain file name directly in the UI directory is ever opened: one segment of
 *    [A-Za-z0-9._-] not starting with '.', with a known extension, opened with O_NOFOLLOW
 *    relative to the directory; anything else is 404, so no path can leave the directory;
 *  - every answer carries the Content-Security-Policy below (no inline script or style,
 *    nothing from another origin), X-Content-Type-Options: nosniff and Referrer-Policy:
 *    no-referrer; the token never appears in a URL the server sees (the page reads it from
 *    the fragment).
 */
#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "handlers.h"
#include "request_impl.h"

/* Longest file name served (the files of ui/ are short). */
#define UI_NAME_MAX 64

static const char csp[] = "default-src 'none'; script-src 'self'; style-src 'self'; "
                          "img-src 'self' data:; connect-src 'self'; base-uri 'none'; "
                          "form-action 'self'; frame-ancestors 'none'";

static const struct {
    const char *ext, *type;
} types[] = {
    {".html", "text/html; charset=utf-8"},
    {".js", "text/javascript; charset=utf-8"},
    {".css", "text/css; charset=utf-8"},
    {".svg", "image/svg+xml"},
    {".png", "image/png"},
    {".ico", "image/x-icon"},
    {".json", "application/json"},
};

/* The content type of a servable name, NULL when the name is not one. */
static const char *servable(const char *name)
{
    size_t n = strlen(name);
    if (n == 0 || n > UI_NAME_MAX || name[0] == '.' ||
        strspn(name, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-") != n)
        return NULL;
    for (size_t i = 0; i < sizeof types / sizeof types[0]; i++) {
        size_t e = strlen(types[i].ext);
        if (n > e && strcmp(name + n - e, types[i].ext) == 0)
            return types[i].type;
    }
    return NULL;
}

void tq_h_ui(tq_req *r)
{
    tq_req_add_header(r, "Content-Security-Policy", csp);
    tq_req_add_header(r, "X-Content-Type-Options", "nosniff");
    tq_req_add_header(r, "Referrer-Policy", "no-referrer");
    tq_req_add_header(r, "X-Frame-Options", "DENY");
    const char *dir = tq_req_app(r)->cfg->ui_dir;
    if (!dir[0]) {
        tq_req_reply_error(r, 404, "the dashboard is not installed on this server (TRAINQ_UI_DIR)");
        return;
    }
    const char *name = tq_req_param(r);
    if (!name[0])
        name = "index.html"; /* "/ui" and "/ui/" */
    const char *type = servable(name);
    int fd = -1;
    struct stat st;
    if (type) {
        int d = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (d >= 0) {
            fd = openat(d, name, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
            close(d);
        }
        if (fd >= 0 && (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode))) {
            close(fd);
            fd = -1;
        }
    }
    if (fd < 0) {
        tq_req_reply_error(r, 404, "not found");
        return;
    }
    tq_req_reply_fd(r, 200, type, fd, 0, (unsigned long long)st.st_size);
}
