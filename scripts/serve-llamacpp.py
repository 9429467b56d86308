#!/usr/bin/env python3
"""Serve one GGUF model with llama.cpp's server from the PyPI wheel
`xllamacpp` (prebuilt; no compiler): an OpenAI-compatible HTTP API
(`/v1/chat/completions`, `/v1/models`, `/health`) on 127.0.0.1:PORT.

BZZZ's managed backends run it per placed model, e.g. in bzzz.yaml:

    serve:
      managed:
        command: [python3, scripts/serve-llamacpp.py, --model, "{model_path}", --port, "{port}"]

It runs until SIGTERM or SIGINT (exit 0), or until the process that
started it dies (Linux parent-death signal; so a node killed with SIGKILL
leaves no server behind); a model that fails to load exits 1.
"""

import argparse
import ctypes
import os
import signal
import sys
import threading

PR_SET_PDEATHSIG = 1


def die_with_parent(stop: threading.Event) -> None:
    """SIGTERM when the parent dies (prctl), and a poll as a fallback."""
    parent = os.getppid()
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass

    def watch() -> None:
        while not stop.wait(1.0):
            if os.getppid() != parent:
                stop.set()

    threading.Thread(target=watch, daemon=True).start()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="path to the GGUF file")
    ap.add_argument("--port", required=True, type=int, help="TCP port on the host")
    ap.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    ap.add_argument("--ctx", type=int, default=4096, help="context length (default 4096)")
    ap.add_argument("--parallel", type=int, default=4, help="requests decoded at once (default 4)")
    ap.add_argument("--threads", type=int, default=0, help="CPU threads (0: llama.cpp's default)")
    args = ap.parse_args()
    if not 0 < args.port < 65536:
        print(f"--port {args.port}: not a TCP port", file=sys.stderr)
        return 2
    try:
        import xllamacpp as xlc
    except ImportError:
        print("the xllamacpp wheel is missing: python3 -m pip install xllamacpp", file=sys.stderr)
        return 2

    params = xlc.CommonParams()
    params.model.path = args.model
    params.port = args.port
    params.hostnames = [args.host]
    params.n_ctx = args.ctx
    params.n_parallel = args.parallel
    if args.threads > 0:
        params.cpuparams.n_threads = args.threads
        params.cpuparams_batch.n_threads = args.threads
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    die_with_parent(stop)
    try:
        server = xlc.Server(params)
    except Exception as e:  # the model did not load
        print(f"cannot serve {args.model}: {e}", file=sys.stderr)
        return 1
    print(f"serving {args.model} on {server.listening_address}", file=sys.stderr, flush=True)
    stop.wait()
    del server
    return 0


if __name__ == "__main__":
    sys.exit(main())
