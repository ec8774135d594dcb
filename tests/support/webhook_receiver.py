"""A webhook receiver for tests, on 127.0.0.1 only.

    webhook_receiver.py OUT STATUS

Answers every POST with HTTP STATUS; writes the last request's body to
OUT.body and its headers to OUT.headers ("Name: value" lines), and the port
it listens on to OUT.port once it accepts connections.
"""
import http.server
import os
import sys

out, status = sys.argv[1], int(sys.argv[2])


class Handler(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        with open(out + ".headers", "w") as f:
            for name, value in self.headers.items():
                f.write("%s: %s\n" % (name, value))
        with open(out + ".body", "wb") as f:
            f.write(body)
        self.send_response(status)
        self.end_headers()
        self.wfile.write(b"answered %d" % status)

    def log_message(self, *args):
        pass


server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
with open(out + ".port.tmp", "w") as f:
    f.write(str(server.server_port))
os.rename(out + ".port.tmp", out + ".port")
server.serve_forever()
