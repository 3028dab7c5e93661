"""Reading the request records: loading, analysis, text/JSON/CSV reports, plots, retention and
the ``ragmon-report`` command (``m2_3_report.py``). Needs the ``[report]`` extra."""
