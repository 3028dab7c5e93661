"""What list prices cost: building the table once, and one lookup per query, against
genai-prices' own calc_price measured in the same process.

    python bench/bench_prices.py [--runs 5] [--lookups 20000]

Building is timed in fresh interpreters (median of --runs), after `import ragmon` (bench_import
times that): from the shipped snapshot, and from the installed genai-prices converted on the
spot (what a process does when genai-prices is newer than the snapshot), each with its first
lookup; beside them, importing genai-prices and its first calc_price. A lookup is
``PriceTable.match(model, day, provider=..., service_tier=..., prompt_tokens=...)`` plus
``cost_by_kind`` for one request's tokens, on a table already warm (the per-query path).
"""
from __future__ import annotations

import argparse
import datetime as dt
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

BUILD = """
import time
from ragmon.instrument.pricing import ModelPrice, PriceTable
start = time.perf_counter()
from ragmon.instrument import price_database
{how}
table.match("gpt-5.4-mini")
print(time.perf_counter() - start)
"""
HOWS = {
    "shipped snapshot": "table = PriceTable(ModelPrice(0.003, 0.015, 0.0003), "
                        "database=price_database.load_database('shipped'))",
    "genai-prices, converted": "table = PriceTable(ModelPrice(0.003, 0.015, 0.0003), database="
                               "price_database.PriceDatabase(price_database."
                               "snapshot_from_genai_prices(), 'genai-prices'))",
    "import genai_prices + first calc_price": None,
}
GENAI = """
import time
start = time.perf_counter()
from genai_prices import Usage, calc_price
calc_price(Usage(input_tokens=1000, output_tokens=100), "gpt-5.4-mini")
print(time.perf_counter() - start)
"""
MODELS = [("gpt-5.4-mini", "openai"), ("claude-sonnet-4-5-20250929", "anthropic"),
          ("gemini-2.5-flash", "google"), ("deepseek-chat", None), ("mistral-small-latest", None)]
TOKENS = {"input": 700, "cached_input": 250, "cache_write": 50, "cache_write_1h": 0, "output": 180}


def fresh(code: str, runs: int) -> float:
    times = [float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                  check=True, cwd=Path(__file__).resolve().parents[1]).stdout)
             for _ in range(runs)]
    return statistics.median(times) * 1000


def per_call(fn, n: int) -> float:
    start = time.perf_counter()
    for i in range(n):
        fn(i)
    return (time.perf_counter() - start) / n * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--lookups", type=int, default=20000)
    args = parser.parse_args()

    builds = [(name, fresh(BUILD.format(how=how) if how else GENAI, args.runs))
              for name, how in HOWS.items()]
    print(f"\nBuilding the price table once, median of {args.runs} fresh interpreters\n")
    print("| source                                  | ms     |")
    print("|-----------------------------------------|--------|")
    for name, ms in builds:
        print(f"| {name:39} | {ms:6.1f} |")

    from genai_prices import Usage, calc_price

    from ragmon.instrument.price_database import load_database
    from ragmon.instrument.pricing import ModelPrice, PriceTable

    table = PriceTable(ModelPrice(0.003, 0.015, 0.0003), database=load_database("shipped"))
    when = dt.datetime(2026, 12, 7, 12, tzinfo=dt.timezone.utc)
    day = when.date()
    for model, provider in MODELS:  # warm: each name resolved once, as on a running service
        table.match(model, day, provider=provider)
    usage = Usage(input_tokens=1000, cache_read_tokens=250, cache_write_tokens=50, output_tokens=180)
    n, k = args.lookups, len(MODELS)
    dict_prices = {model: table.match(model, day).price for model, _ in MODELS}

    def baseline(i):  # a hand-kept dict of prices: the floor of any lookup
        dict_prices[MODELS[i % k][0]].cost(700, 180, 250, 50)

    def ours(i):
        model, provider = MODELS[i % k]
        table.match(model, day, provider=provider, service_tier="default",
                    prompt_tokens=1000).price.cost_by_kind(TOKENS)

    def ours_timed(i):
        model, provider = MODELS[i % k]
        table.match(model, when, provider=provider).price.cost_by_kind(TOKENS)

    def theirs(i):
        model, provider = MODELS[i % k]
        calc_price(usage, model, provider_id=provider, genai_request_timestamp=when)

    rows = [("dict of prices + ModelPrice.cost (floor)", per_call(baseline, n)),
            ("PriceTable.match(day, provider, tier, prompt) + cost_by_kind", per_call(ours, n)),
            ("PriceTable.match(datetime, provider) + cost_by_kind", per_call(ours_timed, n)),
            ("genai_prices.calc_price", per_call(theirs, max(n // 10, 100)))]
    print(f"\nOne lookup and cost per query, warm, {n} calls over {k} models\n")
    print("| path                                                         | µs/call | vs floor |")
    print("|--------------------------------------------------------------|---------|----------|")
    for name, us in rows:
        print(f"| {name:60} | {us:7.2f} | {us / rows[0][1]:7.1f}x |")


if __name__ == "__main__":
    main()
