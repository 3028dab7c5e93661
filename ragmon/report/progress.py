"""A progress bar for the report's DuckDB queries: a tqdm bar following DuckDB's own progress
of the running query, on a terminal only, and only when the query runs long enough."""
from __future__ import annotations

import sys
import threading


class QueryProgress:
    """A tqdm bar following DuckDB's own progress of the running query, shown only when stderr
    is a terminal and the query runs long enough to be worth one."""

    def __init__(self, con, description: str, delay: float = 1.0):
        self.con, self.description, self.delay = con, description, delay
        self.done = threading.Event()
        self.thread = None
        # A bar over several queries: each moves it from `base` by its progress times `scale`.
        self.base, self.scale = 0.0, 1.0

    def __enter__(self):
        if sys.stderr.isatty():
            self.thread = threading.Thread(target=self._follow, daemon=True)
            self.thread.start()
        return self

    def _follow(self) -> None:
        from tqdm import tqdm

        if self.done.wait(self.delay):
            return
        with tqdm(total=100, desc=self.description, unit="%", leave=False) as bar:
            while not self.done.wait(0.2):
                try:
                    percent = max(0.0, self.con.query_progress())
                except Exception:  # no query running on this connection at this instant
                    percent = 0.0
                bar.update(max(0, int(self.base + percent * self.scale) - bar.n))

    def __exit__(self, *exc):
        self.done.set()
        if self.thread is not None:
            self.thread.join()
