"""Running the monitoring stack without Docker: Prometheus, Alertmanager, Pushgateway and
node-exporter from their Debian binaries on 127.0.0.1 (with ``--ha``: two Prometheus replicas,
two clustered Alertmanager peers and VictoriaMetrics), rendered from the workspace's config
files, and the ``ragmon-stack`` command (``m2_3_stack.py``). ``api`` is the one HTTP client for
the engines, ``process`` the one way to start, wait for and stop processes. Needs the
``[stack]`` extra."""
