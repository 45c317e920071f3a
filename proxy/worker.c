/*
 * Workers: one thread, one io_uring, its own SO_REUSEPORT listeners, connections and upstream
 * pools. A worker shares nothing on the request path; it looks at the global config
 * generation once per wake-up and builds its own view of a new snapshot.
 */
#include <errno.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "remora/log.h"
#include "proxy.h"

remora_t rmr_g = {.config_lock = PTHREAD_MUTEX_INITIALIZER, .batch_wait_us = 200};
rmr_loop_t *rmr_main_loop;

view_t *view_get(view_t *v)
{
    v->refs++;
    return v;
}

void view_put(view_t *v)
{
    if (!v || --v->refs > 0)
        return;
    for (uint32_t i = 0; i < v->n_clusters; i++) {
        cluster_t *c = &v->clusters[i];
        for (uint32_t k = 0; k < c->n_endpoints; k++) {
            h1_pool_drop(&c->endpoints[k]);
            h2_pool_drop(&c->endpoints[k]);
        }
        free(c->endpoints);
    }
    filters_view_free(v);
    free(v->clusters);
    rmr_config_unref(v->config);
    free(v);
}

static view_t *view_build(worker_t *w, rmr_config_t *cfg, view_t *old)
{
    view_t *v = calloc(1, sizeof(*v));
    if (!v)
        return NULL;
    v->refs = 1;
    v->config = rmr_config_ref(cfg);
    v->n_clusters = (uint32_t)cfg->n_services;
    v->clusters = calloc(cfg->n_services ? cfg->n_services : 1, sizeof(cluster_t));
    if (!v->clusters)
        goto fail;
    for (size_t i = 0; i < cfg->n_services; i++) {
        const rmr_service_conf_t *sc = &cfg->services[i];
        cluster_t *c = &v->clusters[i];
        c->conf = sc;
        c->view = v;
        c->rr = w->id;
        rmr_svc_stats_t *ss = rmr_stats_service(sc->name);
        if (!ss)
            goto fail;
        c->stats = &ss->w[w->id];
        c->n_endpoints = (uint32_t)sc->n_endpoints;
        c->endpoints = calloc(sc->n_endpoints ? sc->n_endpoints : 1, sizeof(endpoint_t));
        if (!c->endpoints)
            goto fail;
        for (size_t k = 0; k < sc->n_endpoints; k++) {
            endpoint_t *ep = &c->endpoints[k];
            ep->conf = &sc->endpoints[k];
            ep->cluster = c;
            list_init(&ep->idle);
            list_init(&ep->h2conns);
            rmr_ep_stats_t *es = rmr_stats_endpoint(ss, ep->conf->addr.text);
            if (!es)
                goto fail;
            ep->stats = &es->w[w->id];
        }
    }
    if (filters_view_setup(w, v) < 0)
        goto fail;
    if (old) {
        for (uint32_t i = 0; i < v->n_clusters; i++) {
            cluster_t *c = &v->clusters[i];
            for (uint32_t j = 0; j < old->n_clusters; j++) {
                cluster_t *oc = &old->clusters[j];
                if (strcmp(oc->conf->name, c->conf->name))
                    continue;
                for (uint32_t k = 0; k < c->n_endpoints; k++)
                    for (uint32_t m = 0; m < oc->n_endpoints; m++)
                        if (!strcmp(c->endpoints[k].conf->addr.text,
                                    oc->endpoints[m].conf->addr.text)) {
                            h1_pool_move(&oc->endpoints[m], &c->endpoints[k]);
                            h2_pool_move(&oc->endpoints[m], &c->endpoints[k]);
                        }
            }
        }
    }
    return v;
fail:
    view_put(v);
    return NULL;
}

static void worker_check_config(worker_t *w)
{
    uint64_t gen = __atomic_load_n(&rmr_g.config_gen, __ATOMIC_ACQUIRE);
    if (gen == w->config_gen)
        return;
    pthread_mutex_lock(&rmr_g.config_lock);
    rmr_config_t *cfg = rmr_config_ref(rmr_g.config);
    gen = rmr_g.config_gen;
    pthread_mutex_unlock(&rmr_g.config_lock);
    view_t *v = view_build(w, cfg, w->view);
    rmr_config_unref(cfg);
    if (!v) {
        RMR_ERR("out of memory building the new config view; keeping the old one");
        return;
    }
    view_put(w->view);
    w->view = v;
    w->config_gen = gen;
    RMR_STAT_INC(rmr_wstats[w->id].config_swaps);
}

/* ---- listeners ---- */

static void listener_arm(listener_t *l);

static void on_accept(rmr_loop_t *loop, rmr_op_t *op, int res, unsigned flags)
{
    listener_t *l = (listener_t *)((char *)op - offsetof(listener_t, accept_op));
    worker_t *w = l->w;
    (void)loop;
    if (!(flags & IORING_CQE_F_MORE))
        l->armed = 0;
    if (res >= 0) {
        h1_accept(w, l, res);
    } else if (res != -ECANCELED) {
        static __thread uint64_t last_log;
        if (w->loop.now_ms - last_log > 1000) {
            RMR_WARN("accept on %s: %s", l->conf->addr.text, strerror(-res));
            last_log = w->loop.now_ms;
        }
    }
    if (!l->armed) {
        if (w->draining || l->fd < 0) {
            if (l->fd >= 0)
                close(l->fd);
            l->fd = -1;
        } else {
            listener_arm(l);
        }
    }
}

static void listener_arm(listener_t *l)
{
    struct io_uring_sqe *sqe = rmr_loop_sqe(&l->w->loop);
    io_uring_prep_multishot_accept(sqe, l->fd, NULL, NULL, SOCK_CLOEXEC);
    io_uring_sqe_set_data(sqe, &l->accept_op);
    l->armed = 1;
}

static int listener_open(worker_t *w, listener_t *l)
{
    const rmr_addr_t *a = &l->conf->addr;
    int fd = socket(a->ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one));
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one)); /* inherited by accepted */
    if (bind(fd, (const struct sockaddr *)&a->ss, a->len) < 0 || listen(fd, 4096) < 0) {
        int err = -errno;
        close(fd);
        return err;
    }
    l->fd = fd;
    l->w = w;
    l->accept_op.cb = on_accept;
    listener_arm(l);
    return 0;
}

static void listeners_close(worker_t *w)
{
    for (size_t i = 0; i < w->n_listeners; i++) {
        listener_t *l = &w->listeners[i];
        if (l->fd < 0)
            continue;
        if (l->armed) {
            /* shutdown ends the multishot accept; on_accept then closes the socket */
            shutdown(l->fd, SHUT_RDWR);
            struct io_uring_sqe *sqe = rmr_loop_sqe(&w->loop);
            io_uring_prep_cancel(sqe, &l->accept_op, 0);
            io_uring_sqe_set_data64(sqe, 0);
        } else {
            close(l->fd);
            l->fd = -1;
        }
    }
}

/* ---- draining ---- */

static void on_drain_timer(rmr_loop_t *loop, rmr_timer_t *t)
{
    worker_t *w = (worker_t *)((char *)t - offsetof(worker_t, drain_timer));
    (void)loop;
    if (w->nconns)
        RMR_WARN("drain deadline reached; closing %u connections", w->nconns);
    w->loop.stop = 1;
}

static void on_filter_timer(rmr_loop_t *loop, rmr_timer_t *t)
{
    worker_t *w = (worker_t *)((char *)t - offsetof(worker_t, filter_timer));
    filters_tick(w);
    alog_tick(w);
    rmr_timer_set(loop, t, 100);
}

static void worker_before_wait(rmr_loop_t *loop)
{
    h2_flush_dirty(loop->data);
}

static void worker_wake(rmr_loop_t *loop)
{
    worker_t *w = loop->data;
    worker_check_config(w);
    if (__atomic_load_n(&rmr_g.draining, __ATOMIC_ACQUIRE) && !w->draining) {
        w->draining = 1;
        listeners_close(w);
        h1_drain(w);
        w->drain_timer.cb = on_drain_timer;
        rmr_timer_set(loop, &w->drain_timer, w->view->config->limits.drain_timeout_ms);
        if (w->nconns == 0)
            loop->stop = 1;
    }
}

void worker_notify(worker_t *w)
{
    rmr_loop_wake(&w->loop);
}

static void *worker_main(void *arg)
{
    worker_t *w = arg;
    char name[16];
    snprintf(name, sizeof(name), "w%u", w->id);
    rmr_log_set_thread(name);
    w->rng = 0x9E3779B97F4A7C15ULL * (w->id + 1) ^ rmr_clock_us();
    list_init(&w->conns);
    list_init(&w->h2dirty);
    int ret = rmr_loop_init(&w->loop, 4096, 512, 16384);
    if (ret < 0) {
        w->start_err = ret;
        snprintf(w->start_msg, sizeof(w->start_msg), "%s (%s)", rmr_loop_explain(ret),
                 strerror(-ret));
        sem_post(&w->started);
        return NULL;
    }
    w->loop.data = w;
    w->loop.batch_wait_us = rmr_g.batch_wait_us;
    w->loop.busy_poll_us = rmr_g.busy_poll_us;
    w->loop.on_wake = worker_wake;
    w->loop.before_wait = worker_before_wait;
    pthread_mutex_lock(&rmr_g.config_lock);
    w->running = 1;
    pthread_mutex_unlock(&rmr_g.config_lock);
    w->config_gen = ~0ULL;
    rmr_svc_stats_t *unrouted = rmr_stats_service("");
    if (unrouted)
        w->unrouted = &unrouted->w[w->id];
    worker_check_config(w);
    if (!w->view || !w->unrouted) {
        w->start_err = -ENOMEM;
        snprintf(w->start_msg, sizeof(w->start_msg), "out of memory");
        goto fail;
    }
    const rmr_config_t *cfg = w->view->config;
    w->n_listeners = cfg->n_listeners;
    w->listeners = calloc(cfg->n_listeners ? cfg->n_listeners : 1, sizeof(listener_t));
    for (size_t i = 0; w->listeners && i < cfg->n_listeners; i++)
        w->listeners[i].fd = -1;
    for (size_t i = 0; w->listeners && i < cfg->n_listeners; i++) {
        w->listeners[i].conf = &cfg->listeners[i];
        w->listeners[i].index = i;
        ret = listener_open(w, &w->listeners[i]);
        if (ret < 0) {
            w->start_err = ret;
            snprintf(w->start_msg, sizeof(w->start_msg), "cannot listen on %s: %s",
                     cfg->listeners[i].addr.text, strerror(-ret));
            goto fail;
        }
    }
    w->mirror = rmr_mirror_new(&w->loop, 64, 4u << 20); /* NULL: mirroring is off here */
    if (!w->mirror)
        RMR_WARN("out of memory for mirroring: requests are not mirrored by this worker");
    sem_post(&w->started);
    w->filter_timer.cb = on_filter_timer;
    rmr_timer_set(&w->loop, &w->filter_timer, 100);
    rmr_loop_run(&w->loop);

    RMR_DEBUG("loop: %lu turns, %lu completions", w->loop.turns, w->loop.cqes);
    /* Stopped: close what is left and reap the completions before freeing. */
    listeners_close(w);
    h1_close_all(w);
    view_put(w->view);
    w->view = NULL;
    uint64_t deadline = rmr_clock_ms() + 500;
    while (w->nalloc && rmr_clock_ms() < deadline)
        rmr_loop_turn(&w->loop, 10);
    rmr_mirror_free(w->mirror); /* cancels the shadows in flight, turning the loop */
    w->mirror = NULL;
    alog_tick(w);
    while (w->alog_busy && rmr_clock_ms() < deadline + 500)
        rmr_loop_turn(&w->loop, 10);
    if (!w->alog_busy)
        alog_worker_exit(w);
    for (size_t i = 0; i < w->n_listeners; i++)
        if (w->listeners[i].fd >= 0)
            close(w->listeners[i].fd);
    free(w->listeners);
    h1_pools_free(w);
    pthread_mutex_lock(&rmr_g.config_lock);
    w->running = 0;
    pthread_mutex_unlock(&rmr_g.config_lock);
    rmr_loop_free(&w->loop);
    __atomic_store_n(&w->exited, 1, __ATOMIC_RELEASE);
    if (rmr_main_loop)
        rmr_loop_wake(rmr_main_loop);
    return NULL;
fail:
    for (size_t i = 0; w->listeners && i < w->n_listeners; i++)
        if (w->listeners[i].fd >= 0)
            close(w->listeners[i].fd);
    sem_post(&w->started);
    return NULL;
}

int worker_start(worker_t *w)
{
    sem_init(&w->started, 0, 0);
    int ret = pthread_create(&w->thread, NULL, worker_main, w);
    if (ret)
        return -ret;
    sem_wait(&w->started);
    return w->start_err;
}
