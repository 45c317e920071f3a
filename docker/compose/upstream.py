# A tiny HTTP/1.1 server that says which version of "checkout" it is: upstream.py PORT VERSION
import socket
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

port, version = int(sys.argv[1]), sys.argv[2]
host = socket.gethostname()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        body = ("checkout %s (%s) got %s %s\n" % (version, host, self.command, self.path)).encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.do_GET()


ThreadingHTTPServer(("0.0.0.0", port), Handler).serve_forever()
