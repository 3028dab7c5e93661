"""Redaction of one string of 16 KiB, 64 KiB and 1 MiB, against baselines in the same process.

Rows, for several kinds of text (prose, one long run of letters, the adversarial runs that made
the previous patterns backtrack):
  redact_text()  what records and log lines use: cut to 64 KiB, then searched (target: 1 MiB
                 under 50 ms)
  redact()       the whole string searched, no cut (linear: 1 MiB about 16x 64 KiB)
Baselines:
  (a) json.dumps  writing the same string as JSON, which every record and log line pays anyway
  (b) one regex   a single literal-prefixed pattern (OpenAI keys) over the whole string: the floor
                  of any regex pass
  (c) previous    the single-alternation patterns redaction used before (their backtracking made
                  64 KiB take seconds); run only where one call takes under --previous-budget s

    python bench/bench_redaction.py [--repeats 5] [--previous-budget 5]
"""
from __future__ import annotations

import argparse
import json
import math
import re
import statistics
import sys
import time

from ragmon.instrument.redaction import redact, redact_text

SIZES = {"16 KiB": 16 * 1024, "64 KiB": 64 * 1024, "1 MiB": 1024 * 1024}
TEXTS = {
    "prose": "The retrieval step returned five documents about refunds; see ticket 4711. ",
    "letters": "a",
    "url scheme characters": "ab+",
    "jwt prefixes": "eyJ-",
}

# The patterns of the previous release (one alternation), for baseline (c).
_PREVIOUS_KEY_WORDS = (r"(?:password|passwd|pwd|passphrase|secret|token|api[_\-]?key|apikey|access[_\-]?key"
                       r"|private[_\-]?key|client[_\-]?secret|routing[_\-]?key|service[_\-]?key"
                       r"|integration[_\-]?key|authorization|cookie|credentials?)")
PREVIOUS = re.compile(
    r"(?P<key>sk-(?:ant-|proj-)?[A-Za-z0-9_\-]{16,})"
    r"|(?P<aws_id>\b(?:AKIA|ASIA|AGPA|AIDA|AROA|AIPA|ANPA|ANVA|APKA)[0-9A-Z]{16}\b)"
    r"|(?P<slack>xox[abprs]-[A-Za-z0-9\-]{10,})"
    r"|(?P<slack_hook>https?://hooks\.slack\.com/(?:services|workflows|triggers)/[A-Za-z0-9/_\-]+)"
    r"|(?P<github>gh[pousr]_[A-Za-z0-9]{20,})"
    r"|(?P<google>AIza[0-9A-Za-z_\-]{30,})"
    r"|(?P<jwt>\beyJ[A-Za-z0-9_\-]{5,}\.eyJ[A-Za-z0-9_\-]{5,}\.[A-Za-z0-9_\-]*)"
    r"|(?P<scheme>(?i:bearer|basic|token|digest)\s+)(?P<credential>[A-Za-z0-9._~+/\-]{8,}=*)"
    r"|(?P<url_user>[a-zA-Z][a-zA-Z0-9+.\-]*://[^/\s:@]*:)(?P<url_password>[^/\s@]+)(?P<at>@)"
    r"|(?P<pair>" + _PREVIOUS_KEY_WORDS + r"[\"']?\s*[:=]\s*[\"']?)(?P<value>[^\s,;\"'&}]{3,})"
    r"|(?P<aws_secret>(?<![A-Za-z0-9/+=])(?=[A-Za-z0-9/+]*[A-Z])(?=[A-Za-z0-9/+]*[a-z])"
    r"(?=[A-Za-z0-9/+]*[0-9])[A-Za-z0-9/+]{40}(?![A-Za-z0-9/+=]))"
    r"|(?P<card>(?<![\d\-])\d(?:[ \-]?\d){12,18}(?![\d\-]))")
ONE_REGEX = re.compile(r"sk-(?:ant-|proj-)?[A-Za-z0-9_\-]{16,}")


def timed(call, text: str, repeats: int) -> float:
    """Median milliseconds of `repeats` calls."""
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        call(text)
        runs.append(time.perf_counter() - start)
    return statistics.median(runs) * 1000


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--previous-budget", type=float, default=5.0,
                        help="skip the previous patterns where one call would take longer (s)")
    args = parser.parse_args(argv)
    print(f"Redaction of one string, median of {args.repeats} calls, ms "
          f"(Python {sys.version.split()[0]}, {sys.platform})\n")
    print("| text                  | size   | redact_text | redact | (a) json.dumps | (b) one regex | (c) previous |")
    print("|-----------------------|--------|-------------|--------|----------------|---------------|--------------|")
    worst_mib = 0.0
    for name, unit in TEXTS.items():
        measured: list[tuple[int, float]] = []  # (size, ms) of the previous patterns
        for size_name, size in SIZES.items():
            text = (unit * (size // len(unit) + 1))[:size]
            bounded = timed(redact_text, text, args.repeats)
            whole = timed(redact, text, args.repeats)
            dumps = timed(json.dumps, text, args.repeats)
            floor = timed(lambda t: ONE_REGEX.sub("", t), text, args.repeats)
            # the previous patterns were quadratic on some texts: predict before running them,
            # from the growth seen between the two sizes before (quadratic after only one)
            predicted = 0.0
            if measured:
                exponent = 2.0
                if len(measured) >= 2:
                    (s1, t1), (s2, t2) = measured[-2:]
                    exponent = max(1.0, math.log(max(t2, 1e-6) / max(t1, 1e-6)) / math.log(s2 / s1))
                predicted = measured[-1][1] * (size / measured[-1][0]) ** exponent
            if predicted / 1000 <= args.previous_budget:
                previous_ms = timed(lambda t: PREVIOUS.sub("", t), text, 1)
                measured.append((size, previous_ms))
                previous = f"{previous_ms:12.1f}"
            else:
                previous = f"{'~' + format(predicted / 1000, '.0f') + ' s':>12}"
            if size_name == "1 MiB":
                worst_mib = max(worst_mib, bounded)
            print(f"| {name:21} | {size_name:6} | {bounded:11.2f} | {whole:6.1f} | {dumps:14.2f} "
                  f"| {floor:13.2f} | {previous} |")
    verdict = "met" if worst_mib < 50 else "MISSED"
    print(f"\nTarget: redact_text() of 1 MiB under 50 ms: worst {worst_mib:.1f} ms, {verdict}. "
          "\"~N s\": the previous patterns skipped, time extrapolated from the smaller size.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
