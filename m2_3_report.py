"""Reports on the request log: ``python m2_3_report.py --help`` (also ``ragmon-report``).

The importable functions (``load_records``, ``build_report``, ``format_text``, ...) live in
``ragmon.report.cli`` and are re-exported here for the course notebook.
"""
from ragmon.report.cli import *  # noqa: F401,F403
from ragmon.report.cli import __all__, main  # noqa: F401

if __name__ == "__main__":
    import sys

    sys.exit(main())
