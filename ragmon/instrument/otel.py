"""OpenTelemetry output beside the Prometheus metrics, opt-in (OTEL_ENABLED): GenAI
semantic-convention metrics and spans, and the library's own ``rag.*`` measurements, exported
over OTLP/HTTP (protobuf) with the SDK's periodic reader and batch span processor.

This module is imported only when OTel output is turned on (``runtime.sync_otel``): without it
no ``opentelemetry`` package is loaded. A query reaches it through its finish hook
(``hooks.on_finish``, registered when the output starts, removed when it stops); stages and LLM
calls through one attribute, ``runtime.STATE.otel`` (None when off). Off, they cost that check.

Spans are made when their query ends, with the start and end times measured while it ran, as
children of the OpenTelemetry span current at that moment (for a function: the caller's, e.g.
a FastAPI request span). Stage spans and LLM-call spans are children of the query span; an LLM
call inside a timed stage is a child of that stage.

Token kinds (tokens.py is the one vocabulary) map onto the conventions as follows:
``gen_ai.token.type="input"`` is the whole prompt (input + cached_input + cache_write_5m +
cache_write_1h: OpenAI's, the conventions' and this library's way-in meaning of input tokens);
``"output"`` is the whole completion, reasoning included. On spans the parts are shown with
``gen_ai.usage.cache_read.input_tokens`` (cached_input), ``gen_ai.usage.cache_creation.
input_tokens`` (both cache writes) and ``gen_ai.usage.reasoning.output_tokens``; the library's
own non-overlapping kinds travel as ``rag.tokens`` / ``rag.usage.<kind>``, as in rag_tokens_total.
"""
from __future__ import annotations

import gc
import logging
import os
import threading
import time
import uuid

from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import SpanKind, Status, StatusCode

from . import tokens
from . import hooks
from .accounting import unique
from .catalog import QUERY_LATENCY_BUCKETS
from .runtime import STATE, recording_failed
from .tokens import Usage
from .usage import StreamUsage

log = logging.getLogger("ragmon")

# Advised by the GenAI semantic conventions (gen-ai-metrics.md) for gen_ai.client.token.usage
# and gen_ai.client.operation.duration.
TOKEN_USAGE_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304,
                       16777216, 67108864)
OPERATION_DURATION_BUCKETS = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12,
                              10.24, 20.48, 40.96, 81.92)
# The streaming metrics: time to first chunk takes the duration boundaries (as the conventions'
# gen_ai.server.time_to_first_token does), time per output chunk the per-token ones of
# gen_ai.server.time_per_output_token.
FIRST_CHUNK_BUCKETS = OPERATION_DURATION_BUCKETS
PER_CHUNK_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5)
# rag.query.cost, in dollars: a cent's fraction up to a few dollars.
COST_BUCKETS = (0.00001, 0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0)
SCORE_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)

# The library's provider names -> gen_ai.provider.name well-known values.
PROVIDER_NAMES = {"openai": "openai", "anthropic": "anthropic", "gemini": "gcp.gen_ai",
                  "google": "gcp.gen_ai", "vertex_ai": "gcp.vertex_ai",
                  "azure_openai": "azure.ai.openai", "bedrock": "aws.bedrock"}
# gen_ai.operation.name by provider: Gemini calls generateContent, the others chat.
OPERATION_NAMES = {"gcp.gen_ai": "generate_content", "gcp.vertex_ai": "generate_content"}
UNKNOWN_PROVIDER = "_OTHER"


def provider_name(provider: str | None) -> str:
    if provider is None:
        return UNKNOWN_PROVIDER
    return PROVIDER_NAMES.get(provider, provider)


def token_type_of(kind: tokens.TokenKind) -> str:
    """The gen_ai.token.type a kind counts toward: its own name or the whole it is a part of."""
    return kind.part_of or kind.name


def whole_counts(counts: dict) -> tuple[int, int]:
    """(input, output) as the conventions count them, from the library's non-overlapping kinds:
    the billed parts of a whole are added back to it; a shown-only part (reasoning) is already in
    its whole."""
    found = {"input": 0, "output": 0}
    for kind in tokens.kinds():
        value = counts.get(kind.name, 0)
        if not value:
            continue
        if kind.part_of is None:
            found[kind.name] = found.get(kind.name, 0) + value
        elif kind.price_field is not None:
            found[kind.part_of] = found.get(kind.part_of, 0) + value
    return found["input"], found["output"]


def usage_span_attributes(counts: dict) -> dict:
    """gen_ai.usage.* of one call or query, plus the library's own kinds as rag.usage.<kind>."""
    prompt, completion = whole_counts(counts)
    attributes = {"gen_ai.usage.input_tokens": prompt, "gen_ai.usage.output_tokens": completion}
    cache_read = counts.get("cached_input", 0)
    cache_write = counts.get("cache_write_5m", 0) + counts.get("cache_write_1h", 0)
    if cache_read:
        attributes["gen_ai.usage.cache_read.input_tokens"] = cache_read
    if cache_write:
        attributes["gen_ai.usage.cache_creation.input_tokens"] = cache_write
    if counts.get("reasoning"):
        attributes["gen_ai.usage.reasoning.output_tokens"] = counts["reasoning"]
    for name, value in counts.items():
        if value:
            attributes[f"rag.usage.{name}"] = value
    return attributes


class LLMCall:
    """One LLM call an instrumented client made inside a query: kept until the query ends so its
    span is drawn inside the query's."""

    __slots__ = ("start", "end", "provider", "requested", "usage", "error_type", "first_chunk")

    def __init__(self, start, end, provider, requested, usage, error_type, first_chunk):
        self.start, self.end, self.provider, self.requested = start, end, provider, requested
        self.usage, self.error_type, self.first_chunk = usage, error_type, first_chunk


def _never_raises(method):
    """A hook's failure is counted and logged (reason "otel"), never raised into the host."""
    def hook(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except Exception as failure:
            recording_failed(STATE.metrics, "otel", "OpenTelemetry output failed: %r", failure)
            return None
    hook.__name__, hook.__doc__ = method.__name__, method.__doc__
    return hook


def _wall_ns(perf_time: float, now_perf: float, now_ns: int) -> int:
    return now_ns - int((now_perf - perf_time) * 1e9)


class Telemetry:
    """The process's OpenTelemetry output: providers made on first use in each process (so every
    pre-forked worker has its own stream and service.instance.id), instruments, and the hooks
    the library calls (query_finished, stage_ended, llm_call, usage_counted)."""

    def __init__(self, service: str, env: str, endpoint: str = ""):
        self.service, self.env, self.endpoint = service, env, endpoint
        self._lock = threading.Lock()
        self._ready = False
        self.pid = None
        self.instance_id = None
        self.meter_provider = self.tracer_provider = None
        # One bound method, kept: hooks.remove() finds it by identity. A failure in it is counted
        # by the hook runner (reason "hook"); ensure() failures too.
        self.finish_hook = self.query_finished

    # --- set-up ----------------------------------------------------------------------------

    def _endpoint_for(self, signal: str) -> str | None:
        """The URL to send `signal` to: the signal's own OTEL_EXPORTER_OTLP_<SIGNAL>_ENDPOINT
        wins (the exporter reads it), then the endpoint setting (base URL + /v1/<signal>), then
        the exporter's own default (OTEL_EXPORTER_OTLP_ENDPOINT or http://localhost:4318)."""
        if os.environ.get(f"OTEL_EXPORTER_OTLP_{signal.upper()}_ENDPOINT") or not self.endpoint:
            return None
        return self.endpoint.rstrip("/") + f"/v1/{signal}"

    def _start(self) -> None:
        self.pid = os.getpid()
        self.instance_id = str(uuid.uuid4())
        attributes = {"service.instance.id": self.instance_id, "process.pid": self.pid,
                      "deployment.environment.name": self.env}
        if not os.environ.get("OTEL_SERVICE_NAME"):
            attributes["service.name"] = self.service
        resource = Resource.create(attributes)
        reader = PeriodicExportingMetricReader(
            OTLPMetricExporter(endpoint=self._endpoint_for("metrics")))
        self.meter_provider = MeterProvider(resource=resource, metric_readers=[reader])
        self.tracer_provider = TracerProvider(resource=resource)
        self.tracer_provider.add_span_processor(
            BatchSpanProcessor(OTLPSpanExporter(endpoint=self._endpoint_for("traces"))))
        self.tracer = self.tracer_provider.get_tracer("ragmon")
        meter = self.meter_provider.get_meter("ragmon")
        histogram = meter.create_histogram
        self.token_usage = histogram(
            "gen_ai.client.token.usage", unit="{token}",
            description="Number of input and output tokens used.",
            explicit_bucket_boundaries_advisory=list(TOKEN_USAGE_BUCKETS))
        self.operation_duration = histogram(
            "gen_ai.client.operation.duration", unit="s", description="GenAI operation duration.",
            explicit_bucket_boundaries_advisory=list(OPERATION_DURATION_BUCKETS))
        self.first_chunk = histogram(
            "gen_ai.client.operation.time_to_first_chunk", unit="s",
            description="Time to receive the first chunk of a streamed response.",
            explicit_bucket_boundaries_advisory=list(FIRST_CHUNK_BUCKETS))
        self.per_chunk = histogram(
            "gen_ai.client.operation.time_per_output_chunk", unit="s",
            description="Time between consecutive output chunks of a streamed response.",
            explicit_bucket_boundaries_advisory=list(PER_CHUNK_BUCKETS))
        self.query_duration = histogram(
            "rag.query.duration", unit="s", description="Duration of one monitored RAG query.",
            explicit_bucket_boundaries_advisory=list(QUERY_LATENCY_BUCKETS))
        self.stage_duration = histogram(
            "rag.stage.duration", unit="s", description="Duration of one stage of a RAG query.",
            explicit_bucket_boundaries_advisory=list(QUERY_LATENCY_BUCKETS))
        self.query_cost = histogram(
            "rag.query.cost", unit="{USD}", description="Dollars one RAG query cost.",
            explicit_bucket_boundaries_advisory=list(COST_BUCKETS))
        self.spend = meter.create_counter(
            "rag.spend", unit="{USD}", description="Dollars spent on LLM calls (as "
            "rag_spend_dollars_total), inside queries and outside them.")
        self.query_first_chunk = histogram(
            "rag.query.time_to_first_chunk", unit="s",
            description="Time from a query's start to its first streamed content chunk.",
            explicit_bucket_boundaries_advisory=list(QUERY_LATENCY_BUCKETS))
        self.quality = histogram(
            "rag.quality.score", unit="1", description="A quality score (0..1) of one answer.",
            explicit_bucket_boundaries_advisory=list(SCORE_BUCKETS))
        self.counters = {}
        for kind in tokens.kinds():
            name = "rag.tokens" if kind.counter == "tokens" else f"rag.{kind.counter}"
            if name not in self.counters:
                self.counters[name] = meter.create_counter(
                    name, unit="{token}", description="Tokens by the library's own kinds "
                    "(non-overlapping, as rag_tokens_total)" if name == "rag.tokens" else
                    f"Tokens of kind {kind.name} (a part of {kind.part_of}, shown apart)")
        self._ready = True

    def ensure(self) -> bool:
        """Makes the providers on first use in this process."""
        if self._ready:
            return True
        with self._lock:
            if not self._ready:
                try:
                    self._start()
                except Exception:
                    if STATE.otel is self:  # counted once, not retried on every query
                        STATE.otel = None
                    hooks.remove(self.finish_hook)
                    raise
        return True

    def forget_after_fork(self) -> None:
        """In a forked child: drop the parent's providers (their threads did not survive the
        fork) so this process makes its own, with its own service.instance.id."""
        if not self._ready:
            return
        self._ready = False
        self._lock = threading.Lock()
        self.meter_provider = self.tracer_provider = None
        for name in ("tracer", "token_usage", "operation_duration", "first_chunk", "per_chunk",
                     "query_duration", "stage_duration", "query_cost", "spend",
                     "query_first_chunk", "quality", "counters"):
            self.__dict__.pop(name, None)
        gc.collect()  # the SDK restarts a reader's thread after fork only while it is alive

    def flush(self, timeout_millis: int = 10_000) -> bool:
        """Exports what is pending now (metrics collected, spans sent)."""
        if not self._ready:
            return True
        spans = self.tracer_provider.force_flush(timeout_millis)
        metrics = self.meter_provider.force_flush(timeout_millis)
        return bool(spans and metrics)

    def shutdown(self) -> None:
        hooks.remove(self.finish_hook)
        if self._ready:
            self._ready = False
            try:
                self.tracer_provider.shutdown()
            finally:
                self.meter_provider.shutdown()

    # --- hooks -----------------------------------------------------------------------------

    @_never_raises
    def stage_ended(self, query, name: str, duration: float) -> None:
        """A stage of `query` ended now: kept for its span."""
        extra = query.extras()
        timeline = extra.timeline
        if timeline is None:
            timeline = extra.timeline = []
        end = time.perf_counter()
        timeline.append((name, end - duration, end))

    @_never_raises
    def llm_call(self, query, provider: str, requested: str | None, start: float, end: float,
                 usage=None, error_type: str | None = None, stream=None) -> None:
        """An instrumented client's call ended (answered, failed, or its stream ended)."""
        self.ensure()
        gen_provider = provider_name(provider)
        operation = OPERATION_NAMES.get(gen_provider, "chat")
        attributes = {"gen_ai.operation.name": operation, "gen_ai.provider.name": gen_provider}
        if requested:
            attributes["gen_ai.request.model"] = requested
        if usage is not None and usage.model:
            attributes["gen_ai.response.model"] = usage.model
        if error_type is not None:
            attributes["error.type"] = error_type
        self.operation_duration.record(end - start, attributes)
        first_chunk = None
        if stream is not None:
            first_chunk = stream.first_content
            if first_chunk is not None:
                self.first_chunk.record(first_chunk, attributes)
            gaps = stream.chunk_gaps
            if gaps:
                record = self.per_chunk.record
                for gap in gaps:
                    record(gap, attributes)
        if usage is not None and requested:
            usage.requested_model = requested  # for gen_ai.request.model when the query ends
        call = LLMCall(start, end, gen_provider, requested, usage, error_type, first_chunk)
        if query is not None:
            extra = query.extras()
            if extra.timeline is None:
                extra.timeline = []
            extra.timeline.append(call)
        else:  # outside a query: its own span, under the caller's current span
            now_perf, now_ns = time.perf_counter(), time.time_ns()
            self._call_span(call, None, now_perf, now_ns)

    @_never_raises
    def usage_counted(self, usage, operation: str, cost: float | None) -> None:
        """One usage counted outside a query (record_tokens, an instrumented client)."""
        self.ensure()
        self._token_usage(usage, None)
        self._rag_tokens(usage.tokens, usage.model, operation)
        if cost:
            self.spend.add(cost, {"rag.operation": operation,
                                  "gen_ai.request.model": usage.model or "unknown"})

    @_never_raises
    def query_finished(self, ctx, done) -> None:
        """The finish hook (hooks.on_finish) of every monitored query: its metrics and spans;
        the record, when the query writes one, gains the query span's trace_id and span_id."""
        self.ensure()
        duration, status, error_type = done.duration, done.status, done.error_type
        settlement, model = done.settlement, done.model
        operation = ctx.operation
        base = {"rag.operation": operation, "rag.status": status}
        if error_type is not None:
            base["error.type"] = error_type
        self.query_duration.record(duration, base)
        by_operation = {"rag.operation": operation}
        extra = ctx.extra
        timeline = extra.timeline if extra is not None else None
        for item in timeline or ():
            if type(item) is tuple:
                self.stage_duration.record(item[2] - item[1],
                                           {"rag.operation": operation, "rag.stage": item[0]})
        if settlement is not None and settlement.lines:
            self._query_token_usage(extra, timeline, settlement, model)
            for name, line in settlement.lines.items():
                if line.cost is None:
                    continue
                label = name if name is not None else "unknown"
                self._rag_tokens(line.tokens, label, operation)
                by_model = {**by_operation, "gen_ai.request.model": label}
                self.query_cost.record(line.cost, by_model)
                if line.cost:
                    self.spend.add(line.cost, by_model)
        record = done.record
        first_token = extra.first_token if extra is not None else None
        relevance = precision = None
        if record is not None:
            first_token = record.get("time_to_first_token")
            relevance, precision = record.get("relevance_score"), record.get("context_precision")
        elif extra is not None:
            relevance, precision = extra.relevance_score, extra.context_precision
        if first_token is not None:
            self.query_first_chunk.record(first_token, by_operation)
        quality = getattr(extra, "quality", None)  # named scores (record_scores), when reported
        scores = dict(quality.scores or {}) if quality is not None else {}
        if relevance is not None:
            scores.setdefault("relevance_score", relevance)
        if precision is not None:
            scores.setdefault("context_precision", precision)
        for name, value in scores.items():
            self.quality.record(value, {**by_operation, "rag.score.name": name})
        ids = self._query_spans(ctx, duration, ctx.start + duration, status, error_type, model,
                                settlement, timeline)
        if record is not None:
            record["trace_id"], record["span_id"] = ids

    def _query_token_usage(self, extra, timeline, settlement, model) -> None:
        """gen_ai.client.token.usage of a query: one value per LLM response it reported while it
        ran (instrumented clients, streams, record_tokens), each once as the settlement counts
        it, and one for what its result reported (a returned SDK response or dict): the rest of
        the settled tokens."""
        reported = []
        if extra is not None:
            sources = list(extra.usages or ())
            if extra.chunks is not None:
                sources.append(extra.chunks)
            for source in sources:
                if isinstance(source, StreamUsage):
                    if source is extra.chunks and not (source.final or source.usage.response_id):
                        continue  # yielded chunks that carried no usage
                    reported.append(source.snapshot())
                else:
                    reported.append(source)
        requested = {item.usage.response_id: item.requested for item in timeline or ()
                     if type(item) is LLMCall and item.usage is not None and item.requested}
        kept, _ = unique(reported)
        rest = dict(settlement.tokens or {})
        for usage in kept:
            self._token_usage(usage, model, requested.get(usage.response_id))
            for kind, value in usage.tokens.items():
                rest[kind] = rest.get(kind, 0) - value
        rest = {kind: value for kind, value in rest.items() if value > 0}
        if rest:
            returned = Usage(rest, model=model, provider=settlement.provider)
            self._token_usage(returned, model)

    # --- metrics ---------------------------------------------------------------------------

    def _token_usage(self, usage, query_model: str | None, requested: str | None = None) -> None:
        prompt, completion = whole_counts(usage.tokens)
        gen_provider = provider_name(usage.provider)
        attributes = {"gen_ai.operation.name": OPERATION_NAMES.get(gen_provider, "chat"),
                      "gen_ai.provider.name": gen_provider}
        model = (requested or getattr(usage, "requested_model", None) or usage.model
                 or query_model)
        if model:
            attributes["gen_ai.request.model"] = model
        if usage.model:
            attributes["gen_ai.response.model"] = usage.model
        if prompt:
            self.token_usage.record(prompt, {**attributes, "gen_ai.token.type": "input"})
        if completion:
            self.token_usage.record(completion, {**attributes, "gen_ai.token.type": "output"})

    def _rag_tokens(self, counts: dict, model: str | None, operation: str) -> None:
        label = model if model is not None else "unknown"
        for kind in tokens.kinds():
            value = counts.get(kind.name)
            if value:
                if kind.counter == "tokens":
                    self.counters["rag.tokens"].add(value, {
                        "rag.operation": operation, "gen_ai.request.model": label,
                        "rag.token.type": kind.metric_label})
                else:
                    self.counters[f"rag.{kind.counter}"].add(value, {
                        "rag.operation": operation, "gen_ai.request.model": label})

    # --- spans -----------------------------------------------------------------------------

    def _query_spans(self, ctx, duration, end, status, error_type, model, settlement,
                     timeline) -> tuple[str, str]:
        now_perf, now_ns = time.perf_counter(), time.time_ns()
        attributes = {"rag.operation": ctx.operation, "rag.request_id": ctx.request_id,
                      "rag.status": status}
        if model:
            attributes["gen_ai.request.model"] = model
        if settlement is not None:
            if settlement.tokens:
                attributes.update(usage_span_attributes(settlement.tokens))
            if settlement.cost is not None:
                attributes["rag.cost_usd"] = settlement.cost
        if error_type is not None:
            attributes["error.type"] = error_type
        span = self.tracer.start_span(
            f"rag.query {ctx.operation}", kind=SpanKind.INTERNAL, attributes=attributes,
            start_time=_wall_ns(ctx.start, now_perf, now_ns))
        if status == "error":
            span.set_status(Status(StatusCode.ERROR, error_type))
        parent = trace.set_span_in_context(span)
        stages = []
        for item in timeline or ():
            if type(item) is tuple:
                name, start, stage_end = item
                stage_span = self.tracer.start_span(
                    f"rag.stage {name}", context=parent, kind=SpanKind.INTERNAL,
                    attributes={"rag.stage": name, "rag.operation": ctx.operation},
                    start_time=_wall_ns(start, now_perf, now_ns))
                stages.append((start, stage_end, stage_span))
        for item in timeline or ():
            if type(item) is not tuple:
                within = parent
                middle = (item.start + item.end) / 2  # a client's own stage ends just after it
                for start, stage_end, stage_span in stages:
                    if start <= middle <= stage_end:
                        within = trace.set_span_in_context(stage_span)
                self._call_span(item, within, now_perf, now_ns)
        for start, stage_end, stage_span in stages:
            stage_span.end(_wall_ns(stage_end, now_perf, now_ns))
        span.end(_wall_ns(end, now_perf, now_ns))
        context = span.get_span_context()
        return format(context.trace_id, "032x"), format(context.span_id, "016x")

    def _call_span(self, call: LLMCall, parent, now_perf: float, now_ns: int) -> None:
        usage = call.usage
        model = call.requested or (usage.model if usage is not None else None)
        operation = OPERATION_NAMES.get(call.provider, "chat")
        attributes = {"gen_ai.operation.name": operation, "gen_ai.provider.name": call.provider}
        if call.requested:
            attributes["gen_ai.request.model"] = call.requested
        if usage is not None:
            if usage.model:
                attributes["gen_ai.response.model"] = usage.model
            if usage.response_id:
                attributes["gen_ai.response.id"] = usage.response_id
            attributes.update(usage_span_attributes(usage.tokens))
        if call.first_chunk is not None:
            attributes["gen_ai.response.time_to_first_chunk"] = call.first_chunk
        if call.error_type is not None:
            attributes["error.type"] = call.error_type
        span = self.tracer.start_span(
            f"{operation} {model}" if model else operation, context=parent, kind=SpanKind.CLIENT,
            attributes=attributes, start_time=_wall_ns(call.start, now_perf, now_ns))
        if call.error_type is not None:
            span.set_status(Status(StatusCode.ERROR, call.error_type))
        span.end(_wall_ns(call.end, now_perf, now_ns))


def _forget_in_child() -> None:
    telemetry = STATE.otel
    if telemetry is not None:
        telemetry.forget_after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_in_child)


def start(settings) -> Telemetry:
    """The Telemetry for `settings`, its finish hook registered; its providers are made on
    first use."""
    telemetry = Telemetry(settings.SERVICE_NAME, settings.ENV,
                          settings.OTEL_EXPORTER_OTLP_ENDPOINT)
    hooks.on_finish(telemetry.finish_hook)
    return telemetry
