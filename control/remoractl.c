/* remoractl: the command line client of remora-control's trace API (gRPC service
 * remora.v1.Control, proto/remora/v1/control.proto).
 *
 *   remoractl [--server ADDR:PORT] traces [--service S] [--errors] [--since 5m] [--limit N]
 *   remoractl [--server ADDR:PORT] trace ID
 *
 * One unary call per run over HTTP/2 with prior knowledge (nghttp2 on a blocking socket).
 * Exit status: 0 on success, 1 when the server cannot be reached or answers an error, 2 on a
 * usage error. */

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <langinfo.h>
#include <locale.h>
#include <netdb.h>
#include <poll.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <nghttp2/nghttp2.h>

#include "remora/v1/control.pb-c.h"

#define DEFAULT_SERVER "127.0.0.1:15010"
#define CONNECT_TIMEOUT_MS 5000
#define CALL_TIMEOUT_MS 30000
#define MAX_RESPONSE (64u << 20)

static const char *prog = "remoractl";

static void usage(FILE *out)
{
    fprintf(out,
            "usage: remoractl [--server ADDR:PORT] traces [--service S] [--errors] [--since DUR]\n"
            "                 [--limit N]\n"
            "       remoractl [--server ADDR:PORT] trace TRACE_ID\n"
            "\n"
            "Reads the traces kept by remora-control (its gRPC API, remora.v1.Control).\n"
            "\n"
            "  --server ADDR:PORT  remora-control's --listen address (default " DEFAULT_SERVER ")\n"
            "  -h, --help          this text\n"
            "\n"
            "traces: a table of recent traces, newest first\n"
            "  --service S         only traces with a span of service S\n"
            "  --errors            only traces with a span whose status is ERROR\n"
            "  --since DUR         only traces that started within DUR (30s, 5m, 2h, 1d, 1h30m)\n"
            "  --limit N           at most N traces (1..1000, default 100)\n"
            "\n"
            "trace TRACE_ID: one trace (32 hex digits) as a waterfall, spans nested under their\n"
            "  parents, with a bar per span scaled to the trace and the key attributes.\n"
            "\n"
            "Exit status: 0 ok, 1 server unreachable or error, 2 usage error.\n");
}

static int usage_error(const char *fmt, ...)
{
    va_list ap;
    fprintf(stderr, "%s: ", prog);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, "\n");
    usage(stderr);
    return 2;
}

/* ---- the gRPC call ------------------------------------------------------------------------ */

static const char *const grpc_codes[] = {
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
};

struct call {
    int32_t stream_id;
    const uint8_t *req; /* the framed request message */
    size_t req_len, req_off;
    int http_status;
    int grpc_status; /* -1 until seen */
    char *grpc_message;
    char *content_type;
    uint8_t *body;
    size_t body_len, body_cap;
    bool too_large;
    bool h2_seen; /* the server's SETTINGS arrived: it speaks HTTP/2 */
    bool closed;
    uint32_t close_error;
};

static ssize_t req_read(nghttp2_session *s, int32_t sid, uint8_t *buf, size_t len, uint32_t *flags,
                        nghttp2_data_source *src, void *ud)
{
    struct call *c = ud;
    size_t n = c->req_len - c->req_off;
    if (n > len)
        n = len;
    memcpy(buf, c->req + c->req_off, n);
    c->req_off += n;
    if (c->req_off == c->req_len)
        *flags |= NGHTTP2_DATA_FLAG_EOF;
    return (ssize_t)n;
}

static int hexval(uint8_t ch)
{
    if (ch >= '0' && ch <= '9')
        return ch - '0';
    if (ch >= 'a' && ch <= 'f')
        return ch - 'a' + 10;
    if (ch >= 'A' && ch <= 'F')
        return ch - 'A' + 10;
    return -1;
}

/* grpc-message is percent-encoded (gRPC over HTTP/2); a stray '%' is kept as it is. */
static char *percent_decode(const uint8_t *v, size_t len)
{
    char *out = malloc(len + 1);
    size_t o = 0;
    if (!out)
        return NULL;
    for (size_t i = 0; i < len; i++) {
        if (v[i] == '%' && i + 2 < len && hexval(v[i + 1]) >= 0 && hexval(v[i + 2]) >= 0) {
            out[o++] = (char)(hexval(v[i + 1]) << 4 | hexval(v[i + 2]));
            i += 2;
        } else {
            out[o++] = (char)v[i];
        }
    }
    out[o] = 0;
    return out;
}

static int on_header(nghttp2_session *s, const nghttp2_frame *f, const uint8_t *name,
                     size_t namelen, const uint8_t *value, size_t valuelen, uint8_t flags, void *ud)
{
    struct call *c = ud;
    if (f->hd.type != NGHTTP2_HEADERS || f->hd.stream_id != c->stream_id)
        return 0;
    if (namelen == 7 && memcmp(name, ":status", 7) == 0) {
        c->http_status = atoi((const char *)value);
    } else if (namelen == 11 && memcmp(name, "grpc-status", 11) == 0) {
        c->grpc_status = atoi((const char *)value);
    } else if (namelen == 12 && memcmp(name, "grpc-message", 12) == 0) {
        free(c->grpc_message);
        c->grpc_message = percent_decode(value, valuelen);
    } else if (namelen == 12 && memcmp(name, "content-type", 12) == 0) {
        free(c->content_type);
        c->content_type = strndup((const char *)value, valuelen);
    }
    return 0;
}

static int on_data(nghttp2_session *s, uint8_t flags, int32_t sid, const uint8_t *data, size_t len,
                   void *ud)
{
    struct call *c = ud;
    if (sid != c->stream_id || c->too_large)
        return 0;
    if (c->body_len + len > MAX_RESPONSE) {
        c->too_large = true;
        return nghttp2_submit_rst_stream(s, NGHTTP2_FLAG_NONE, sid, NGHTTP2_CANCEL);
    }
    if (c->body_len + len > c->body_cap) {
        size_t cap = c->body_cap ? c->body_cap : 16384;
        while (cap < c->body_len + len)
            cap *= 2;
        uint8_t *nb = realloc(c->body, cap);
        if (!nb)
            return NGHTTP2_ERR_CALLBACK_FAILURE;
        c->body = nb;
        c->body_cap = cap;
    }
    memcpy(c->body + c->body_len, data, len);
    c->body_len += len;
    return 0;
}

static int on_frame(nghttp2_session *s, const nghttp2_frame *f, void *ud)
{
    struct call *c = ud;
    if (f->hd.type == NGHTTP2_SETTINGS)
        c->h2_seen = true;
    return 0;
}

static int on_close(nghttp2_session *s, int32_t sid, uint32_t error_code, void *ud)
{
    struct call *c = ud;
    if (sid == c->stream_id) {
        c->closed = true;
        c->close_error = error_code;
    }
    return 0;
}

static int split_hostport(const char *server, char *host, size_t hostlen, char *port,
                          size_t portlen)
{
    const char *colon;
    const char *h = server;
    size_t hl;
    if (server[0] == '[') {
        const char *rb = strchr(server, ']');
        if (!rb || rb[1] != ':')
            return -1;
        h = server + 1;
        hl = (size_t)(rb - h);
        colon = rb + 1;
    } else {
        colon = strrchr(server, ':');
        if (!colon)
            return -1;
        hl = (size_t)(colon - server);
    }
    if (hl == 0 || hl >= hostlen || strlen(colon + 1) == 0 || strlen(colon + 1) >= portlen)
        return -1;
    for (const char *p = colon + 1; *p; p++)
        if (*p < '0' || *p > '9')
            return -1;
    memcpy(host, h, hl);
    host[hl] = 0;
    strcpy(port, colon + 1);
    return 0;
}

/* Connects to server within CONNECT_TIMEOUT_MS. Returns a blocking fd, or -1 with a message
 * in err. */
static int dial(const char *server, char *err, size_t errlen)
{
    char host[256], port[16];
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM}, *res, *ai;
    int fd = -1, rc, last = 0;

    if (split_hostport(server, host, sizeof host, port, sizeof port) < 0) {
        snprintf(err, errlen, "bad server address '%s' (want ADDR:PORT)", server);
        return -1;
    }
    rc = getaddrinfo(host, port, &hints, &res);
    if (rc != 0) {
        snprintf(err, errlen, "cannot resolve %s: %s", host, gai_strerror(rc));
        return -1;
    }
    for (ai = res; ai; ai = ai->ai_next) {
        fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK, ai->ai_protocol);
        if (fd < 0) {
            last = errno;
            continue;
        }
        if (connect(fd, ai->ai_addr, ai->ai_addrlen) == 0)
            break;
        if (errno == EINPROGRESS) {
            struct pollfd p = {.fd = fd, .events = POLLOUT};
            int soerr = 0;
            socklen_t sl = sizeof soerr;
            rc = poll(&p, 1, CONNECT_TIMEOUT_MS);
            if (rc == 1 && getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) == 0 && !soerr)
                break;
            last = rc == 0 ? ETIMEDOUT : soerr ? soerr : errno;
        } else {
            last = errno;
        }
        close(fd);
        fd = -1;
    }
    freeaddrinfo(res);
    if (fd < 0) {
        snprintf(err, errlen, "cannot connect to remora-control at %s: %s", server, strerror(last));
        return -1;
    }
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK);
    return fd;
}

static int write_all(int fd, const uint8_t *p, size_t n)
{
    while (n > 0) {
        ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

/* Calls /remora.v1.Control/<method> with the packed request msg. On success returns 0 and
 * the response message (unframed) in *out, *outlen (the caller frees *out). On failure
 * returns -1 with a one-line message in err. */
static int grpc_call(const char *server, const char *method, const uint8_t *msg, size_t msglen,
                     uint8_t **out, size_t *outlen, char *err, size_t errlen)
{
    struct call c = {.grpc_status = -1, .http_status = 0};
    nghttp2_session_callbacks *cbs = NULL;
    nghttp2_session *s = NULL;
    uint8_t *framed = NULL;
    char path[128];
    int fd, ret = -1;

    *out = NULL;
    *outlen = 0;
    fd = dial(server, err, errlen);
    if (fd < 0)
        return -1;

    framed = malloc(5 + msglen);
    if (!framed) {
        snprintf(err, errlen, "out of memory");
        goto done;
    }
    framed[0] = 0;
    framed[1] = (uint8_t)(msglen >> 24);
    framed[2] = (uint8_t)(msglen >> 16);
    framed[3] = (uint8_t)(msglen >> 8);
    framed[4] = (uint8_t)msglen;
    if (msglen)
        memcpy(framed + 5, msg, msglen);
    c.req = framed;
    c.req_len = 5 + msglen;

    if (nghttp2_session_callbacks_new(&cbs) != 0) {
        snprintf(err, errlen, "out of memory");
        goto done;
    }
    nghttp2_session_callbacks_set_on_header_callback(cbs, on_header);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cbs, on_data);
    nghttp2_session_callbacks_set_on_stream_close_callback(cbs, on_close);
    nghttp2_session_callbacks_set_on_frame_recv_callback(cbs, on_frame);
    if (nghttp2_session_client_new(&s, cbs, &c) != 0) {
        snprintf(err, errlen, "out of memory");
        goto done;
    }
    nghttp2_settings_entry iv[] = {{NGHTTP2_SETTINGS_ENABLE_PUSH, 0},
                                   {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, 1 << 24}};
    nghttp2_submit_settings(s, NGHTTP2_FLAG_NONE, iv, 2);
    nghttp2_session_set_local_window_size(s, NGHTTP2_FLAG_NONE, 0, 1 << 26);

    snprintf(path, sizeof path, "/remora.v1.Control/%s", method);
#define NV(n, v) {(uint8_t *)(n), (uint8_t *)(v), sizeof(n) - 1, strlen(v), NGHTTP2_NV_FLAG_NONE}
    nghttp2_nv hdrs[] = {NV(":method", "POST"),
                         NV(":scheme", "http"),
                         NV(":path", path),
                         NV(":authority", server),
                         NV("content-type", "application/grpc"),
                         NV("te", "trailers"),
                         NV("user-agent", "remoractl")};
#undef NV
    nghttp2_data_provider prd = {.read_callback = req_read};
    c.stream_id = nghttp2_submit_request(s, NULL, hdrs, sizeof hdrs / sizeof hdrs[0], &prd, &c);
    if (c.stream_id < 0) {
        snprintf(err, errlen, "cannot make the request: %s", nghttp2_strerror(c.stream_id));
        goto done;
    }

    while (!c.closed) {
        const uint8_t *data;
        ssize_t n;
        uint8_t buf[16384];
        int rc;
        while ((n = nghttp2_session_mem_send(s, &data)) > 0) {
            rc = write_all(fd, data, (size_t)n);
            if (rc < 0) {
                snprintf(err, errlen, "cannot send to %s: %s", server, strerror(-rc));
                goto done;
            }
        }
        if (n < 0) {
            snprintf(err, errlen, "HTTP/2 error: %s", nghttp2_strerror((int)n));
            goto done;
        }
        if (c.closed)
            break;
        struct pollfd p = {.fd = fd, .events = POLLIN};
        rc = poll(&p, 1, CALL_TIMEOUT_MS);
        if (rc == 0) {
            snprintf(err, errlen, "no answer from %s within %d s", server, CALL_TIMEOUT_MS / 1000);
            goto done;
        }
        if (rc < 0) {
            if (errno == EINTR)
                continue;
            snprintf(err, errlen, "poll: %s", strerror(errno));
            goto done;
        }
        n = recv(fd, buf, sizeof buf, 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0 && !c.h2_seen) {
            snprintf(err, errlen,
                     "%s closed the connection without an HTTP/2 answer: is it "
                     "remora-control's --listen port?",
                     server);
            goto done;
        }
        if (n < 0) {
            snprintf(err, errlen, "connection to %s failed: %s", server, strerror(errno));
            goto done;
        }
        if (n == 0) {
            snprintf(err, errlen, "%s closed the connection before answering", server);
            goto done;
        }
        rc = (int)nghttp2_session_mem_recv(s, buf, (size_t)n);
        if (rc < 0) {
            snprintf(err, errlen,
                     "%s does not speak HTTP/2 (%s): is it remora-control's --listen port?", server,
                     nghttp2_strerror(rc));
            goto done;
        }
    }

    if (c.http_status != 200) {
        if (c.http_status == 0)
            snprintf(err, errlen, "%s reset the request (HTTP/2 error %s)", server,
                     nghttp2_http2_strerror(c.close_error));
        else
            snprintf(err, errlen, "%s answered HTTP %d, not gRPC", server, c.http_status);
        goto done;
    }
    if (c.too_large) {
        snprintf(err, errlen, "%s sent a reply larger than %u MiB", server, MAX_RESPONSE >> 20);
        goto done;
    }
    if (!c.content_type || strncmp(c.content_type, "application/grpc", 16) != 0) {
        snprintf(err, errlen, "%s answered with content-type %s, not gRPC", server,
                 c.content_type ? c.content_type : "(none)");
        goto done;
    }
    if (c.grpc_status < 0) {
        snprintf(err, errlen, "%s sent no grpc-status (stream closed with %s)", server,
                 nghttp2_http2_strerror(c.close_error));
        goto done;
    }
    if (c.grpc_status != 0) {
        const char *code = c.grpc_status < (int)(sizeof grpc_codes / sizeof grpc_codes[0])
                               ? grpc_codes[c.grpc_status]
                               : "?";
        snprintf(err, errlen, "server error: %s (%d)%s%s", code, c.grpc_status,
                 c.grpc_message && *c.grpc_message ? ": " : "",
                 c.grpc_message ? c.grpc_message : "");
        goto done;
    }
    if (c.body_len < 5 || c.body[0] != 0) {
        snprintf(err, errlen, "%s sent a malformed gRPC reply (%zu bytes%s)", server, c.body_len,
                 c.body_len >= 5 ? ", compressed" : "");
        goto done;
    }
    uint32_t mlen = (uint32_t)c.body[1] << 24 | (uint32_t)c.body[2] << 16 |
                    (uint32_t)c.body[3] << 8 | c.body[4];
    if ((size_t)mlen != c.body_len - 5) {
        snprintf(err, errlen, "%s sent a malformed gRPC reply (length %" PRIu32 " of %zu)", server,
                 mlen, c.body_len - 5);
        goto done;
    }
    *out = malloc(mlen ? mlen : 1);
    if (!*out) {
        snprintf(err, errlen, "out of memory");
        goto done;
    }
    memcpy(*out, c.body + 5, mlen);
    *outlen = mlen;
    ret = 0;

done:
    if (s)
        nghttp2_session_del(s);
    if (cbs)
        nghttp2_session_callbacks_del(cbs);
    free(framed);
    free(c.body);
    free(c.grpc_message);
    free(c.content_type);
    close(fd);
    return ret;
}

/* ---- formatting ---------------------------------------------------------------------------- */

static bool utf8_out;

static void hex(char *out, const uint8_t *p, size_t n)
{
    static const char digits[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = digits[p[i] >> 4];
        out[2 * i + 1] = digits[p[i] & 15];
    }
    out[2 * n] = 0;
}

static void fmt_time(char *out, size_t len, uint64_t unix_ns)
{
    time_t sec = (time_t)(unix_ns / 1000000000u);
    struct tm tm;
    char buf[32];
    localtime_r(&sec, &tm);
    strftime(buf, sizeof buf, "%Y-%m-%d %H:%M:%S", &tm);
    snprintf(out, len, "%s.%03u", buf, (unsigned)(unix_ns / 1000000u % 1000u));
}

static void fmt_ms(char *out, size_t len, uint64_t ns)
{
    snprintf(out, len, "%.3f ms", (double)ns / 1e6);
}

/* Terminal columns: the tty's, else $COLUMNS, else 120. */
static int term_width(void)
{
    struct winsize ws;
    const char *env = getenv("COLUMNS");
    if (isatty(STDOUT_FILENO) && ioctl(STDOUT_FILENO, TIOCGWINSZ, &ws) == 0 && ws.ws_col > 0)
        return ws.ws_col;
    if (env && atoi(env) > 0)
        return atoi(env);
    return 120;
}

/* Prints s cut to at most width characters (an ellipsis marks the cut), padded with spaces to
 * width when pad. Control characters (C0, DEL, C1) print as '?': span names come from any
 * sidecar and must not move the cursor. */
static void put_cut(const char *s, int width, bool pad)
{
    const unsigned char *p = (const unsigned char *)s;
    size_t total = 0;
    int cols = 0;

    for (const unsigned char *q = p; *q; q++)
        if ((*q & 0xC0) != 0x80)
            total++;
    while (*p && cols < width) {
        if (cols == width - 1 && total > (size_t)width) {
            fputs(utf8_out ? "\u2026" : "~", stdout);
            cols++;
            break;
        }
        if (*p < 0x20 || *p == 0x7f) {
            putchar('?');
            p++;
        } else if (*p == 0xC2 && p[1] >= 0x80 && p[1] <= 0x9F) {
            putchar('?');
            p += 2;
        } else {
            putchar(*p++);
            while ((*p & 0xC0) == 0x80)
                putchar(*p++);
        }
        cols++;
    }
    if (pad)
        for (; cols < width; cols++)
            putchar(' ');
}

/* ---- traces -------------------------------------------------------------------------------- */

static int parse_since(const char *s, uint64_t *out)
{
    uint64_t total = 0;
    const char *p = s;
    if (!*p)
        return -1;
    while (*p) {
        char *end;
        uint64_t mult;
        if (*p < '0' || *p > '9')
            return -1;
        errno = 0;
        unsigned long long v = strtoull(p, &end, 10);
        if (errno)
            return -1;
        switch (*end) {
        case 's':
            mult = 1;
            end++;
            break;
        case 'm':
            mult = 60;
            end++;
            break;
        case 'h':
            mult = 3600;
            end++;
            break;
        case 'd':
            mult = 86400;
            end++;
            break;
        case 0:
            if (p != s)
                return -1; /* "1h30" is ambiguous */
            mult = 1;
            break;
        default:
            return -1;
        }
        if (v > UINT64_MAX / mult / 2 || total > UINT64_MAX / 2)
            return -1;
        total += v * mult;
        p = end;
    }
    if (total == 0)
        return -1;
    *out = total;
    return 0;
}

static int cmd_traces(const char *server, int argc, char **argv)
{
    Remora__V1__ListTracesRequest req = REMORA__V1__LIST_TRACES_REQUEST__INIT;
    Remora__V1__ListTracesResponse *resp;
    uint8_t *buf, *out;
    size_t len, outlen;
    char err[512];

    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--errors") == 0) {
            req.errors_only = true;
        } else if (strcmp(a, "--service") == 0 || strcmp(a, "--since") == 0 ||
                   strcmp(a, "--limit") == 0) {
            if (i + 1 >= argc)
                return usage_error("%s needs a value", a);
            const char *v = argv[++i];
            if (strcmp(a, "--service") == 0) {
                if (!*v)
                    return usage_error("--service needs a name");
                req.service = (char *)v;
            } else if (strcmp(a, "--since") == 0) {
                if (parse_since(v, &req.since_seconds) < 0)
                    return usage_error("--since '%s': want a duration such as 30s, 5m, 2h, 1d", v);
            } else {
                char *end;
                errno = 0;
                long n = strtol(v, &end, 10);
                if (errno || *end || end == v || n < 1 || n > 1000)
                    return usage_error("--limit '%s': want a number from 1 to 1000", v);
                req.limit = (uint32_t)n;
            }
        } else if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
            usage(stdout);
            return 0;
        } else {
            return usage_error("traces: unknown argument '%s'", a);
        }
    }

    len = remora__v1__list_traces_request__get_packed_size(&req);
    buf = malloc(len ? len : 1);
    if (!buf) {
        fprintf(stderr, "%s: out of memory\n", prog);
        return 1;
    }
    remora__v1__list_traces_request__pack(&req, buf);
    int rc = grpc_call(server, "ListTraces", buf, len, &out, &outlen, err, sizeof err);
    free(buf);
    if (rc < 0) {
        fprintf(stderr, "%s: %s\n", prog, err);
        return 1;
    }
    resp = remora__v1__list_traces_response__unpack(NULL, outlen, out);
    free(out);
    if (!resp) {
        fprintf(stderr, "%s: %s sent a ListTracesResponse that does not decode\n", prog, server);
        return 1;
    }

    if (resp->n_traces == 0) {
        printf("no traces%s\n", req.service || req.errors_only || req.since_seconds
                                    ? " match these filters"
                                    : " yet");
        remora__v1__list_traces_response__free_unpacked(resp, NULL);
        return 0;
    }
    printf("%-32s  %-23s  %12s  %5s  %-5s  %-30s  %s\n", "TRACE ID", "START", "DURATION", "SPANS",
           "ERROR", "ROOT", "SERVICES");
    for (size_t i = 0; i < resp->n_traces; i++) {
        const Remora__V1__TraceSummary *t = resp->traces[i];
        char id[65], start[48], dur[32], root[512];
        if (t->trace_id.len > 32) {
            snprintf(id, sizeof id, "(bad id)");
        } else {
            hex(id, t->trace_id.data, t->trace_id.len);
        }
        fmt_time(start, sizeof start, t->start_time_unix_nano);
        fmt_ms(dur, sizeof dur, t->duration_nano);
        snprintf(root, sizeof root, "%s %s", t->root_service, t->root_name);
        printf("%-32s  %-23s  %12s  %5" PRIu32 "  %-5s  ", id, start, dur, t->span_count,
               t->error ? "ERROR" : "-");
        put_cut(root, 30, true);
        printf("  ");
        for (size_t j = 0; j < t->n_services; j++) {
            if (j)
                printf(",");
            put_cut(t->services[j], 64, false);
        }
        printf("\n");
    }
    remora__v1__list_traces_response__free_unpacked(resp, NULL);
    return 0;
}

/* ---- trace: the waterfall ------------------------------------------------------------------ */

static int parse_trace_id(const char *s, uint8_t id[16])
{
    if (strlen(s) != 32)
        return -1;
    for (int i = 0; i < 16; i++) {
        int hi = hexval((uint8_t)s[2 * i]), lo = hexval((uint8_t)s[2 * i + 1]);
        if (hi < 0 || lo < 0)
            return -1;
        id[i] = (uint8_t)(hi << 4 | lo);
    }
    return 0;
}

static bool key_attribute(const char *k)
{
    return strncmp(k, "remora.", 7) == 0 || strcmp(k, "http.response.status_code") == 0 ||
           strcmp(k, "http.status_code") == 0 || strcmp(k, "rpc.grpc.status_code") == 0 ||
           strcmp(k, "error.type") == 0;
}

static bool retry_event(const char *name)
{
    return strcasestr(name, "retry") != NULL;
}

static const Remora__V1__Span *const *sort_spans;

static int cmp_by_id(const void *a, const void *b)
{
    const Remora__V1__Span *x = sort_spans[*(const size_t *)a];
    const Remora__V1__Span *y = sort_spans[*(const size_t *)b];
    size_t n = x->span_id.len < y->span_id.len ? x->span_id.len : y->span_id.len;
    int c = n ? memcmp(x->span_id.data, y->span_id.data, n) : 0;
    if (c)
        return c;
    if (x->span_id.len != y->span_id.len)
        return x->span_id.len < y->span_id.len ? -1 : 1;
    /* the earlier of two spans with one id is the one children hang under */
    return *(const size_t *)a < *(const size_t *)b ? -1 : 1;
}

/* The index of the first span whose id is id, or -1. byid is sorted by cmp_by_id. */
static long find_span(const Remora__V1__Span *const *spans, const size_t *byid, size_t n,
                      const ProtobufCBinaryData *id)
{
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        const ProtobufCBinaryData *m = &spans[byid[mid]]->span_id;
        size_t k = m->len < id->len ? m->len : id->len;
        int c = k ? memcmp(m->data, id->data, k) : 0;
        if (!c && m->len != id->len)
            c = m->len < id->len ? -1 : 1;
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    if (lo < n) {
        const ProtobufCBinaryData *m = &spans[byid[lo]]->span_id;
        if (m->len == id->len && (id->len == 0 || memcmp(m->data, id->data, id->len) == 0))
            return (long)byid[lo];
    }
    return -1;
}

static void draw_bar(uint64_t t0, uint64_t total, uint64_t start, uint64_t dur, int width)
{
    long from, to;
    if (total == 0) {
        from = 0;
        to = width;
    } else {
        from = (long)((long double)(start - t0) * width / total);
        to = (long)(((long double)(start - t0) + dur) * width / total + 0.999999L);
    }
    if (from >= width)
        from = width - 1;
    if (to > width)
        to = width;
    if (to <= from)
        to = from + 1;
    putchar('|');
    for (long i = 0; i < width; i++) {
        if (i >= from && i < to)
            fputs(utf8_out ? "\u2588" : "=", stdout);
        else
            putchar(' ');
    }
    putchar('|');
}

static void print_attr_line(int indent, const char *fmt, ...)
{
    va_list ap;
    printf("%*s", indent, "");
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
}

static void print_value(const char *v)
{
    put_cut(v, 200, false);
}

static void draw_span(const Remora__V1__GetTraceResponse *tr, size_t idx, int depth, bool orphan,
                      int label_w, int bar_w, uint64_t t0, uint64_t total)
{
    const Remora__V1__Span *sp = tr->spans[idx];
    bool err = sp->status == REMORA__V1__SPAN_STATUS__SPAN_STATUS_ERROR;
    int shown_depth = depth > 20 ? 20 : depth;
    int indent = 2 * shown_depth;
    char label[1024], dur[32];
    int detail = indent + 4;

    snprintf(label, sizeof label, "%*s%s %s", indent, "", sp->service, sp->name);
    put_cut(label, label_w, true);
    printf(" ");
    draw_bar(t0, total, sp->start_time_unix_nano < t0 ? t0 : sp->start_time_unix_nano,
             sp->duration_nano, bar_w);
    fmt_ms(dur, sizeof dur, sp->duration_nano);
    printf(" %12s%s\n", dur, err ? "  ERROR" : "");

    if (depth > shown_depth)
        print_attr_line(detail, "(depth %d)\n", depth);
    if (orphan) {
        char pid[40];
        hex(pid, sp->parent_span_id.data,
            sp->parent_span_id.len > 16 ? 16 : sp->parent_span_id.len);
        print_attr_line(detail, "parent span %s is not in this trace\n", pid);
    }
    if (err && sp->status_message && *sp->status_message) {
        print_attr_line(detail, "error: ");
        print_value(sp->status_message);
        printf("\n");
    }
    bool any = false;
    for (size_t i = 0; i < sp->n_attributes; i++) {
        const Remora__V1__Span__AttributesEntry *a = sp->attributes[i];
        if (!a->key || !key_attribute(a->key))
            continue;
        if (!any)
            printf("%*s", detail, "");
        else
            printf("  ");
        any = true;
        put_cut(a->key, 80, false);
        printf("=");
        print_value(a->value ? a->value : "");
    }
    if (any)
        printf("\n");
    for (size_t i = 0; i < sp->n_events; i++) {
        const Remora__V1__SpanEvent *ev = sp->events[i];
        char at[32];
        if (!ev->name || !retry_event(ev->name))
            continue;
        fmt_ms(at, sizeof at,
               ev->time_unix_nano > sp->start_time_unix_nano
                   ? ev->time_unix_nano - sp->start_time_unix_nano
                   : 0);
        printf("%*s", detail, "");
        put_cut(ev->name, 40, false);
        printf(" at +%s", at);
        for (size_t j = 0; j < ev->n_attributes; j++) {
            printf(j ? " " : ": ");
            put_cut(ev->attributes[j]->key ? ev->attributes[j]->key : "", 80, false);
            printf("=");
            print_value(ev->attributes[j]->value ? ev->attributes[j]->value : "");
        }
        printf("\n");
    }
}

static int cmd_trace(const char *server, int argc, char **argv)
{
    Remora__V1__GetTraceRequest req = REMORA__V1__GET_TRACE_REQUEST__INIT;
    Remora__V1__GetTraceResponse *tr;
    uint8_t id[16], *buf, *out;
    size_t len, outlen;
    char err[512];
    const char *idarg = NULL;

    for (int i = 0; i < argc; i++) {
        if (strcmp(argv[i], "-h") == 0 || strcmp(argv[i], "--help") == 0) {
            usage(stdout);
            return 0;
        }
        if (argv[i][0] == '-')
            return usage_error("trace: unknown option '%s'", argv[i]);
        if (idarg)
            return usage_error("trace: one TRACE_ID only");
        idarg = argv[i];
    }
    if (!idarg)
        return usage_error("trace: TRACE_ID missing");
    if (parse_trace_id(idarg, id) < 0)
        return usage_error("trace: '%s' is not a trace id (32 hex digits)", idarg);
    req.trace_id.data = id;
    req.trace_id.len = 16;

    len = remora__v1__get_trace_request__get_packed_size(&req);
    buf = malloc(len);
    if (!buf) {
        fprintf(stderr, "%s: out of memory\n", prog);
        return 1;
    }
    remora__v1__get_trace_request__pack(&req, buf);
    int rc = grpc_call(server, "GetTrace", buf, len, &out, &outlen, err, sizeof err);
    free(buf);
    if (rc < 0) {
        fprintf(stderr, "%s: %s\n", prog, err);
        return 1;
    }
    tr = remora__v1__get_trace_response__unpack(NULL, outlen, out);
    free(out);
    if (!tr) {
        fprintf(stderr, "%s: %s sent a GetTraceResponse that does not decode\n", prog, server);
        return 1;
    }

    size_t n = tr->n_spans;
    size_t *byid = calloc(n + 1, sizeof *byid);
    long *parent = calloc(n + 1, sizeof *parent);
    size_t *first_child = calloc(n + 2, sizeof *first_child);
    size_t *kids = calloc(n + 1, sizeof *kids);
    size_t *stack = calloc(n + 1, sizeof *stack);
    int *depth = calloc(n + 1, sizeof *depth);
    bool *seen = calloc(n + 1, sizeof *seen);
    size_t *count = calloc(n + 2, sizeof *count);
    int ret = 1;
    if (!byid || !parent || !first_child || !kids || !stack || !depth || !seen || !count) {
        fprintf(stderr, "%s: out of memory\n", prog);
        goto out;
    }

    /* the time frame and the label column */
    uint64_t t0 = UINT64_MAX, t1 = 0;
    int label_w = 10;
    bool trace_err = false;
    for (size_t i = 0; i < n; i++) {
        const Remora__V1__Span *sp = tr->spans[i];
        uint64_t end = sp->start_time_unix_nano + sp->duration_nano;
        if (end < sp->start_time_unix_nano)
            end = UINT64_MAX;
        if (sp->start_time_unix_nano < t0)
            t0 = sp->start_time_unix_nano;
        if (end > t1)
            t1 = end;
        if (sp->status == REMORA__V1__SPAN_STATUS__SPAN_STATUS_ERROR)
            trace_err = true;
        byid[i] = i;
    }
    if (n == 0)
        t0 = t1 = 0;
    uint64_t total = t1 - t0;

    /* the tree: parent index by span id (spans arrive sorted by start time, so children listed
     * in that order come out in start order) */
    sort_spans = (const Remora__V1__Span *const *)tr->spans;
    qsort(byid, n, sizeof *byid, cmp_by_id);
    for (size_t i = 0; i < n; i++) {
        const Remora__V1__Span *sp = tr->spans[i];
        parent[i] =
            sp->parent_span_id.len ? find_span(sort_spans, byid, n, &sp->parent_span_id) : -1;
        if (parent[i] == (long)i)
            parent[i] = -1;
        count[parent[i] < 0 ? n : (size_t)parent[i]]++;
    }
    /* kids[first_child[p] .. first_child[p + 1]) are p's children; p == n: the roots */
    for (size_t p = 0, off = 0; p <= n; p++) {
        first_child[p] = off;
        off += count[p];
        first_child[p + 1] = off;
        count[p] = 0;
    }
    for (size_t i = 0; i < n; i++) {
        size_t p = parent[i] < 0 ? n : (size_t)parent[i];
        kids[first_child[p] + count[p]++] = i;
    }

    char idhex[33], start[48], dur[32];
    hex(idhex, id, 16);
    fmt_time(start, sizeof start, t0);
    fmt_ms(dur, sizeof dur, total);
    size_t nsvc = 0;
    for (size_t i = 0; i < n; i++) {
        bool dup = false;
        for (size_t j = 0; j < i && !dup; j++)
            dup = strcmp(tr->spans[j]->service, tr->spans[i]->service) == 0;
        nsvc += !dup;
    }
    printf("trace %s  %s  %s  %zu span%s  %zu service%s%s\n", idhex, start, dur, n,
           n == 1 ? "" : "s", nsvc, nsvc == 1 ? "" : "s", trace_err ? "  ERROR" : "");

    for (size_t i = 0; i < n; i++) {
        int w;
        const Remora__V1__Span *sp = tr->spans[i];
        w = 0;
        for (long p = parent[i], hops = 0; p >= 0 && hops < 20; p = parent[p], hops++)
            w += 2;
        w += (int)(strlen(sp->service) + 1 + strlen(sp->name));
        if (w > label_w)
            label_w = w;
    }
    int cols = term_width();
    if (label_w > 48)
        label_w = 48;
    if (label_w > cols / 3)
        label_w = cols / 3 > 10 ? cols / 3 : 10;
    int bar_w = cols - label_w - 1 - 2 - 1 - 12 - 7;
    if (bar_w < 20)
        bar_w = 20;

    char scale[32];
    fmt_ms(scale, sizeof scale, total);
    printf("%*s 0 ms%*s\n", label_w, "", bar_w + 2 - 4, scale);

    /* depth-first from the roots, then from any span a cycle of parent ids kept unreached */
    for (int pass = 0; pass < 2; pass++) {
        size_t roots_from = first_child[n], roots_to = first_child[n + 1];
        size_t r = pass == 0 ? roots_from : 0, r_end = pass == 0 ? roots_to : n;
        for (; r < r_end; r++) {
            size_t root = pass == 0 ? kids[r] : r;
            if (seen[root])
                continue;
            size_t sp = 0;
            stack[sp++] = root;
            depth[root] = 0;
            seen[root] = true;
            while (sp > 0) {
                size_t cur = stack[--sp];
                bool orphan = (cur == root) && tr->spans[cur]->parent_span_id.len > 0;
                draw_span(tr, cur, depth[cur], orphan, label_w, bar_w, t0, total);
                /* push children in reverse so the earliest is drawn first */
                for (size_t k = first_child[cur + 1]; k > first_child[cur]; k--) {
                    size_t c = kids[k - 1];
                    if (seen[c])
                        continue;
                    seen[c] = true;
                    depth[c] = depth[cur] + 1;
                    stack[sp++] = c;
                }
            }
        }
    }
    ret = 0;

out:
    free(byid);
    free(parent);
    free(first_child);
    free(kids);
    free(stack);
    free(depth);
    free(seen);
    free(count);
    remora__v1__get_trace_response__free_unpacked(tr, NULL);
    return ret;
}

int main(int argc, char **argv)
{
    const char *server = DEFAULT_SERVER;
    int i;

    setlocale(LC_CTYPE, "");
    utf8_out = strcasecmp(nl_langinfo(CODESET), "UTF-8") == 0;

    for (i = 1; i < argc; i++) {
        if (strcmp(argv[i], "-h") == 0 || strcmp(argv[i], "--help") == 0) {
            usage(stdout);
            return 0;
        } else if (strcmp(argv[i], "--server") == 0) {
            if (i + 1 >= argc)
                return usage_error("--server needs ADDR:PORT");
            server = argv[++i];
        } else if (strncmp(argv[i], "--server=", 9) == 0) {
            server = argv[i] + 9;
        } else if (argv[i][0] == '-') {
            return usage_error("unknown option '%s'", argv[i]);
        } else {
            break;
        }
    }
    if (i >= argc)
        return usage_error("a command is missing (traces or trace)");
    {
        char host[256], port[16];
        if (split_hostport(server, host, sizeof host, port, sizeof port) < 0)
            return usage_error("--server '%s': want ADDR:PORT", server);
    }
    if (strcmp(argv[i], "traces") == 0)
        return cmd_traces(server, argc - i - 1, argv + i + 1);
    if (strcmp(argv[i], "trace") == 0)
        return cmd_trace(server, argc - i - 1, argv + i + 1);
    return usage_error("unknown command '%s' (traces or trace)", argv[i]);
}
