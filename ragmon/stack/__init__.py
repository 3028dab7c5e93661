"""Running the monitoring stack without Docker: Prometheus, Alertmanager, Pushgateway and
node-exporter from their Debian binaries on 127.0.0.1, rendered from the workspace's config
files, and the ``ragmon-stack`` command (``m2_3_stack.py``). Needs the ``[stack]`` extra."""
