#ifndef REMORA_ADMIN_H
#define REMORA_ADMIN_H

#include "remora/config.h"
#include "remora/loop.h"

/* Starts the admin listener on loop (the main thread's). 0 or a negative errno. */
int admin_start(rmr_loop_t *loop, const rmr_addr_t *addr);
/* The /clusters document; malloc'd, caller frees; NULL on allocation failure. */
char *admin_render_clusters(unsigned nworkers);
/* /stats/prometheus: the data plane's metrics, then those of the filters' shared state. */
char *admin_render_prometheus(unsigned nworkers);

#endif
