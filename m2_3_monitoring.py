"""M2.3 production monitoring for RAG / LLM services: the public API of ``ragmon`` and the demo.

    from m2_3_monitoring import monitored_query, stage, start_metrics_server

    @monitored_query(operation="rag_search", model="gpt-4o-mini")
    def answer(question):
        with stage("retrieval"):
            docs = search(question)
        with stage("generation"):
            reply = llm(question, docs)
        return {"answer": reply.text, "input_tokens": reply.usage.input,
                "output_tokens": reply.usage.output, "relevance_score": 0.85}

    start_metrics_server()          # http://127.0.0.1:8000/metrics

`python m2_3_monitoring.py --help` runs a simulated RAG service (the demo; also ``ragmon-demo``).
Everything here is ``ragmon``'s public API; ``import ragmon`` gives the same names.
"""
from __future__ import annotations

from ragmon import *  # noqa: F401,F403  (the public API, re-exported)
from ragmon import __all__  # noqa: F401

if __name__ == "__main__":
    import sys

    from ragmon.demo import main
    sys.exit(main())
