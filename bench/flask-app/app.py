"""The benchmark app: a trivial Flask app, started as `python3 app.py` or as a WSGI app."""
import os
import time

from flask import Flask, request

app = Flask(__name__)


@app.get("/")
def index():
    return "hello\n"


@app.get("/health")
def health():
    return "ok"


@app.get("/sleep")
def sleep():
    time.sleep(int(request.args.get("ms", "100")) / 1000)
    return "slept\n"


if __name__ == "__main__":
    import logging
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    app.run(host="127.0.0.1", port=int(os.environ["PORT"]), threaded=True)
