"""An HTTP app that reports every request it serves to the test's recorder on loopback:
the invocation id and the body, one JSON line per request."""
import json
import os
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

RECORDER = os.environ["RECORDER"]


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length") or 0))
        report = {
            "id": self.headers.get("nubo-invocation-id"),
            "body": body.decode("utf-8", "replace"),
            "trigger": self.headers.get("nubo-trigger"),
        }
        req = urllib.request.Request(RECORDER, data=json.dumps(report).encode(), method="POST")
        urllib.request.urlopen(req, timeout=10).read()
        time.sleep(int(os.environ.get("SLEEP_MS", "0")) / 1000)
        status = 500 if os.environ.get("FAIL") == "1" else 200
        self.send_response(status)
        self.send_header("content-length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    do_GET = do_POST

    def log_message(self, *args):
        pass


ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
