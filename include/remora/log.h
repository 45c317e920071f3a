/*
 * Logging: one line per event on stderr, "LEVEL remora[worker]: message". Any thread.
 */
#ifndef REMORA_LOG_H
#define REMORA_LOG_H

enum { RMR_LOG_ERROR = 0, RMR_LOG_WARN, RMR_LOG_INFO, RMR_LOG_DEBUG };

extern int rmr_log_level;
/* The calling thread's name in log lines ("main", "w0", ...). */
void rmr_log_set_thread(const char *name);
void rmr_log(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define RMR_ERR(...) rmr_log(RMR_LOG_ERROR, __VA_ARGS__)
#define RMR_WARN(...) rmr_log(RMR_LOG_WARN, __VA_ARGS__)
#define RMR_INFO(...) rmr_log(RMR_LOG_INFO, __VA_ARGS__)
#define RMR_DEBUG(...)                                                                             \
    do {                                                                                           \
        if (rmr_log_level >= RMR_LOG_DEBUG)                                                        \
            rmr_log(RMR_LOG_DEBUG, __VA_ARGS__);                                                   \
    } while (0)

#endif
