#!/usr/bin/env python3
"""An OTLP/HTTP trace receiver for the end-to-end tests (tests/src/otlp.rs).

Decodes each `POST /v1/traces` (protobuf) with the official OpenTelemetry
definitions (PyPI `opentelemetry-proto`, installed by
scripts/install-test-deps.sh) and appends one JSON line per span to --out:
name, trace_id, span_id, parent_span_id (hex; "" for a root), kind,
attributes, service_name. Answers an empty ExportTraceServiceResponse (full
success). Any other POST (the collector's Alertmanager sends, when pointed
here) gets 200 and is counted in --out as {"other": path}. Writes the port
it listens on to --port-file once it accepts connections.
"""

import argparse
import json
import os
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

LOCK = threading.Lock()


def any_value(v):
    """An AnyValue as plain JSON."""
    kind = v.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [any_value(x) for x in v.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: any_value(kv.value) for kv in v.kvlist_value.values}
    if kind == "bytes_value":
        return v.bytes_value.hex()
    return getattr(v, kind)


def attributes(kvs):
    return {kv.key: any_value(kv.value) for kv in kvs}


class Handler(BaseHTTPRequestHandler):
    out_path = ""

    def log_message(self, fmt, *args):  # quiet: the test reads --out
        pass

    def write(self, rows):
        with LOCK, open(self.out_path, "a", encoding="utf-8") as out:
            for row in rows:
                out.write(json.dumps(row, sort_keys=True) + "\n")

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        if self.path != "/v1/traces":
            self.write([{"other": self.path}])
            self.reply(200, b"", "application/json")
            return
        if self.headers.get("Content-Type") != "application/x-protobuf":
            self.reply(415, b"protobuf only", "text/plain")
            return
        request = ExportTraceServiceRequest()
        try:
            request.ParseFromString(body)
        except Exception as e:  # a malformed export is the test's failure
            self.reply(400, str(e).encode(), "text/plain")
            return
        rows = []
        for rs in request.resource_spans:
            resource = attributes(rs.resource.attributes)
            for ss in rs.scope_spans:
                for span in ss.spans:
                    rows.append(
                        {
                            "name": span.name,
                            "trace_id": span.trace_id.hex(),
                            "span_id": span.span_id.hex(),
                            "parent_span_id": span.parent_span_id.hex(),
                            "kind": span.kind,
                            "attributes": attributes(span.attributes),
                            "service_name": resource.get("service.name"),
                        }
                    )
        self.write(rows)
        self.reply(
            200,
            ExportTraceServiceResponse().SerializeToString(),
            "application/x-protobuf",
        )

    def reply(self, status, body, content_type):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", required=True, help="JSON lines, one per span")
    parser.add_argument("--port-file", required=True)
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    Handler.out_path = args.out
    open(args.out, "a", encoding="utf-8").close()
    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    tmp = args.port_file + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(str(server.server_address[1]))
    os.replace(tmp, args.port_file)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
