/*
 * YAML -> protobuf-c: fills any protobuf-c message from YAML by walking its descriptors, so a
 * field added to a .proto is accepted in YAML with no new code.
 *
 * Mapping rules:
 *  - a message is a YAML mapping whose keys are field names; a repeated field is a sequence
 *    (block or flow); a map<K,V> field is a mapping; null (`~`, `null`, nothing) leaves a field
 *    unset;
 *  - scalars: integers in decimal or 0x hex with range checks for the field's type; bool is
 *    true/false; float/double are finite numbers; string and bytes take the scalar's text;
 *  - enums by lower-case name: `least_request` for LEAST_REQUEST, or for
 *    LOAD_BALANCER_LEAST_REQUEST in enum LoadBalancer (the type's prefix is left out);
 *  - a message named Duration (remora.v1 or google.protobuf) is a string with units:
 *    "500ms", "1s", "2m", "1h", "1m30s", "1.5s" (ns, us, ms, s, m, h);
 *  - a message whose only field is a map is written as that map (inline wrapper), e.g.
 *    Selector{map<string,string> labels}: `subset: {version: v1}`;
 *  - oneof: setting two members of one oneof is an error;
 *  - a field whose .proto name ends in '_' is written without it in YAML: `base_` is `base`
 *    (for names protobuf-c cannot use in C, like `base`, which is every message's header);
 *  - anchors, aliases, tags and more than one document are refused; duplicate keys are errors.
 *
 * Errors are one line, "FILE:LINE: FIELD.PATH: message", e.g.
 *   mesh.yaml:12: services[0].circuit_breaker.max_connections: expected an unsigned integer,
 *   got "lots"
 * Field paths are written as `services[0].endpoints[1].labels.version`; a map key that is not
 * made of [A-Za-z0-9_-] is written `labels["a.b"]`.
 *
 * Bounds against hostile input: RMR_YAMLPB_MAX_INPUT bytes, RMR_YAMLPB_MAX_DEPTH nested
 * collections, RMR_YAMLPB_MAX_ITEMS sequence items and mapping entries in all, map keys of at
 * most RMR_YAMLPB_MAX_KEY bytes without control characters.
 *
 * Threads: every function is reentrant; a result is owned by the caller.
 */
#ifndef REMORA_YAMLPB_H
#define REMORA_YAMLPB_H

#include <stddef.h>
#include <stdint.h>

#include <protobuf-c/protobuf-c.h>

/* Largest YAML input accepted, in bytes. */
#define RMR_YAMLPB_MAX_INPUT (4u << 20)
/* Deepest nesting of mappings and sequences accepted. */
#define RMR_YAMLPB_MAX_DEPTH 64
/* Longest map key accepted, in bytes (map keys cannot hold control characters either). */
#define RMR_YAMLPB_MAX_KEY 256
/* Most sequence items plus mapping entries accepted in one document. */
#define RMR_YAMLPB_MAX_ITEMS 200000

/* Where each field path of one document was written: path -> line. Opaque. */
typedef struct rmr_yamlpb_lines rmr_yamlpb_lines_t;

/*
 * Parses YAML text buf[0..len) into a new message of type desc. `name` is the file name used
 * in error messages. On success returns 0, sets *out to a message the caller frees with
 * protobuf_c_message_free_unpacked(*out, NULL), and, when lines is not NULL, sets *lines to the
 * line index of the document (free with rmr_yamlpb_lines_free). An empty document gives an
 * empty message. On failure returns -EINVAL (bad YAML or a mapping error), -EFBIG (input too
 * large) or -ENOMEM, writes "FILE:LINE: FIELD.PATH: message" into err (always
 * NUL-terminated, truncated to errlen), and leaves *out and *lines NULL.
 */
int rmr_yamlpb_parse(const char *name, const void *buf, size_t len,
                     const ProtobufCMessageDescriptor *desc, ProtobufCMessage **out,
                     rmr_yamlpb_lines_t **lines, char *err, size_t errlen);

/*
 * As rmr_yamlpb_parse, from the file at path (its name in errors is `path` as given). Also
 * returns -errno of open/read failures, with "PATH: strerror" in err.
 */
int rmr_yamlpb_load(const char *path, const ProtobufCMessageDescriptor *desc,
                    ProtobufCMessage **out, rmr_yamlpb_lines_t **lines, char *err, size_t errlen);

/*
 * Line (1-based) where `path` was written, e.g. "services[1].endpoints[0].address". When that
 * exact path is absent (a field left out), the line of its nearest written ancestor; 0 when
 * nothing matches or lines is NULL.
 */
unsigned rmr_yamlpb_line(const rmr_yamlpb_lines_t *lines, const char *path);

/* Frees a line index; NULL is fine. */
void rmr_yamlpb_lines_free(rmr_yamlpb_lines_t *lines);

/*
 * Parses a duration string ("500ms", "1m30s", "0s") into seconds and nanoseconds.
 * Returns 0, or -EINVAL for bad syntax, a missing unit, a negative value or overflow.
 */
int rmr_duration_parse(const char *text, int64_t *seconds, int32_t *nanos);

/*
 * The YAML name of an enum value (lower case, the enum type's prefix removed) written into
 * buf; returns buf. For rendering config back to users (JSON, remoractl get).
 */
const char *rmr_yamlpb_enum_name(const ProtobufCEnumDescriptor *e, int value, char *buf,
                                 size_t len);

/*
 * Renders msg as JSON with the YAML conventions above (durations as strings, enums by YAML
 * name, inline wrappers as plain objects, maps as objects) and fields at their zero value
 * left out. Returns a malloc'd NUL-terminated string the caller frees, or NULL on ENOMEM.
 */
char *rmr_yamlpb_to_json(const ProtobufCMessage *msg);

/*
 * Appends a JSON string literal for s[0..len) (quotes and escapes included) to the growable
 * growable buffer *buf (used bytes filled of cap allocated). Returns 0 or -ENOMEM.
 */
int rmr_json_string(char **buf, size_t *used, size_t *cap, const char *s, size_t len);

#endif
