"""Attribution under multi-process mode (PROMETHEUS_MULTIPROC_DIR, as under gunicorn): each
worker names its own heaviest values, and the merged /metrics keeps at most K+1 series per key
with every dollar of every worker, dead (archived) ones included."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# Runs with PROMETHEUS_MULTIPROC_DIR set before anything imports prometheus_client.
SCRIPT = textwrap.dedent('''
    import json, multiprocessing, os, random
    import ragmon
    from ragmon.serving import workers

    ragmon.configure(ATTRIBUTION_TOP_K=3, REQUEST_LOG_DESTINATION="none", PRICE_DATABASE="none",
                     LOG_DESTINATION="none")
    fork = multiprocessing.get_context("fork")

    @ragmon.monitored_query("answer", model="m")
    def answer(tokens_in):
        return {"input_tokens": tokens_in, "output_tokens": 10}

    def work(index):
        rng = random.Random(index)
        for i in range(3000):
            # each worker has its own heavy tenant, and they share a crowd of light ones
            if rng.random() < 0.3:
                tenant, tokens_in = f"heavy{index}", 5000
            else:
                tenant, tokens_in = f"light{rng.randrange(2000)}", 100
            with ragmon.attribution(tenant=tenant):
                answer(tokens_in)
        os._exit(0)

    pids = []
    for index in range(5):
        p = fork.Process(target=work, args=(index,))
        p.start(); p.join(); pids.append(p.pid)
    workers.retire_workers(pids[:3])            # three went through gunicorn's child_exit
    registry = workers.multiprocess_registry()  # the other two are retired by the scrape
    out = {"spend": {}, "queries": {}, "tokens": {}}
    for family in registry.collect():
        for s in family.samples:
            if s.name == "rag_spend_dollars_total":
                out["total"] = out.get("total", 0) + s.value
            if s.name == "rag_tokens_total" and s.labels["token_type"] == "input":
                out["input_tokens"] = s.value
            if s.name == "rag_attribution_membership_changes_total" and s.labels["key"] == "tenant":
                out["changes"] = s.value
            for name in ("spend", "queries", "tokens"):
                if s.name.startswith("rag_attributed_" + name) and s.name.endswith("_total"):
                    value = s.labels["value"] + "/" + s.labels.get("token_type", "")
                    out[name][value] = out[name].get(value, 0) + s.value
    print(json.dumps(out))
''')


def test_workers_merge_into_k_plus_1_series_per_key_with_every_dollar(tmp_path):
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "metrics"),
           "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True,
                            text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout.splitlines()[-1])
    spend, queries, tokens = out["spend"], out["queries"], out["tokens"]
    assert len(spend) <= 4 and len(queries) <= 4 and len({v.split("/")[0] for v in tokens}) <= 4
    assert abs(sum(spend.values()) - out["total"]) < 1e-6 and round(sum(spend.values()), 2) == \
        round(out["total"], 2)
    assert sum(queries.values()) == 5 * 3000
    assert sum(v for k, v in tokens.items() if k.endswith("/input")) == out["input_tokens"]
    # every worker named its heavy tenant; the merge names the three heaviest of the five
    named = {v.split("/")[0] for v in spend} - {"other"}
    assert len(named) == 3 and all(v.startswith("heavy") for v in named)
    assert out["changes"] >= 5 * 3
