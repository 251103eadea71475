"""Test app: a Flask app with endpoints that misbehave on purpose."""
import os
import subprocess
import time
import uuid

from flask import Flask, jsonify, request

app = Flask(__name__)
MODULE_ID = uuid.uuid4().hex  # must differ in every instance, forked or not


@app.get("/")
def index():
    return jsonify(pid=os.getpid(), module_id=MODULE_ID,
                   instance=os.environ.get("NUBO_INSTANCE"),
                   revision=os.environ.get("NUBO_REVISION"),
                   version=os.environ.get("VERSION"))


@app.get("/health")
def health():
    return "ok"


@app.get("/sleep")
def sleep():
    time.sleep(int(request.args.get("ms", "100")) / 1000)
    return jsonify(pid=os.getpid(), module_id=MODULE_ID, instance=os.environ.get("NUBO_INSTANCE"))


@app.get("/crash")
def crash():
    os._exit(3)


@app.get("/hog")
def hog():
    chunks = []
    while True:
        chunks.append(bytearray(8 << 20))


def try_write(path):
    try:
        with open(path, "w") as f:
            f.write("x")
        return True
    except OSError:
        return False


@app.get("/read")
def read():
    try:
        with open(request.args["path"]) as f:
            return jsonify(read=True, text=f.read(64))
    except OSError as e:
        return jsonify(read=False, error=str(e))


@app.get("/isolation")
def isolation():
    pids = sorted(int(p) for p in os.listdir("/proc") if p.isdigit())
    children = []
    spawned = 0
    try:
        for _ in range(400):
            children.append(subprocess.Popen(["sleep", "5"]))
            spawned += 1
    except OSError:
        pass
    for c in children:
        c.kill()
        c.wait()
    return jsonify(pids=pids, uid=os.getuid(),
                   write_app_dir=try_write(os.path.join(os.getcwd(), "written")),
                   write_etc=try_write("/etc/nubo-test"),
                   write_var_tmp=try_write("/var/tmp/nubo-test"),
                   write_tmp=try_write("/tmp/nubo-test"),
                   spawned=spawned)


if __name__ == "__main__":
    app.run(host="127.0.0.1", port=int(os.environ["PORT"]))
