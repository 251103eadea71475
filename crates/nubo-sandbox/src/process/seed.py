# Nubo's Python seed: imports a WSGI/ASGI app once, then forks ready-to-serve instances.
#
#   python3 -c SEED serve wsgi|asgi module:attr   # a plain instance (the `new` start mode)
#   python3 -c SEED seed  wsgi|asgi module:attr   # a seed, controlled over fd 3
#
# The seed listens on 127.0.0.1:$PORT once the app is imported: that is its readiness signal.
# Control messages travel over fd 3 (a SOCK_SEQPACKET socket, one message per packet):
#   nubo -> seed: "fork <port> <instance-id>" with three fds attached: the child's stdout and
#                 stderr, and a pipe on which one byte says "you are in your cgroup: go"
#   seed -> nubo: "forked <instance-id> <pid>" (or "failed <instance-id> <why>") and, whenever a
#                 child ends, "exit <pid> <status>"
#   nubo -> seed: "kill <pid>" for a child nobody waits for any more
#
# Fork safety: the seed imports the app (and so its libraries) once, then forgets the modules
# that live in the app's own directory, so each child imports them again: module-level state
# (ids, random values, connections) is fresh per instance, while third-party libraries stay
# loaded and shared. Python's `random` re-seeds itself in a forked child. Threads do not
# survive fork: an app that starts threads at import time is warned about.
import gc, importlib, os, selectors, signal, socket, sys, threading

MODE, KIND, TARGET = sys.argv[1], sys.argv[2], sys.argv[3]
APP_DIR = os.getcwd()
sys.path.insert(0, APP_DIR)


def load():
    module, _, attr = TARGET.partition(":")
    mod = importlib.import_module(module)
    app = mod
    for part in (attr or "app").split("."):
        app = getattr(app, part)
    return app


def own_modules():
    """Modules loaded from the app's directory (the user's code)."""
    out = []
    for name, mod in list(sys.modules.items()):
        f = getattr(mod, "__file__", None) or ""
        if f.startswith(APP_DIR + os.sep):
            out.append(name)
    return out


def wsgi_server(app, port):
    """A threaded WSGI server on 127.0.0.1:port (0: any free port)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(128)
    try:
        import logging
        from werkzeug.serving import make_server
        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        # A bound socket (fd=) skips the reverse DNS lookup of a plain bind.
        server = make_server("127.0.0.1", sock.getsockname()[1], app, threaded=True,
                             fd=sock.fileno())
        sock.close()  # werkzeug holds its own duplicate
        return server
    except ImportError:
        sock.close()
        from socketserver import ThreadingMixIn
        from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server as mk

        class Server(ThreadingMixIn, WSGIServer):
            daemon_threads = True

        class Quiet(WSGIRequestHandler):
            def log_message(self, *a):
                pass

        return mk("127.0.0.1", port, app, server_class=Server, handler_class=Quiet)


def serve(app, port):
    if KIND == "asgi":
        import uvicorn
        uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                      lifespan="off")).run()
        return
    server = wsgi_server(app, port)
    signal.signal(signal.SIGTERM, lambda *a: threading.Thread(target=server.shutdown).start())
    server.serve_forever()


def warm_up(app):
    """One request through the server and the framework in the seed, so children inherit warm
    caches (werkzeug looks its version up in package metadata when a server starts; routing,
    request parsing and error pages import and compile on first use). The path is one no app
    routes on purpose: most apps answer 404 without running a view."""
    if KIND == "asgi":
        import uvicorn  # noqa: F401 - at least the import is shared
        return
    import http.client
    server = wsgi_server(app, 0)
    t = threading.Thread(target=server.handle_request)
    t.start()
    try:
        c = http.client.HTTPConnection("127.0.0.1", server.server_address[1], timeout=5)
        c.request("GET", "/.nubo-seed-warm-up")
        c.getresponse().read()
        c.close()
    except OSError:
        pass
    t.join(5)
    server.server_close()


if MODE == "serve":
    serve(load(), int(os.environ["PORT"]))
    sys.exit(0)

warm_up(load())
if threading.active_count() > 1:
    print("nubo seed: the app started threads while being imported; forked instances will "
          "not have them", file=sys.stderr)
for name in own_modules():
    del sys.modules[name]
gc.collect()
gc.freeze()  # keeps the seed's objects out of the children's collections: pages stay shared

listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
listener.bind(("127.0.0.1", int(os.environ["PORT"])))
listener.listen(4)

wake_r, wake_w = os.pipe()
os.set_blocking(wake_w, False)
signal.set_wakeup_fd(wake_w)
signal.signal(signal.SIGCHLD, lambda *a: None)
signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))

control = socket.socket(fileno=3)
sel = selectors.DefaultSelector()
sel.register(listener, selectors.EVENT_READ, "accept")
sel.register(control, selectors.EVENT_READ, "control")
sel.register(wake_r, selectors.EVENT_READ, "signal")


def send(line):
    try:
        control.send(line.encode())
    except OSError:
        pass


def fork(port, iid, out, err, go):
    try:
        pid = os.fork()
    except OSError as e:  # out of pids or memory: this instance fails, the seed lives on
        for fd in (out, err, go):
            os.close(fd)
        send(f"failed {iid} {e}")
        return
    if pid:
        for fd in (out, err, go):
            os.close(fd)
        send(f"forked {iid} {pid}")
        return
    # Nothing runs before the server has moved this child into its own cgroup.
    if os.read(go, 1) != b"g":
        os._exit(1)
    os.close(go)
    # The child: drop the seed's sockets and signal plumbing, then become an instance.
    try:
        signal.set_wakeup_fd(-1)
        for s in (signal.SIGCHLD, signal.SIGTERM):
            signal.signal(s, signal.SIG_DFL)
        sel.close()
        listener.close()
        control.close()
        os.close(wake_r)
        os.close(wake_w)
        os.dup2(out, 1)
        os.dup2(err, 2)
        os.close(out)
        os.close(err)
        os.environ["PORT"] = str(port)
        os.environ["NUBO_INSTANCE"] = iid
        serve(load(), port)
        code = 0
    except BaseException as e:  # noqa: BLE001 - anything here ends the child
        import traceback
        traceback.print_exc()
        code = e.code if isinstance(e, SystemExit) and isinstance(e.code, int) else 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


while True:
    for key, _ in sel.select():
        if key.data == "accept":
            # Readiness probes only: nothing to say.
            c, _ = listener.accept()
            c.close()
        elif key.data == "signal":
            try:
                os.read(wake_r, 512)
            except BlockingIOError:
                pass
            while True:
                try:
                    pid, status = os.waitpid(-1, os.WNOHANG)
                except ChildProcessError:
                    break
                if pid == 0:
                    break
                if os.WIFEXITED(status):
                    what = f"exited with status {os.WEXITSTATUS(status)}"
                else:
                    what = f"killed by signal {os.WTERMSIG(status)}"
                send(f"exit {pid} {what}")
        else:
            msg, fds, _, _ = socket.recv_fds(control, 1024, 3)
            if not msg:
                sys.exit(0)  # the server is gone
            parts = msg.decode().split()
            if len(parts) == 3 and parts[0] == "fork" and len(fds) == 3:
                fork(int(parts[1]), parts[2], fds[0], fds[1], fds[2])
            elif len(parts) == 2 and parts[0] == "kill":
                try:
                    os.kill(int(parts[1]), signal.SIGKILL)
                except (OSError, ValueError):
                    pass
            else:
                for fd in fds:
                    os.close(fd)
