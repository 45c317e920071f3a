/*
 * remora-control: the control plane, and the default trace collector of the mesh.
 *
 *   remora-control --listen ADDR:PORT [--http ADDR:PORT] [--data DIR] [--max-spans N]
 *
 * Start-up order: the listeners are bound first (a port in use fails fast, before a long log
 * replay), then the store replays DIR/spans.log, then the accept threads start; connections
 * made meanwhile wait in the listen backlog and see the replayed traces.
 * Exit status: 0 after SIGTERM/SIGINT, 2 for bad arguments, an unusable --data or a port that
 * cannot be bound, 1 for other start-up failures.
 */
#include <errno.h>
#include <getopt.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "remora/log.h"
#include "rc_http.h"
#include "rc_store.h"

#ifndef REMORA_VERSION
#define REMORA_VERSION "dev"
#endif

#define DEFAULT_MAX_SPANS 200000
#define MAX_MAX_SPANS 100000000ull
#define SHUTDOWN_WAIT_MS 5000

static void usage(FILE *f)
{
    fprintf(f,
            "usage: remora-control --listen ADDR:PORT [--http ADDR:PORT] [--data DIR]\n"
            "                      [--max-spans N] [--verbose]\n"
            "\n"
            "  --listen ADDR:PORT  gRPC (HTTP/2, prior knowledge) and HTTP/1.1 on one port:\n"
            "                      remoractl, sidecars, OTLP/HTTP at /v1/traces, the web page\n"
            "  --http ADDR:PORT    HTTP/1.1 only: OTLP/HTTP at /v1/traces, /api/traces, the web\n"
            "                      page at /\n"
            "  --data DIR          keep spans in DIR/spans.log so traces survive a restart\n"
            "                      (created if missing; without it they live in memory only)\n"
            "  --max-spans N       spans kept in memory, oldest traces evicted first (default\n"
            "                      %d)\n"
            "  --verbose, -v       log every request\n"
            "  --version, --help\n"
            "\n"
            "ADDR is an IPv4 address, [IPv6] or a host name; PORT 0 picks a free port.\n",
            DEFAULT_MAX_SPANS);
}

static int bad_arg(const char *fmt, const char *a, const char *b)
{
    fprintf(stderr, "remora-control: ");
    fprintf(stderr, fmt, a, b);
    fprintf(stderr, "\n");
    usage(stderr);
    return 2;
}

int main(int argc, char **argv)
{
    static const struct option opts[] = {
        {"listen", required_argument, NULL, 'l'}, {"http", required_argument, NULL, 'H'},
        {"data", required_argument, NULL, 'd'},   {"max-spans", required_argument, NULL, 'm'},
        {"verbose", no_argument, NULL, 'v'},      {"version", no_argument, NULL, 'V'},
        {"help", no_argument, NULL, 'h'},         {NULL, 0, NULL, 0},
    };
    const char *listen_addr = NULL, *http_addr = NULL, *data_dir = NULL;
    uint64_t max_spans = DEFAULT_MAX_SPANS;
    int c;
    opterr = 0;
    while ((c = getopt_long(argc, argv, "v", opts, NULL)) != -1) {
        switch (c) {
        case 'l':
            listen_addr = optarg;
            break;
        case 'H':
            http_addr = optarg;
            break;
        case 'd':
            if (!*optarg)
                return bad_arg("--data: expected a directory%s%s", "", "");
            data_dir = optarg;
            break;
        case 'm': {
            char *end;
            errno = 0;
            unsigned long long v = strtoull(optarg, &end, 10);
            if (errno || end == optarg || *end || optarg[0] == '-' || v < 1 || v > MAX_MAX_SPANS)
                return bad_arg("--max-spans: expected 1..100000000, got \"%s\"%s", optarg, "");
            max_spans = v;
            break;
        }
        case 'v':
            rmr_log_level = RMR_LOG_DEBUG;
            break;
        case 'V':
            printf("remora-control %s\n", REMORA_VERSION);
            return 0;
        case 'h':
            usage(stdout);
            return 0;
        default:
            if (optopt)
                return bad_arg("option %s%s needs a value", argv[optind - 1], "");
            return bad_arg("unknown option \"%s\"%s", argv[optind - 1], "");
        }
    }
    if (optind < argc)
        return bad_arg("unexpected argument \"%s\"%s", argv[optind], "");
    if (!listen_addr && !http_addr)
        return bad_arg("give --listen ADDR:PORT (and/or --http ADDR:PORT)%s%s", "", "");

    /* Signals go to sigwait in this thread only: every thread made later inherits the mask. */
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    signal(SIGPIPE, SIG_IGN);
    rmr_log_set_thread("control");

    char err[512];
    rc_listener_t *ls[2] = {NULL, NULL};
    int nl = 0, status = 2;
    rc_store_t *store = NULL;
    if (listen_addr) {
        ls[nl] = rc_listener_new("--listen", listen_addr, 1, err, sizeof(err));
        if (!ls[nl])
            goto fail_msg;
        nl++;
    }
    if (http_addr) {
        ls[nl] = rc_listener_new("--http", http_addr, 0, err, sizeof(err));
        if (!ls[nl])
            goto fail_msg;
        nl++;
    }
    store = rc_store_new(max_spans, data_dir, err, sizeof(err));
    if (!store)
        goto fail_msg;
    status = 1;
    for (int i = 0; i < nl; i++) {
        int ret = rc_listener_start(ls[i], store);
        if (ret < 0) {
            snprintf(err, sizeof(err), "cannot start the accept thread: %s", strerror(-ret));
            goto fail_msg;
        }
    }
    rc_store_stats_t st;
    rc_store_stats(store, &st);
    RMR_INFO(
        "remora-control %s: %s%s%s%s%s%s; %s%s; max %llu spans (%llu spans in %llu traces "
        "loaded)",
        REMORA_VERSION, listen_addr ? "--listen " : "", listen_addr ? rc_listener_addr(ls[0]) : "",
        listen_addr ? " (gRPC, HTTP/1.1)" : "", listen_addr && http_addr ? ", " : "",
        http_addr ? "--http " : "", http_addr ? rc_listener_addr(ls[nl - 1]) : "",
        data_dir ? "data " : "", data_dir ? data_dir : "no --data: traces in memory only",
        (unsigned long long)max_spans, (unsigned long long)st.spans, (unsigned long long)st.traces);

    int sig = 0;
    while (sigwait(&set, &sig) != 0)
        ;
    RMR_INFO("%s: stopping", sig == SIGTERM ? "SIGTERM" : "SIGINT");
    for (int i = 0; i < nl; i++)
        rc_listener_free(ls[i]);
    if (rc_http_shutdown(SHUTDOWN_WAIT_MS) < 0) {
        /* A connection thread is stuck: the store stays, the process ends anyway. */
        RMR_WARN("connections still open after %d ms; exiting anyway", SHUTDOWN_WAIT_MS);
        return 0;
    }
    rc_store_free(store);
    return 0;

fail_msg:
    fprintf(stderr, "remora-control: %s\n", err);
    for (int i = 0; i < nl; i++)
        rc_listener_free(ls[i]);
    rc_store_free(store);
    return status;
}
