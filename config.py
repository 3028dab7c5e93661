"""The workspace's settings: a re-export of ``ragmon.settings`` for the course and its scripts.

    from config import get_settings        # the same object as ragmon.settings.get_settings
    python config.py                        # prints the settings in force, secrets masked

ragmon itself never imports this file, so a service with its own `config.py` is unaffected.
"""
from ragmon.settings import (ConfigError, Settings, describe, get_settings, load_settings,
                             make_settings, set_settings, settings_for_cli)

__all__ = ["ConfigError", "Settings", "describe", "get_settings", "load_settings",
           "make_settings", "set_settings", "settings_for_cli"]

if __name__ == "__main__":
    import json

    print(json.dumps(describe(get_settings()), indent=2))
