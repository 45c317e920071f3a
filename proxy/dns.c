/*
 * DNS discovery: c-ares sockets are watched with poll ops on the main ring, and its timeouts
 * with a loop timer. See dns.h.
 */
#include <ares.h>
#include <arpa/inet.h>
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "remora/log.h"
#include "dns.h"
#include "proxy.h"

void rmr_config_publish(rmr_config_t *cfg);

#define MAX_SOCKS 16

typedef struct watch {
    rmr_op_t op;
    int fd;     /* -1: free */
    int events; /* what c-ares wants */
    int armed;  /* a poll op is in the kernel */
} watch_t;

typedef struct target {
    char *service;
    char *name;
    uint16_t port;
    uint32_t refresh_ms;
    rmr_timer_t timer;
    int answered;
    int inflight;
    int gone;          /* no longer in the config: free once the query returns */
    rmr_addr_t *addrs; /* last answer */
    size_t naddrs;
} target_t;

static struct {
    rmr_loop_t *loop;
    ares_channel ch;
    int started;
    watch_t watch[MAX_SOCKS];
    rmr_timer_t timer;
    target_t **targets;
    size_t ntargets;
} dns;

static void process_timeouts(void);

static void on_poll(rmr_loop_t *loop, rmr_op_t *op, int res, unsigned flags)
{
    watch_t *wt = (watch_t *)op;
    (void)loop;
    (void)flags;
    wt->armed = 0;
    if (wt->fd < 0)
        return;
    int fd = wt->fd;
    ares_socket_t r = ARES_SOCKET_BAD, w = ARES_SOCKET_BAD;
    if (res > 0) {
        if (res & (POLLIN | POLLERR | POLLHUP))
            r = fd;
        if (res & POLLOUT)
            w = fd;
    }
    if (res != -ECANCELED)
        ares_process_fd(dns.ch, r, w);
    /* c-ares may have closed the socket (state callback with 0,0) or want more. */
    if (wt->fd == fd && wt->events && !wt->armed) {
        struct io_uring_sqe *sqe = rmr_loop_sqe(dns.loop);
        io_uring_prep_poll_add(sqe, fd, (unsigned)wt->events);
        io_uring_sqe_set_data(sqe, &wt->op);
        wt->armed = 1;
    }
    process_timeouts();
}

static void sock_state(void *data, ares_socket_t fd, int readable, int writable)
{
    (void)data;
    watch_t *wt = NULL;
    for (int i = 0; i < MAX_SOCKS; i++)
        if (dns.watch[i].fd == fd)
            wt = &dns.watch[i];
    int events = (readable ? POLLIN : 0) | (writable ? POLLOUT : 0);
    if (!wt) {
        if (!events)
            return;
        for (int i = 0; i < MAX_SOCKS && !wt; i++)
            if (dns.watch[i].fd < 0 && !dns.watch[i].armed)
                wt = &dns.watch[i];
        if (!wt) {
            RMR_WARN("dns: too many resolver sockets");
            return;
        }
        wt->fd = fd;
        wt->op.cb = on_poll;
    }
    if (!events) {
        /* c-ares closes the socket after this: cancel the poll first */
        if (wt->armed) {
            struct io_uring_sqe *sqe = rmr_loop_sqe(dns.loop);
            io_uring_prep_poll_remove(sqe, (uint64_t)(uintptr_t)&wt->op);
            io_uring_sqe_set_data64(sqe, 0);
            io_uring_submit(&dns.loop->ring);
        }
        wt->fd = -1;
        wt->events = 0;
        return;
    }
    if (wt->armed && wt->events == events)
        return;
    if (wt->armed) {
        struct io_uring_sqe *sqe = rmr_loop_sqe(dns.loop);
        io_uring_prep_poll_update(sqe, (uint64_t)(uintptr_t)&wt->op, (uint64_t)(uintptr_t)&wt->op,
                                  (unsigned)events, IORING_POLL_UPDATE_EVENTS);
        io_uring_sqe_set_data64(sqe, 0);
        wt->events = events;
        return;
    }
    wt->events = events;
    struct io_uring_sqe *sqe = rmr_loop_sqe(dns.loop);
    io_uring_prep_poll_add(sqe, fd, (unsigned)events);
    io_uring_sqe_set_data(sqe, &wt->op);
    wt->armed = 1;
}

static void on_ares_timer(rmr_loop_t *loop, rmr_timer_t *t)
{
    (void)loop;
    (void)t;
    ares_process_fd(dns.ch, ARES_SOCKET_BAD, ARES_SOCKET_BAD);
    process_timeouts();
}

static void process_timeouts(void)
{
    struct timeval tv, *tvp = ares_timeout(dns.ch, NULL, &tv);
    if (tvp)
        rmr_timer_set(dns.loop, &dns.timer, (uint64_t)tvp->tv_sec * 1000 + tvp->tv_usec / 1000 + 1);
    else
        rmr_timer_stop(dns.loop, &dns.timer);
}

static void target_free(target_t *t)
{
    rmr_timer_stop(dns.loop, &t->timer);
    for (size_t i = 0; i < t->naddrs; i++)
        free(t->addrs[i].text);
    free(t->addrs);
    free(t->service);
    free(t->name);
    free(t);
}

static int addr_cmp(const void *a, const void *b)
{
    return strcmp(((const rmr_addr_t *)a)->text, ((const rmr_addr_t *)b)->text);
}

/* Publishes t's answer if the running config's endpoints differ from it. */
static void apply(target_t *t)
{
    pthread_mutex_lock(&rmr_g.config_lock);
    rmr_config_t *cfg = rmr_config_ref(rmr_g.config);
    pthread_mutex_unlock(&rmr_g.config_lock);
    ssize_t idx = rmr_config_service(cfg, t->service, strlen(t->service));
    if (idx < 0) {
        rmr_config_unref(cfg);
        return;
    }
    const rmr_service_conf_t *sc = &cfg->services[idx];
    int same = sc->n_endpoints == t->naddrs;
    for (size_t i = 0; same && i < t->naddrs; i++)
        same = !strcmp(sc->endpoints[i].addr.text, t->addrs[i].text);
    if (!same) {
        rmr_config_t *n = rmr_config_with_endpoints(cfg, (size_t)idx, t->addrs, t->naddrs);
        if (n) {
            RMR_INFO("dns: %s (%s) now has %zu endpoints", t->service, t->name, t->naddrs);
            rmr_config_publish(n);
        }
    }
    rmr_config_unref(cfg);
}

static void on_answer_nodes(target_t *t, struct ares_addrinfo_node *nodes);

static void on_answer(void *arg, int status, int timeouts, struct ares_addrinfo *res)
{
    target_t *t = arg;
    (void)timeouts;
    if (t->gone) {
        if (res)
            ares_freeaddrinfo(res);
        target_free(t);
        return;
    }
    if (status != ARES_SUCCESS || !res) {
        t->inflight = 0;
        t->answered = 1;
        RMR_WARN("dns: %s: lookup of %s failed: %s; keeping %zu endpoints", t->service, t->name,
                 ares_strerror(status), t->naddrs);
        rmr_timer_set(dns.loop, &t->timer, t->refresh_ms);
        return;
    }
    on_answer_nodes(t, res->nodes);
    ares_freeaddrinfo(res);
}

/* Takes an answer: the endpoints become its addresses (IPv4 preferred), sorted. */
static void on_answer_nodes(target_t *t, struct ares_addrinfo_node *nodes)
{
    t->inflight = 0;
    t->answered = 1;
    {
        size_t n4 = 0, n = 0;
        for (struct ares_addrinfo_node *nd = nodes; nd; nd = nd->ai_next) {
            n += nd->ai_family == AF_INET || nd->ai_family == AF_INET6;
            n4 += nd->ai_family == AF_INET;
        }
        rmr_addr_t *addrs = calloc(n ? n : 1, sizeof(*addrs));
        size_t k = 0;
        for (struct ares_addrinfo_node *nd = nodes; addrs && nd; nd = nd->ai_next) {
            if (nd->ai_family != AF_INET && nd->ai_family != AF_INET6)
                continue;
            if (n4 && nd->ai_family != AF_INET)
                continue;
            rmr_addr_t *a = &addrs[k];
            memcpy(&a->ss, nd->ai_addr, nd->ai_addrlen);
            a->len = (socklen_t)nd->ai_addrlen;
            char ip[INET6_ADDRSTRLEN], text[INET6_ADDRSTRLEN + 16];
            if (nd->ai_family == AF_INET) {
                ((struct sockaddr_in *)&a->ss)->sin_port = htons(t->port);
                inet_ntop(AF_INET, &((struct sockaddr_in *)&a->ss)->sin_addr, ip, sizeof(ip));
                snprintf(text, sizeof(text), "%s:%u", ip, t->port);
            } else {
                ((struct sockaddr_in6 *)&a->ss)->sin6_port = htons(t->port);
                inet_ntop(AF_INET6, &((struct sockaddr_in6 *)&a->ss)->sin6_addr, ip, sizeof(ip));
                snprintf(text, sizeof(text), "[%s]:%u", ip, t->port);
            }
            a->text = strdup(text);
            if (!a->text)
                break;
            /* the same address twice (e.g. one per socket type) is one endpoint */
            int dup = 0;
            for (size_t j = 0; j < k; j++)
                dup |= !strcmp(addrs[j].text, a->text);
            if (dup) {
                free(a->text);
                a->text = NULL;
                continue;
            }
            k++;
        }
        if (addrs) {
            qsort(addrs, k, sizeof(*addrs), addr_cmp);
            for (size_t i = 0; i < t->naddrs; i++)
                free(t->addrs[i].text);
            free(t->addrs);
            t->addrs = addrs;
            t->naddrs = k;
            apply(t);
        }
    }
    rmr_timer_set(dns.loop, &t->timer, t->refresh_ms);
}

/* RFC 6761 6.3: "localhost" names always mean the loopback address, whatever /etc/hosts or
 * the resolver (a minimal container may have neither) would say. */
static int is_localhost(const char *name)
{
    size_t n = strlen(name);
    if (n && name[n - 1] == '.')
        n--;
    return (n == 9 && !strncasecmp(name, "localhost", 9)) ||
           (n > 10 && !strncasecmp(name + n - 10, ".localhost", 10));
}

static void query(target_t *t)
{
    if (t->inflight)
        return;
    if (is_localhost(t->name)) {
        struct ares_addrinfo *ai = calloc(1, sizeof(*ai));
        struct ares_addrinfo_node *nd = calloc(1, sizeof(*nd));
        struct sockaddr_in *sin = calloc(1, sizeof(*sin));
        if (!ai || !nd || !sin) {
            free(ai);
            free(nd);
            free(sin);
            rmr_timer_set(dns.loop, &t->timer, t->refresh_ms);
            return;
        }
        sin->sin_family = AF_INET;
        sin->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        nd->ai_family = AF_INET;
        nd->ai_addr = (struct sockaddr *)sin;
        nd->ai_addrlen = sizeof(*sin);
        ai->nodes = nd;
        t->inflight = 1;
        on_answer_nodes(t, ai->nodes);
        free(sin);
        free(nd);
        free(ai);
        return;
    }
    t->inflight = 1;
    char port[8];
    snprintf(port, sizeof(port), "%u", t->port);
    struct ares_addrinfo_hints hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
    ares_getaddrinfo(dns.ch, t->name, port, &hints, on_answer, t);
    process_timeouts();
}

static void on_refresh(rmr_loop_t *loop, rmr_timer_t *tm)
{
    target_t *t = (target_t *)((char *)tm - offsetof(target_t, timer));
    (void)loop;
    query(t);
}

void dns_config_changed(void)
{
    if (!dns.started)
        return;
    pthread_mutex_lock(&rmr_g.config_lock);
    rmr_config_t *cfg = rmr_config_ref(rmr_g.config);
    pthread_mutex_unlock(&rmr_g.config_lock);
    /* drop targets no longer configured */
    size_t keep = 0;
    for (size_t i = 0; i < dns.ntargets; i++) {
        target_t *t = dns.targets[i];
        ssize_t idx = rmr_config_service(cfg, t->service, strlen(t->service));
        const rmr_service_conf_t *sc = idx >= 0 ? &cfg->services[idx] : NULL;
        if (!sc || !sc->dns_name || strcmp(sc->dns_name, t->name) || sc->dns_port != t->port) {
            t->gone = 1;
            rmr_timer_stop(dns.loop, &t->timer);
            if (!t->inflight)
                target_free(t);
            continue;
        }
        t->refresh_ms = sc->dns_refresh_ms ? sc->dns_refresh_ms : 5000;
        dns.targets[keep++] = t;
    }
    dns.ntargets = keep;
    for (size_t i = 0; i < cfg->n_services; i++) {
        const rmr_service_conf_t *sc = &cfg->services[i];
        if (!sc->dns_name)
            continue;
        int known = 0;
        for (size_t k = 0; k < dns.ntargets; k++)
            known |= !strcmp(dns.targets[k]->service, sc->name);
        if (known)
            continue;
        target_t **ts = realloc(dns.targets, (dns.ntargets + 1) * sizeof(*ts));
        target_t *t = calloc(1, sizeof(*t));
        if (!ts || !t) {
            free(t);
            if (ts)
                dns.targets = ts;
            RMR_ERR("dns: out of memory");
            break;
        }
        dns.targets = ts;
        t->service = strdup(sc->name);
        t->name = strdup(sc->dns_name);
        t->port = sc->dns_port;
        t->refresh_ms = sc->dns_refresh_ms ? sc->dns_refresh_ms : 5000;
        t->timer.cb = on_refresh;
        dns.targets[dns.ntargets++] = t;
        query(t);
    }
    rmr_config_unref(cfg);
}

rmr_config_t *dns_fill(rmr_config_t *cfg)
{
    for (size_t i = 0; i < dns.ntargets; i++) {
        target_t *t = dns.targets[i];
        if (!t->answered)
            continue;
        ssize_t idx = rmr_config_service(cfg, t->service, strlen(t->service));
        if (idx < 0 || !cfg->services[idx].dns_name)
            continue;
        rmr_config_t *n = rmr_config_with_endpoints(cfg, (size_t)idx, t->addrs, t->naddrs);
        if (n) {
            rmr_config_unref(cfg);
            cfg = n;
        }
    }
    return cfg;
}

int dns_ready(void)
{
    for (size_t i = 0; i < dns.ntargets; i++)
        if (!dns.targets[i]->answered)
            return 0;
    return 1;
}

int dns_start(rmr_loop_t *loop)
{
    int ret = ares_library_init(ARES_LIB_INIT_ALL);
    if (ret != ARES_SUCCESS)
        return -ENOMEM;
    dns.loop = loop;
    for (int i = 0; i < MAX_SOCKS; i++)
        dns.watch[i].fd = -1;
    struct ares_options o = {0};
    o.sock_state_cb = sock_state;
    o.timeout = 2000;
    o.tries = 2;
    ret = ares_init_options(&dns.ch, &o,
                            ARES_OPT_SOCK_STATE_CB | ARES_OPT_TIMEOUTMS | ARES_OPT_TRIES);
    if (ret != ARES_SUCCESS) {
        RMR_ERR("dns: c-ares init failed: %s", ares_strerror(ret));
        return -EINVAL;
    }
    dns.timer.cb = on_ares_timer;
    dns.started = 1;
    dns_config_changed();
    return 0;
}

void dns_stop(void)
{
    if (!dns.started)
        return;
    /* Targets with a query in flight are freed by its callback, which ares_destroy runs. */
    for (size_t i = 0; i < dns.ntargets; i++) {
        target_t *t = dns.targets[i];
        t->gone = 1;
        if (!t->inflight)
            target_free(t);
    }
    free(dns.targets);
    dns.targets = NULL;
    dns.ntargets = 0;
    ares_destroy(dns.ch);
    rmr_timer_stop(dns.loop, &dns.timer);
    dns.started = 0;
    ares_library_cleanup();
}
