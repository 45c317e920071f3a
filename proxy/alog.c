/*
 * The access log: one JSON line per request, written by the ring.
 *
 * Each worker appends its lines to a buffer of its own and hands the buffer to the kernel as
 * one IORING_OP_WRITE when it holds ALOG_FLUSH bytes, or on the worker's 100 ms tick, so the
 * request path never makes a system call for the log. One write per worker is in flight at a
 * time; lines that come meanwhile go to the other buffer. A worker whose log cannot keep up
 * (a blocked pipe, a full disk) drops lines past ALOG_MAX buffered bytes and counts them: the
 * log never slows requests or grows without bound.
 *
 * The file is opened by the main thread with O_APPEND; a reopen (SIGHUP, for log rotation, or
 * a reload that names another file) dup3()s the new file onto the same descriptor number, so
 * workers never see it change and writes in flight finish on the file they started on.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "remora/log.h"
#include "http.h"
#include "tls.h"

#define ALOG_FLUSH (32 * 1024) /* bytes buffered before a write is started */
#define ALOG_MAX (4u << 20)    /* bytes buffered (not yet written) before lines are dropped */

static int alog_fd = -1; /* the descriptor number workers write to; -1: no access log */
static char *alog_path;  /* what it was opened from ("-": standard output) */
uint64_t rmr_alog_dropped, rmr_alog_errors;

int alog_open(const char *path, char *err, size_t errlen)
{
    if (!path) {
        if (alog_fd >= 0) {
            /* keep the number reserved for workers still holding lines: point it at nothing */
            int null = open("/dev/null", O_WRONLY | O_CLOEXEC);
            if (null >= 0) {
                dup3(null, alog_fd, O_CLOEXEC);
                close(null);
            }
        }
        free(alog_path);
        alog_path = NULL;
        return 0;
    }
    int fd;
    if (!strcmp(path, "-"))
        fd = fcntl(STDOUT_FILENO, F_DUPFD_CLOEXEC, 3);
    else
        fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0) {
        snprintf(err, errlen, "access_log: cannot open %s: %s", path, strerror(errno));
        return -errno;
    }
    if (alog_fd < 0) {
        alog_fd = fd;
    } else {
        dup3(fd, alog_fd, O_CLOEXEC);
        close(fd);
    }
    char *p = strdup(path);
    if (p) {
        free(alog_path);
        alog_path = p;
    }
    return 0;
}

int alog_reopen(const char *path, char *err, size_t errlen)
{
    if (!path || !alog_path || strcmp(path, alog_path) || strcmp(path, "-"))
        return alog_open(path, err, errlen);
    return 0; /* standard output stays */
}

int alog_enabled(void)
{
    return alog_path != NULL;
}

static void alog_start(worker_t *w);

static void on_write(rmr_loop_t *loop, rmr_op_t *op, int res, unsigned flags)
{
    worker_t *w = (worker_t *)((char *)op - offsetof(worker_t, alog_op));
    (void)loop;
    (void)flags;
    rmr_buf_t *b = &w->alog_out;
    if (res < 0 && res != -EINTR && res != -EAGAIN) {
        /* the lines of this write are lost; count them once and go on */
        __atomic_add_fetch(&rmr_alog_errors, 1, __ATOMIC_RELAXED);
        if (!w->alog_warned) {
            RMR_WARN("access log: write failed: %s (lines lost are counted)", strerror(-res));
            w->alog_warned = 1;
        }
        b->len = 0;
        w->alog_off = 0;
    } else if (res > 0) {
        w->alog_off += (size_t)res;
        if (w->alog_off >= b->len) {
            b->len = 0;
            w->alog_off = 0;
        }
    }
    w->alog_busy = 0;
    if (b->len || w->alog_buf.len >= ALOG_FLUSH)
        alog_start(w);
}

/* Starts a write of what is buffered (the rest of the one in flight first). */
static void alog_start(worker_t *w)
{
    if (w->alog_busy || alog_fd < 0)
        return;
    rmr_buf_t *b = &w->alog_out;
    if (!b->len) {
        if (!w->alog_buf.len)
            return;
        rmr_buf_t t = *b; /* swap: the filled buffer goes out, the empty one takes lines */
        *b = w->alog_buf;
        w->alog_buf = t;
        w->alog_buf.len = 0;
        w->alog_off = 0;
    }
    struct io_uring_sqe *sqe = rmr_loop_sqe(&w->loop);
    if (!sqe)
        return; /* the tick tries again */
    io_uring_prep_write(sqe, alog_fd, b->data + w->alog_off, (unsigned)(b->len - w->alog_off),
                        (uint64_t)-1);
    w->alog_op.cb = on_write;
    io_uring_sqe_set_data(sqe, &w->alog_op);
    w->alog_busy = 1;
}

void alog_tick(worker_t *w)
{
    if (w->alog_buf.len || w->alog_out.len)
        alog_start(w);
}

void alog_worker_exit(worker_t *w)
{
    /* the loop is gone: what is left goes out with plain writes */
    if (alog_fd >= 0) {
        rmr_buf_t *bs[2] = {&w->alog_out, &w->alog_buf};
        for (int i = 0; i < 2; i++) {
            size_t off = i == 0 ? w->alog_off : 0;
            while (off < bs[i]->len) {
                ssize_t n = write(alog_fd, bs[i]->data + off, bs[i]->len - off);
                if (n <= 0 && errno != EINTR)
                    break;
                if (n > 0)
                    off += (size_t)n;
            }
        }
    }
    rmr_buf_free(&w->alog_out);
    rmr_buf_free(&w->alog_buf);
}

static void json_n(rmr_buf_t *b, const char *key, const char *s, size_t n)
{
    rmr_buf_printf(b, ",\"%s\":\"", key);
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '"' || c == '\\') {
            char e[2] = {'\\', (char)c};
            rmr_buf_append(b, e, 2);
        } else if (c < 0x20 || c == 0x7f) {
            rmr_buf_printf(b, "\\u%04x", c);
        } else {
            rmr_buf_append(b, &s[i], 1);
        }
    }
    rmr_buf_append(b, "\"", 1);
}

static void json_s(rmr_buf_t *b, const char *key, const char *s)
{
    if (s && *s)
        json_n(b, key, s, strlen(s));
}

void alog_request(conn_t *d, const stream_t *st)
{
    worker_t *w = d->w;
    if (alog_fd < 0 || !alog_path || !st->start_us)
        return;
    rmr_buf_t *b = &w->alog_buf;
    if (b->len + w->alog_out.len > ALOG_MAX) {
        __atomic_add_fetch(&rmr_alog_dropped, 1, __ATOMIC_RELAXED);
        return;
    }
    /* the time, formatted once per second per worker */
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    if (ts.tv_sec != w->alog_sec) {
        struct tm tm;
        gmtime_r(&ts.tv_sec, &tm);
        strftime(w->alog_stamp, sizeof(w->alog_stamp), "%Y-%m-%dT%H:%M:%S", &tm);
        w->alog_sec = ts.tv_sec;
    }
    const char *auth, *path;
    size_t alen, plen;
    req_target(&st->req, &auth, &alen, &path, &plen);
    const conn_t *top = d->virt ? d->parent : d;
    const rmr_config_t *cfg = st->view->config;
    int inbound =
        top->lst && top->lst->index < cfg->n_listeners && cfg->listeners[top->lst->index].inbound;
    rmr_buf_printf(b, "{\"time\":\"%s.%03ldZ\",\"listener\":\"%s\",\"client\":\"%s\"",
                   w->alog_stamp, ts.tv_nsec / 1000000, inbound ? "inbound" : "outbound",
                   d->client_ip);
    json_s(b, "method", st->method);
    json_n(b, "authority", auth, alen);
    json_n(b, "path", path, plen > 2048 ? 2048 : plen);
    rmr_buf_printf(b, ",\"protocol\":\"%s\",\"status\":%d,\"duration_us\":%lu",
                   d->virt ? "HTTP/2" : "HTTP/1.1", st->status,
                   (unsigned long)(rmr_clock_us() - st->start_us));
    if (st->cluster)
        json_s(b, "service", st->cluster->conf->name);
    if (st->route >= 0 && (size_t)st->route < cfg->n_routes)
        json_s(b, "route", cfg->routes[st->route].name);
    if (st->subset)
        json_s(b, "subset", st->subset->name);
    if (st->lane_len)
        json_n(b, "lane", st->lane, st->lane_len);
    if (st->attempt)
        rmr_buf_printf(b, ",\"attempts\":%u", st->attempt);
    if (st->ep)
        json_s(b, "upstream", st->ep->conf->addr.text);
    json_s(b, "reason", st->reason);
    if (st->fault)
        json_s(b, "fault", st->fault == 1 ? "abort" : "delay");
    if (st->mirrored)
        rmr_buf_str(b, ",\"mirrored\":true");
    if (st->idem_hit || st->replayed)
        rmr_buf_str(b, ",\"idempotent_replay\":true");
    if (top->tls) {
        const char *id = tls_peer_identity(top->tls);
        json_s(b, "peer_identity", id);
    }
    rmr_buf_str(b, "}\n");
    if (b->oom) {
        b->len = 0;
        b->oom = 0;
        __atomic_add_fetch(&rmr_alog_dropped, 1, __ATOMIC_RELAXED);
        return;
    }
    if (b->len >= ALOG_FLUSH)
        alog_start(w);
}
