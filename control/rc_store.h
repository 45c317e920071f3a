/*
 * The trace store of remora-control: recent spans received as OTLP (ExportTraceServiceRequest),
 * grouped by trace, queried by the HTTP API and the gRPC service (control/API.md).
 *
 * Threads: every function may be called from any thread; the store locks itself (one mutex,
 * held for table work only: decoding, rendering and copying out happen outside it, or on data
 * that only the caller sees).
 *
 * Bounds: at most max_spans spans and RC_STORE_MAX_BYTES bytes of span data are kept in memory;
 * past either, whole traces are evicted, least recently updated first (a trace that receives a
 * span moves to the back of the line), and counted. A trace keeps at most RC_TRACE_MAX_SPANS
 * spans; a span at most RC_SPAN_MAX_ATTRS attributes and RC_SPAN_MAX_EVENTS events (each with
 * at most RC_SPAN_MAX_ATTRS attributes); strings longer than RC_STR_MAX bytes are cut (on a UTF-8
 * boundary). Every string the store hands out is valid UTF-8 without NUL (invalid bytes become
 * U+FFFD), so it can go into JSON or a protobuf string field as it is.
 *
 * Persistence: with a data directory, every OTLP body that adds at least one span is appended
 * to DIR/spans.log as one record, and the log is replayed by rc_store_new, so traces survive a
 * restart. The log is two segments: when spans.log holds max_spans spans (or
 * RC_LOG_SEGMENT_MAX bytes) it becomes spans.log.1 (replacing the older one) and a new spans.log
 * starts, so the disk holds at most about twice what memory can, and replaying both segments
 * refills the memory. File format: the 16-byte header "remora-spans-v1\n", then records of
 * [u32 little-endian length][u32 little-endian CRC-32 of the body][body]. A torn or corrupt tail
 * (a crash mid-write) is cut off at the last good record, with a warning. The directory is locked
 * (flock on DIR/lock): a second remora-control on the same DIR fails to start.
 */
#ifndef RC_STORE_H
#define RC_STORE_H

#include <stddef.h>
#include <stdint.h>

#define RC_TRACE_ID_LEN 16
#define RC_SPAN_ID_LEN 8

#define RC_STORE_MAX_BYTES (1024ull << 20) /* span data in memory, all traces together */
#define RC_TRACE_MAX_SPANS 10000           /* spans of one trace; more are dropped, counted */
#define RC_SPAN_MAX_ATTRS 128
#define RC_SPAN_MAX_EVENTS 128
#define RC_STR_MAX 16384                  /* bytes of one name, key or rendered value */
#define RC_OTLP_MAX_DEPTH 32              /* message nesting an OTLP body may have */
#define RC_LOG_SEGMENT_MAX (256ull << 20) /* bytes of one spans.log segment */
#define RC_LOG_RECORD_MAX (16u << 20)     /* largest OTLP body: the HTTP body cap */

typedef struct rc_store rc_store_t;

/* OTLP's Span.SpanKind values (0 unspecified .. 5 consumer) and Status.StatusCode values. */
enum { RC_STATUS_UNSET = 0, RC_STATUS_OK = 1, RC_STATUS_ERROR = 2 };

/* One attribute; value rendered as API.md says: strings as they are, ints and doubles in
 * decimal, bools as true/false, bytes in base64, arrays and key-value lists as JSON text. */
typedef struct rc_attr {
    const char *key;
    const char *value;
} rc_attr_t;

typedef struct rc_event {
    const char *name;
    uint64_t time_ns; /* unix ns */
    const rc_attr_t *attrs;
    size_t nattrs;
} rc_event_t;

typedef struct rc_span {
    uint8_t trace_id[RC_TRACE_ID_LEN];
    uint8_t span_id[RC_SPAN_ID_LEN];
    uint8_t parent_id[RC_SPAN_ID_LEN]; /* all zero when has_parent is 0 */
    int has_parent;
    const char *service; /* the resource's service.name, "unknown" when absent */
    const char *name;
    int kind;          /* OTLP SpanKind 0..5 (other values are stored as 0) */
    uint64_t start_ns; /* unix ns */
    uint64_t end_ns;
    int status_code; /* RC_STATUS_*; other values are stored as UNSET */
    const char *status_message;
    const rc_attr_t *attrs;
    size_t nattrs;
    const rc_event_t *events;
    size_t nevents;
} rc_span_t;

/* One trace in a listing. */
typedef struct rc_trace_summary {
    uint8_t trace_id[RC_TRACE_ID_LEN];
    const char *root_service; /* of the root span: the earliest span whose parent is not in the
                                 trace ("" and "" when the trace has no span, which cannot be) */
    const char *root_name;
    uint64_t start_ns;    /* earliest span start */
    uint64_t duration_ns; /* latest span end - start_ns (0 when no end is later) */
    uint32_t spans;
    int error;                   /* 1 when any span has status ERROR */
    const char *const *services; /* distinct services of its spans, sorted bytewise */
    size_t nservices;
} rc_trace_summary_t;

typedef struct rc_store_stats {
    uint64_t spans;          /* held now */
    uint64_t traces;         /* held now */
    uint64_t bytes;          /* span data held now (approximate: the packed span blocks) */
    uint64_t accepted;       /* spans added, total (including those replayed from the log) */
    uint64_t rejected;       /* spans refused: bad or missing trace/span id, trace full */
    uint64_t duplicates;     /* spans ignored because the trace already held their span id */
    uint64_t bad_bodies;     /* OTLP bodies that did not decode */
    uint64_t evicted_traces; /* dropped to stay within max_spans / RC_STORE_MAX_BYTES */
    uint64_t evicted_spans;
    uint64_t loaded_spans; /* of accepted: replayed from the log by rc_store_new */
    uint64_t log_records;  /* records appended since start */
    uint64_t log_errors;   /* failed appends (the spans stay in memory) */
    uint64_t max_spans;
} rc_store_stats_t;

/* Makes a store keeping at most max_spans (>= 1) spans. With data_dir (an existing or creatable
 * directory), locks it, replays DIR/spans.log.1 and DIR/spans.log, and appends to spans.log from
 * then on; NULL keeps everything in memory only. Returns NULL on failure with a message in err
 * (naming the path and the errno text): out of memory, a directory that cannot be created,
 * opened, locked or written, a log that is not ours (bad header). A corrupt or torn record ends
 * the replay of that segment (warned on stderr), and the tail is cut off so new records follow
 * good ones. The caller owns the store and frees it with rc_store_free. */
rc_store_t *rc_store_new(uint64_t max_spans, const char *data_dir, char *err, size_t errlen);
/* Frees the store (and closes the log). No other thread may use it any more. NULL is a no-op. */
void rc_store_free(rc_store_t *s);

/* Decodes an OTLP ExportTraceServiceRequest (len bytes, owned by the caller) and adds its spans.
 * Returns the number of spans accepted (0 is possible: an empty request, or every span
 * refused), or -1 when the body is not a valid request (bad wire format, nesting deeper than
 * RC_OTLP_MAX_DEPTH, more than RC_LOG_RECORD_MAX bytes, or out of memory while decoding); err
 * then says why. When spans are refused, err names the first reason and *rejected (if not NULL)
 * their number; err is "" when all were accepted. Accepted spans are appended to the log before
 * the function returns (a failed append is logged and counted, and not reported here: the spans
 * are in memory). Safe on any input bytes. */
long rc_store_add_otlp_ex(rc_store_t *s, const void *buf, size_t len, uint64_t *rejected, char *err,
                          size_t errlen);
/* rc_store_add_otlp_ex without the rejected count. */
long rc_store_add_otlp(rc_store_t *s, const void *buf, size_t len, char *err, size_t errlen);

/* Lists traces, newest first (by start, then trace id), at most limit of them: those with a
 * span of service `service` (NULL or "": any), with an error span when errors_only, and that
 * started at or after since_ns (unix ns; 0: any). On success *out is one allocation that the
 * caller frees with rc_summaries_free (NULL when 0 traces match) and the count is returned;
 * -ENOMEM when out of memory. */
long rc_store_list(rc_store_t *s, const char *service, int errors_only, uint64_t since_ns,
                   size_t limit, rc_trace_summary_t **out);
void rc_summaries_free(rc_trace_summary_t *sums, size_t n);

/* Copies the spans of one trace, sorted by start time (then arrival), into *spans (one
 * allocation: the strings and arrays point into it; free with rc_spans_free) and their number
 * into *n. Returns 0, -ENOENT when the trace is not held (*spans NULL, *n 0), or -ENOMEM. */
int rc_store_get(rc_store_t *s, const uint8_t trace_id[RC_TRACE_ID_LEN], rc_span_t **spans,
                 size_t *n);
void rc_spans_free(rc_span_t *spans, size_t n);

/* Copies the counters at one instant. */
void rc_store_stats(rc_store_t *s, rc_store_stats_t *out);

/* "UNSPECIFIED", "INTERNAL", "SERVER", "CLIENT", "PRODUCER", "CONSUMER" for SpanKind 0..5. */
const char *rc_span_kind_name(int kind);
/* "unset", "ok", "error" for RC_STATUS_*. */
const char *rc_status_name(int code);

#endif
