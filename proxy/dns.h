#ifndef REMORA_DNS_H
#define REMORA_DNS_H

#include "remora/config.h"
#include "remora/loop.h"

/*
 * DNS discovery with c-ares on the main thread's ring. Services with `dns:` are resolved at
 * start and every `refresh`; a changed answer publishes a new config snapshot. A failed lookup
 * keeps the last answer. IPv4 answers are preferred; IPv6 is used when there is no IPv4.
 * Main thread only.
 */
int dns_start(rmr_loop_t *loop);
/* 1 when every DNS service has had a first answer (or failure). */
int dns_ready(void);
/* Call after a new config was published: picks up added and removed DNS services. */
void dns_config_changed(void);
/* Returns cfg with the last known answers filled in (cfg itself, or a copy that took over the
 * reference). */
rmr_config_t *dns_fill(rmr_config_t *cfg);
void dns_stop(void);

#endif
