"""One adapter per LLM SDK: how its responses and stream events report usage (brought to one
``tokens.Usage``), and, where the SDK needs its own hook, how its client is instrumented. A new
SDK is one module here plus its tests; the kinds it reports come from ``tokens.KINDS``."""
