"""Following streams: the SDK stream objects a query returns or a client yields, the chunks a
streaming query yields itself, the first content chunk's time, and the end of a monitored stream
(read to its end, closed, abandoned by the server, or garbage-collected)."""
from __future__ import annotations

import inspect
import logging
import threading
import time
import weakref

from .context import OPEN_STREAMS, QueryContext
from .gc_safe import call_outside_collection, start_finisher
from .providers.fields import PLAIN
from .runtime import recording_failed
from .usage import StreamUsage, is_content, watch_stream

log = logging.getLogger("ragmon")
_perf = time.perf_counter


def follow_stream(stream, started: float | None = None) -> StreamUsage | None:
    """The tracker following an SDK stream object, attached on first call (see usage.watch_stream).
    Its end is also signalled when the stream is garbage-collected unread."""
    tracker = getattr(stream, "_ragmon_usage", None)
    if tracker is None:
        tracker = StreamUsage(started)
        if not watch_stream(stream, tracker):
            return None
        stream._ragmon_usage = tracker
        start_finisher()
        weakref.finalize(stream, call_outside_collection, tracker.end)
    return tracker


def stream_outcome(tracker: StreamUsage) -> BaseException | None:
    """The exception a query that returned this stream ends with: the stream's own error, or
    GeneratorExit (status "cancelled") when it was abandoned before its end."""
    if tracker.error is not None:
        return tracker.error
    return None if tracker.completed else GeneratorExit()


def observe_chunk(ctx: QueryContext, item, waiting_first: bool) -> bool:
    """Reads a chunk a streaming query yields: its usage (SDK chunks, events) and, for the first
    *content* chunk, the time to first token. Returns whether the first content is still awaited."""
    try:
        if type(item) not in PLAIN:
            extra = ctx.extras()
            tracker = extra.chunks
            if tracker is None:
                tracker = extra.chunks = StreamUsage(ctx.start)
            elif tracker.is_new_response(item):  # a second stream relayed by the same query
                tracker.completed = True
                if extra.usages is None:
                    extra.usages = []
                extra.usages.append(tracker)
                tracker = extra.chunks = StreamUsage(ctx.start)
            tracker.feed(item)
        if waiting_first and is_content(item):
            ctx.extras().first_token = _perf() - ctx.start
            return False
    except Exception as failure:
        recording_failed(ctx.owner.metrics, "recording", "reading a streamed chunk failed: %r",
                         failure)
    return waiting_first


class MonitoredStream:
    """The end of one monitored stream, recorded exactly once: by the stream itself, or by
    close_abandoned_streams() when the server gives up on it (client gone) while the generator
    sits suspended, which otherwise would end it only at garbage collection.

    Until it ends, a synchronous stream (and so the application's generator) is held in
    `UNFINISHED`: a garbage collection may then finalize the monitored wrapper, never the
    application's generator directly, and the wrapper hands the closing to gc_safe's finisher
    thread (see there why). An event loop finalizes async generators itself, outside the
    collection."""

    __slots__ = ("inst", "ctx", "inner", "done", "_lock")

    def __init__(self, inst, ctx: QueryContext, inner):
        self.inst, self.ctx, self.inner = inst, ctx, inner
        self.done = False
        self._lock = threading.Lock()
        streams = OPEN_STREAMS.get()
        if streams is not None:
            streams.append(self)

    def end(self, result: object, exc: BaseException | None) -> bool:
        with self._lock:
            if self.done:
                return False
            self.done = True
        UNFINISHED.discard(self)
        self.inst.finish(self.ctx, result, exc)
        self.inst.in_flight.dec()
        return True


UNFINISHED: set[MonitoredStream] = set()


def finish_collected(stream: MonitoredStream) -> None:
    """Ends a stream whose wrapper a garbage collection finalized (run by the finisher thread):
    closes the application's generator, unless its other closer is running it right now
    (close_abandoned_streams), then records the query cancelled."""
    try:
        close_quietly(stream.inner)
    finally:
        stream.end(None, GeneratorExit())


async def close_abandoned_streams(streams: list) -> int:
    """Finishes the monitored streams in `streams` that have not ended (recorded ``cancelled``,
    in-flight decremented) and closes their generators, so their ``finally`` blocks release the
    upstream connection now. A generator still running in another thread is closed by its own
    wrapper when its step returns. Returns how many streams were finished here."""
    finished = 0
    for stream in streams:
        if stream.done or not stream.end(None, GeneratorExit()):
            continue
        finished += 1
        inner = stream.inner
        try:
            if inspect.isasyncgen(inner):
                if not inner.ag_running:
                    await inner.aclose()
            elif not inner.gi_running:
                inner.close()
        except (RuntimeError, ValueError):  # started running meanwhile: its wrapper closes it
            pass
        except Exception as failure:  # the application's own cleanup failed
            log.warning("closing an abandoned stream of %r raised %r", stream.ctx.operation, failure)
    return finished


def close_quietly(inner) -> None:
    try:
        inner.close()
    except Exception as failure:
        if not inner.gi_running:  # else another thread is closing it right now
            log.warning("closing an abandoned stream raised %r", failure)
