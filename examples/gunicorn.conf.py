"""gunicorn settings for examples/rag_service.py: uvicorn workers, one /metrics for all of them.

    gunicorn -c examples/gunicorn.conf.py --chdir examples rag_service:app

Every setting can be overridden on the command line (--workers 8, --bind ..., --preload).
"""
import os
import shutil
import tempfile

# Before anything imports prometheus_client (it picks file-backed values at import). The
# directory belongs to this server alone: on_starting empties it. Set it yourself in
# production (e.g. /run/rag-service/metrics on a tmpfs); otherwise each master gets its own,
# removed when the master exits.
_OWN_DIR = "PROMETHEUS_MULTIPROC_DIR" not in os.environ
if _OWN_DIR:
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="ragmon-metrics-")
os.makedirs(os.environ["PROMETHEUS_MULTIPROC_DIR"], exist_ok=True)

from ragmon.serving.workers import child_exit, on_starting, post_fork, when_ready  # noqa: E402,F401

bind = os.environ.get("BIND", "127.0.0.1:8080")
workers = int(os.environ.get("WEB_CONCURRENCY", "4"))
worker_class = "uvicorn.workers.UvicornWorker"
# A worker that hangs is killed and replaced; child_exit then drops its in-flight count.
timeout = 30
graceful_timeout = 10
# Idle keep-alive connections stay open longer than anything in front keeps them for reuse
# (nginx and AWS load balancers: 60 s; httpx: 5 s). With gunicorn's default of 2 s, a request
# sent on a connection the worker is closing at that moment fails (ReadError / 502), and a POST
# is not retried.
keepalive = 75


def on_exit(server):
    if _OWN_DIR:
        shutil.rmtree(os.environ["PROMETHEUS_MULTIPROC_DIR"], ignore_errors=True)
