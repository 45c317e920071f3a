/*
 * libFuzzer target for the YAML -> protobuf-c mapper (control/yamlpb.c) and the config compiler
 * (control/config.c): every input is read both as a Mesh and as a Bootstrap, with the line
 * index, packed and unpacked, rendered back as JSON, and the JSON is parsed again (it is flow
 * YAML) and must give the same JSON; then it is loaded as the mesh of a whole config snapshot.
 *
 * Built with -fsanitize=fuzzer when -Dfuzz=true and the compiler is clang; otherwise
 * fuzz_yaml_replay (this file + fuzz_replay.c) runs the same check over files named on the
 * command line, so the seed corpus runs in normal CI.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "remora/config.h"
#include "remora/v1/bootstrap.pb-c.h"
#include "remora/v1/mesh.pb-c.h"
#include "remora/yamlpb.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void one(const ProtobufCMessageDescriptor *d, const uint8_t *data, size_t size)
{
    char err[512];
    ProtobufCMessage *msg = NULL;
    rmr_yamlpb_lines_t *lines = NULL;
    int rc = rmr_yamlpb_parse("fuzz.yaml", data, size, d, &msg, &lines, err, sizeof(err));
    if (rc < 0) {
        /* errors are always one NUL-terminated line */
        if (strlen(err) == 0 || strlen(err) >= sizeof(err))
            abort();
        return;
    }
    (void)rmr_yamlpb_line(lines, "services[0].endpoints[0].labels.version");
    (void)rmr_yamlpb_line(lines, "routes[0].lanes.map[\"a]b\"].x");
    (void)rmr_yamlpb_line(lines, "]");
    size_t packed = protobuf_c_message_get_packed_size(msg);
    uint8_t *buf = malloc(packed ? packed : 1);
    if (buf) {
        protobuf_c_message_pack(msg, buf);
        ProtobufCMessage *back = protobuf_c_message_unpack(d, NULL, packed, buf);
        if (!back)
            abort();
        protobuf_c_message_free_unpacked(back, NULL);
        free(buf);
    }
    char *json = rmr_yamlpb_to_json(msg);
    if (json) {
        ProtobufCMessage *again = NULL;
        if (rmr_yamlpb_parse("json", json, strlen(json), d, &again, NULL, err, sizeof(err)) < 0) {
            fprintf(stderr, "JSON did not read back: %s\n%s\n", err, json);
            abort();
        }
        char *json2 = rmr_yamlpb_to_json(again);
        if (json2 && strcmp(json, json2)) {
            fprintf(stderr, "JSON round trip differs:\n%s\n%s\n", json, json2);
            abort();
        }
        free(json2);
        protobuf_c_message_free_unpacked(again, NULL);
        free(json);
    }
    rmr_yamlpb_lines_free(lines);
    protobuf_c_message_free_unpacked(msg, NULL);
}

/* The whole config path, mapping + semantic validation + compile: the input is the mesh, with
 * a fixed bootstrap, and the snapshot is copied and rendered. */
static void whole_config(const uint8_t *data, size_t size)
{
    static const char boot[] = "node: n\nservice: checkout\n"
                               "inbound: {listen: 127.0.0.1:1, app: 127.0.0.1:2}\n"
                               "outbound: {listen: 127.0.0.1:3}\n";
    rmr_conf_err_t err;
    rmr_config_t *c = rmr_config_parse("boot.yaml", boot, sizeof(boot) - 1, "mesh.yaml",
                                       (const char *)data, size, &err);
    if (!c) {
        if (strlen(err.msg) == 0)
            abort();
        return;
    }
    if (c->n_services == 0 || c->n_listeners != 2)
        abort();
    for (size_t i = 0; i < c->n_routes; i++)
        if (c->routes[i].service >= c->n_services)
            abort();
    rmr_addr_t ep = {0};
    rmr_config_t *d = rmr_config_with_endpoints(c, 0, &ep, 1);
    rmr_config_unref(c);
    char *json = rmr_config_to_json(d);
    free(json);
    rmr_config_unref(d);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    one(&remora__v1__mesh__descriptor, data, size);
    one(&remora__v1__bootstrap__descriptor, data, size);
    whole_config(data, size);
    return 0;
}
