/*
 * remora: the sidecar data plane. The main thread loads the config, starts the workers, and
 * then runs its own ring for signals, the admin listener and DNS.
 */
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <unistd.h>

#include "remora/log.h"
#include "admin.h"
#include "dns.h"
#include "proxy.h"

#ifndef REMORA_VERSION
#define REMORA_VERSION "dev"
#endif

extern rmr_loop_t *rmr_main_loop;

static struct {
    rmr_loop_t loop;
    int sfd;
    struct signalfd_siginfo si;
    rmr_op_t sig_op;
    const char *config_path;
    rmr_timer_t cert_timer;
    int busy_poll_cli; /* --busy-poll-us given: the bootstrap's busy_poll is not used */
} m = {.sfd = -1};

#define CERT_CHECK_MS 2000

/* Certificates and keys are re-read when their files change; connections stay. */
static void on_cert_timer(rmr_loop_t *loop, rmr_timer_t *t)
{
    char err[512];
    int rc = rmr_tls_reload(rmr_g.config, 0, err, sizeof(err));
    if (rc > 0)
        RMR_INFO("tls: certificate files changed: reloaded");
    else if (rc < 0)
        RMR_ERR("tls: certificate files changed but cannot be loaded, keeping the running "
                "ones: %s",
                err);
    rmr_timer_set(loop, t, CERT_CHECK_MS);
}

static void usage(FILE *f)
{
    fprintf(f, "usage: remora --config sidecar.yaml\n"
               "       remora --listen ADDR:PORT --upstream ADDR:PORT[,ADDR:PORT...] [--workers N]"
               " [--admin ADDR:PORT]\n"
               "options:\n"
               "  -c, --config FILE     sidecar bootstrap (mesh_file: names the mesh config)\n"
               "  -l, --listen ADDR     one-route mode: listen here (HTTP/1.1 and h2c)\n"
               "  -u, --upstream ADDRS  one-route mode: forward to these endpoints\n"
               "  -w, --workers N       worker threads (default: one per core)\n"
               "  -a, --admin ADDR      admin listener (/ready /stats /stats/prometheus /config "
               "/clusters)\n"
               "      --tls-cert FILE   one-route mode: terminate TLS on --listen (PEM chain;"
               " ALPN h2, http/1.1)\n"
               "      --tls-key FILE    its private key\n"
               "      --tls-ca FILE     require client certificates that chain to this bundle\n"
               "      --upstream-proto P  http1 (default) or http2 (h2c) toward --upstream\n"
               "      --batch-wait-us N  under load, how long a worker may wait to gather\n"
               "                        completions into one turn (default 200, 0 = off)\n"
               "      --busy-poll-us N  after work, poll for completions this long before\n"
               "                        sleeping: lower latency for more CPU (default 0 = off)\n"
               "  -v, --verbose         debug logging\n"
               "  -V, --version         print the version\n");
}

/* Publishes a new snapshot; takes over the caller's reference. Main thread. */
void rmr_config_publish(rmr_config_t *cfg)
{
    pthread_mutex_lock(&rmr_g.config_lock);
    rmr_config_t *old = rmr_g.config;
    rmr_g.config = cfg;
    __atomic_add_fetch(&rmr_g.config_gen, 1, __ATOMIC_RELEASE);
    /* Under the lock: a worker clears running under it too before its ring goes away. */
    for (unsigned i = 0; i < rmr_g.nworkers; i++)
        if (rmr_g.workers[i].running)
            worker_notify(&rmr_g.workers[i]);
    pthread_mutex_unlock(&rmr_g.config_lock);
    if (old)
        rmr_config_unref(old);
}

static void reload(void)
{
    if (!m.config_path) {
        RMR_INFO("SIGHUP: nothing to reload in one-route mode");
        return;
    }
    rmr_conf_err_t err;
    rmr_config_t *cfg = rmr_config_load(m.config_path, &err);
    if (!cfg) {
        __atomic_add_fetch(&rmr_config_reload_failures, 1, __ATOMIC_RELAXED);
        RMR_ERR("reload refused, keeping the running config: %s", err.msg);
        return;
    }
    /* Listeners and workers are fixed at start; the rest of the snapshot is swapped. */
    const rmr_config_t *cur = rmr_g.config;
    int same = cfg->n_listeners == cur->n_listeners && (!cfg->admin) == (!cur->admin) &&
               (!cfg->admin || !strcmp(cfg->admin->text, cur->admin->text));
    for (size_t i = 0; same && i < cfg->n_listeners; i++)
        same = !strcmp(cfg->listeners[i].addr.text, cur->listeners[i].addr.text) &&
               cfg->listeners[i].inbound == cur->listeners[i].inbound;
    if (!same)
        RMR_WARN("reload: listener and admin addresses take effect only at restart; "
                 "the running ones stay");
    if (cfg->workers && cfg->workers != cur->workers)
        RMR_WARN("reload: workers: %u takes effect only at restart", cfg->workers);
    cfg->workers = cur->workers;
    if (!m.busy_poll_cli && cfg->busy_poll_us != cur->busy_poll_us)
        RMR_WARN("reload: busy_poll takes effect only at restart");
    cfg->busy_poll_us = cur->busy_poll_us;
    char terr[512];
    if (trace_exporter_reload(cfg, 0, terr, sizeof(terr)) < 0) {
        __atomic_add_fetch(&rmr_config_reload_failures, 1, __ATOMIC_RELAXED);
        RMR_ERR("reload refused, keeping the running config: %s", terr);
        rmr_config_unref(cfg);
        return;
    }
    if (rmr_tls_reload(cfg, 1, terr, sizeof(terr)) < 0) {
        __atomic_add_fetch(&rmr_config_reload_failures, 1, __ATOMIC_RELAXED);
        RMR_ERR("reload refused, keeping the running config: %s", terr);
        rmr_config_unref(cfg);
        return;
    }
    rmr_tls_identities(cfg);
    if (trace_exporter_reload(cfg, 1, terr, sizeof(terr)) < 0)
        RMR_ERR("reload: %s; spans are exported as before", terr);
    /* SIGHUP reopens the access log too (rotation); a log that cannot be opened keeps the
     * old one */
    if (alog_reopen(cfg->access_log, terr, sizeof(terr)) < 0)
        RMR_ERR("reload: %s; the access log stays as it was", terr);
    rmr_config_publish(dns_fill(cfg));
    dns_config_changed();
    __atomic_add_fetch(&rmr_config_reloads, 1, __ATOMIC_RELAXED);
    RMR_INFO("config reloaded from %s", m.config_path);
}

static void start_drain(void)
{
    if (rmr_g.draining)
        return;
    RMR_INFO("draining: no new connections, finishing requests in flight");
    __atomic_store_n(&rmr_g.draining, 1, __ATOMIC_RELEASE);
    for (unsigned i = 0; i < rmr_g.nworkers; i++)
        if (__atomic_load_n(&rmr_g.workers[i].running, __ATOMIC_ACQUIRE))
            worker_notify(&rmr_g.workers[i]);
}

static void sig_arm(void);

static void on_signal(rmr_loop_t *loop, rmr_op_t *op, int res, unsigned flags)
{
    (void)loop;
    (void)op;
    (void)flags;
    if (res == (int)sizeof(m.si)) {
        switch (m.si.ssi_signo) {
        case SIGTERM:
        case SIGINT:
            start_drain();
            break;
        case SIGHUP:
            reload();
            break;
        default:
            break;
        }
    }
    sig_arm();
}

static void sig_arm(void)
{
    struct io_uring_sqe *sqe = rmr_loop_sqe(&m.loop);
    io_uring_prep_read(sqe, m.sfd, &m.si, sizeof(m.si), 0);
    io_uring_sqe_set_data(sqe, &m.sig_op);
}

static void main_wake(rmr_loop_t *loop)
{
    for (unsigned i = 0; i < rmr_g.nworkers; i++)
        if (!__atomic_load_n(&rmr_g.workers[i].exited, __ATOMIC_ACQUIRE))
            return;
    loop->stop = 1;
}

int main(int argc, char **argv)
{
    static const struct option opts[] = {
        {"config", required_argument, NULL, 'c'},
        {"listen", required_argument, NULL, 'l'},
        {"upstream", required_argument, NULL, 'u'},
        {"workers", required_argument, NULL, 'w'},
        {"admin", required_argument, NULL, 'a'},
        {"tls-cert", required_argument, NULL, 'C'},
        {"tls-key", required_argument, NULL, 'K'},
        {"tls-ca", required_argument, NULL, 'A'},
        {"upstream-proto", required_argument, NULL, 'P'},
        {"batch-wait-us", required_argument, NULL, 'B'},
        {"busy-poll-us", required_argument, NULL, 'Y'},
        {"verbose", no_argument, NULL, 'v'},
        {"version", no_argument, NULL, 'V'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *listen = NULL, *upstream = NULL, *admin = NULL;
    const char *tls_cert = NULL, *tls_key = NULL, *tls_ca = NULL;
    int up_h2 = 0;
    long workers = 0, busy_poll_us = -1;
    int c;
    while ((c = getopt_long(argc, argv, "c:l:u:w:a:vVh", opts, NULL)) != -1) {
        switch (c) {
        case 'c':
            m.config_path = optarg;
            break;
        case 'l':
            listen = optarg;
            break;
        case 'u':
            upstream = optarg;
            break;
        case 'a':
            admin = optarg;
            break;
        case 'C':
            tls_cert = optarg;
            break;
        case 'K':
            tls_key = optarg;
            break;
        case 'A':
            tls_ca = optarg;
            break;
        case 'P':
            if (!strcmp(optarg, "http2") || !strcmp(optarg, "h2")) {
                up_h2 = 1;
            } else if (strcmp(optarg, "http1") && strcmp(optarg, "http/1.1")) {
                fprintf(stderr, "remora: --upstream-proto: expected http1 or http2, got \"%s\"\n",
                        optarg);
                return 2;
            }
            break;
        case 'B': {
            char *end;
            long us = strtol(optarg, &end, 10);
            if (*end || end == optarg || us < 0 || us > 10000) {
                fprintf(stderr, "remora: --batch-wait-us: expected 0..10000, got \"%s\"\n", optarg);
                return 2;
            }
            rmr_g.batch_wait_us = (uint32_t)us;
            break;
        }
        case 'Y': {
            char *end;
            long us = strtol(optarg, &end, 10);
            if (*end || end == optarg || us < 0 || us > 10000) {
                fprintf(stderr, "remora: --busy-poll-us: expected 0..10000, got \"%s\"\n", optarg);
                return 2;
            }
            busy_poll_us = us;
            break;
        }
        case 'v':
            rmr_log_level = RMR_LOG_DEBUG;
            break;
        case 'V':
            printf("remora %s\n", REMORA_VERSION);
            return 0;
        case 'h':
            usage(stdout);
            return 0;
        case 'w': {
            char *end;
            workers = strtol(optarg, &end, 10);
            if (*end || workers < 1 || workers > RMR_MAX_WORKERS) {
                fprintf(stderr, "remora: --workers: expected 1..%d, got \"%s\"\n", RMR_MAX_WORKERS,
                        optarg);
                return 2;
            }
            break;
        }
        default:
            usage(stderr);
            return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "remora: unexpected argument \"%s\"\n", argv[optind]);
        usage(stderr);
        return 2;
    }
    if (m.config_path ? (listen || upstream) : !(listen && upstream)) {
        fprintf(stderr, "remora: give either --config FILE, or --listen and --upstream\n");
        usage(stderr);
        return 2;
    }

    rmr_conf_err_t err;
    rmr_config_t *cfg = m.config_path
                            ? rmr_config_load(m.config_path, &err)
                            : rmr_config_simple(listen, upstream, (unsigned)workers, admin, &err);
    if (!cfg) {
        fprintf(stderr, "remora: %s\n", err.msg);
        return 2;
    }
    if (!m.config_path) {
        if ((tls_cert != NULL) != (tls_key != NULL) || (tls_ca && !tls_cert)) {
            fprintf(stderr, "remora: --tls-cert and --tls-key go together (--tls-ca with them)\n");
            rmr_config_unref(cfg);
            return 2;
        }
        cfg->tls_cert = tls_cert;
        cfg->tls_key = tls_key;
        cfg->tls_ca = tls_ca;
        if (tls_cert)
            cfg->listeners[0].tls_mode = tls_ca ? RMR_TLS_MUTUAL : RMR_TLS_SIMPLE;
        if (up_h2)
            cfg->services[0].protocol = RMR_PROTO_HTTP2;
    } else if (tls_cert || tls_key || tls_ca || up_h2) {
        fprintf(stderr, "remora: --tls-* and --upstream-proto are for one-route mode; with "
                        "--config, write them in the config\n");
        rmr_config_unref(cfg);
        return 2;
    }
    char terr[512];
    if (rmr_tls_setup(cfg, terr, sizeof(terr)) < 0) {
        fprintf(stderr, "remora: %s\n", terr);
        rmr_config_unref(cfg);
        return 2;
    }
    rmr_tls_identities(cfg);
    if (cfg->access_log && alog_open(cfg->access_log, terr, sizeof(terr)) < 0) {
        fprintf(stderr, "remora: %s: %s\n", cfg->source, terr);
        rmr_config_unref(cfg);
        return 2;
    }
    if (workers)
        cfg->workers = (unsigned)workers;
    if (busy_poll_us >= 0) {
        cfg->busy_poll_us = (uint32_t)busy_poll_us;
        m.busy_poll_cli = 1;
    }
    rmr_g.busy_poll_us = cfg->busy_poll_us;
    if (!cfg->workers) {
        long n = sysconf(_SC_NPROCESSORS_ONLN);
        cfg->workers = n < 1 ? 1 : n > RMR_MAX_WORKERS ? RMR_MAX_WORKERS : (unsigned)n;
    }
    if (cfg->workers > RMR_MAX_WORKERS)
        cfg->workers = RMR_MAX_WORKERS;

    /* Signals go to the main ring through a signalfd; every thread blocks them. */
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGHUP);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    signal(SIGPIPE, SIG_IGN);

    int ret = rmr_loop_init(&m.loop, 256, 16, 4096);
    if (ret < 0) {
        fprintf(stderr, "remora: cannot start: %s (%s)\n", rmr_loop_explain(ret), strerror(-ret));
        return 1;
    }
    rmr_main_loop = &m.loop;
    m.loop.on_wake = main_wake;
    m.sfd = signalfd(-1, &set, SFD_CLOEXEC);
    m.sig_op.cb = on_signal;
    sig_arm();
    if (cfg->tls_cert) {
        m.cert_timer.cb = on_cert_timer;
        rmr_timer_set(&m.loop, &m.cert_timer, CERT_CHECK_MS);
    }

    rmr_g.nworkers = cfg->workers;
    rmr_g.workers = calloc(cfg->workers, sizeof(worker_t));
    if (!rmr_g.workers) {
        fprintf(stderr, "remora: out of memory\n");
        return 1;
    }
    if (trace_exporter_start(cfg, terr, sizeof(terr)) < 0) {
        fprintf(stderr, "remora: %s: %s\n", cfg->source, terr);
        return 2;
    }
    rmr_config_publish(rmr_config_ref(cfg)); /* main keeps its own reference to cfg */
    /* Resolve DNS services before the first request can need them (at most a second). */
    ret = dns_start(&m.loop);
    if (ret < 0) {
        fprintf(stderr, "remora: cannot start DNS resolution: %s\n", strerror(-ret));
        return 1;
    }
    uint64_t warm_until = rmr_clock_ms() + 1000;
    while (!dns_ready() && rmr_clock_ms() < warm_until)
        rmr_loop_turn(&m.loop, 50);
    filters_init();
    for (unsigned i = 0; i < rmr_g.nworkers; i++) {
        rmr_g.workers[i].id = i;
        ret = worker_start(&rmr_g.workers[i]);
        if (ret < 0) {
            fprintf(stderr, "remora: cannot start worker %u: %s\n", i, rmr_g.workers[i].start_msg);
            return 1;
        }
    }
    if (cfg->admin) {
        ret = admin_start(&m.loop, cfg->admin);
        if (ret < 0) {
            fprintf(stderr, "remora: cannot listen on admin %s: %s\n", cfg->admin->text,
                    strerror(-ret));
            return 1;
        }
    }
    for (size_t i = 0; i < cfg->n_listeners; i++)
        RMR_INFO("listening on %s (%s)", cfg->listeners[i].addr.text,
                 cfg->listeners[i].inbound ? "inbound" : "outbound");
    RMR_INFO("remora %s started: %u workers, %zu services, %zu routes%s%s", REMORA_VERSION,
             rmr_g.nworkers, cfg->n_services, cfg->n_routes, cfg->admin ? ", admin on " : "",
             cfg->admin ? cfg->admin->text : "");

    rmr_loop_run(&m.loop);

    for (unsigned i = 0; i < rmr_g.nworkers; i++)
        pthread_join(rmr_g.workers[i].thread, NULL);
    dns_stop();
    trace_exporter_stop(); /* what the workers finished goes out once more */
    rmr_config_unref(cfg);
    RMR_INFO("stopped");
    pthread_mutex_lock(&rmr_g.config_lock);
    rmr_config_unref(rmr_g.config);
    rmr_g.config = NULL;
    pthread_mutex_unlock(&rmr_g.config_lock);
    free(rmr_g.workers);
    rmr_loop_free(&m.loop);
    return 0;
}
