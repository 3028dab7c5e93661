"""The monitoring stack without Docker: ``python m2_3_stack.py up|status|down`` (also
``ragmon-stack``). ``Stack`` lives in ``ragmon.stack.runner`` and is re-exported here."""
from ragmon.stack.runner import *  # noqa: F401,F403
from ragmon.stack.runner import __all__, main  # noqa: F401

if __name__ == "__main__":
    import sys

    sys.exit(main())
