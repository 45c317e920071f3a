// Decodes OTLP/HTTP protobuf bodies with the generated code of npm's
// @opentelemetry/otlp-transformer (a decoder remora did not write) and prints them as JSON:
// ids as lower-case hex, 64-bit integers as decimal strings, enums as numbers.
//   node decode.js NODE_MODULES_DIR FILE...  ->  one JSON object per line
const path = require("path");
const fs = require("fs");
const dir = process.argv[2];
const root = require(path.join(dir, "@opentelemetry/otlp-transformer/build/src/generated/root.js"));
const Req = root.opentelemetry.proto.collector.trace.v1.ExportTraceServiceRequest;
for (const f of process.argv.slice(3)) {
  const msg = Req.decode(fs.readFileSync(f));
  const err = Req.verify(msg);
  if (err) {
    console.error(f + ": " + err);
    process.exit(1);
  }
  const obj = Req.toObject(msg, { longs: String, enums: Number, bytes: String, defaults: true });
  const hex = (b64) => Buffer.from(b64 || "", "base64").toString("hex");
  for (const rs of obj.resourceSpans)
    for (const ss of rs.scopeSpans)
      for (const s of ss.spans) {
        s.traceId = hex(s.traceId);
        s.spanId = hex(s.spanId);
        s.parentSpanId = hex(s.parentSpanId);
      }
  console.log(JSON.stringify(obj));
}
