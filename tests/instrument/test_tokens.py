"""The token-kind table and the one accumulator."""
import pytest

from ragmon.instrument import tokens
from ragmon.instrument.tokens import PartsExceedWhole, Usage


def test_kinds_keep_the_record_keys_and_metric_labels_existing_logs_and_dashboards_use():
    assert [k.record_key for k in tokens.KINDS] == [
        "input", "output", "cached_input", "cache_write_5m", "cache_write_1h", "reasoning"]
    assert tokens.billed_labels() == (
        "input", "output", "cached_input", "cache_write_5m", "cache_write_1h")
    assert [k.column for k in tokens.KINDS] == [
        "input_tokens", "output_tokens", "cached_input_tokens", "cache_write_5m_tokens",
        "cache_write_1h_tokens", "reasoning_tokens"]
    assert tokens.fields() == ("input_tokens", "output_tokens", "cached_input_tokens",
                               "cache_write_tokens", "cache_write_1h_tokens", "reasoning_tokens")


def test_reported_input_includes_cache_reads_and_writes_and_output_includes_reasoning():
    usage = Usage.reported({"input_tokens": 1000, "cached_input_tokens": 600,
                            "cache_write_tokens": 300, "cache_write_1h_tokens": 50,
                            "output_tokens": 200, "reasoning_tokens": 120}, model="m")
    assert usage.tokens == {"input": 50, "output": 200, "cached_input": 600,
                            "cache_write_5m": 300, "cache_write_1h": 50, "reasoning": 120}
    assert usage.billed_tokens == 1200
    assert usage.as_reported()["input_tokens"] == 1000


@pytest.mark.parametrize("counts", [
    {"input_tokens": 500, "output_tokens": 150},
    {"input_tokens": 1000, "cached_input_tokens": 600, "output_tokens": 200,
     "reasoning_tokens": 120},
    {"input_tokens": 0, "output_tokens": 7},
    {},
])
def test_counts_keyed_by_kind_name_make_the_usage_the_way_in_names_make(counts):
    by_kind = {tokens.by_field(field).name: value for field, value in counts.items() if value}
    made = Usage.of_kinds(by_kind, "m", None, True)
    assert made == Usage.reported(counts, model="m", by_hand=True)
    assert made.tokens == Usage.reported(counts).tokens  # the same kinds left out, none as 0


def test_counts_keyed_by_kind_name_with_a_part_larger_than_its_whole_are_refused():
    with pytest.raises(PartsExceedWhole) as refused:
        Usage.of_kinds({"input": 100, "cache_write_5m": 101})
    assert "cache_write_tokens=101" in str(refused.value)


@pytest.mark.parametrize("counts, whole", [
    ({"input_tokens": 100, "cached_input_tokens": 101}, "input"),
    ({"input_tokens": 100, "cached_input_tokens": 60, "cache_write_tokens": 41}, "input"),
    ({"output_tokens": 10, "reasoning_tokens": 11}, "output"),
])
def test_a_part_larger_than_its_whole_is_refused_naming_both(counts, whole):
    with pytest.raises(PartsExceedWhole) as refused:
        Usage.reported(counts)
    assert refused.value.whole == whole
    assert f"{whole}_tokens=" in str(refused.value)


def test_usages_add_up_by_kind():
    one, two = Usage(input=1, output=2), Usage(input=10, cached_input=5, reasoning=1)
    one.add(two)
    assert one.tokens == {"input": 11, "output": 2, "cached_input": 5, "cache_write_5m": 0,
                          "cache_write_1h": 0, "reasoning": 1}
    assert tokens.record_tokens_field(one.tokens) == {
        "input": 11, "output": 2, "cached_input": 5, "cache_write_5m": 0, "cache_write_1h": 0,
        "reasoning": 1}
    assert tokens.record_tokens_field(Usage(input=3).tokens) == {
        "input": 3, "output": 0, "cached_input": 0}
    with pytest.raises(TypeError, match="input_tokens"):
        Usage(input_tokens=3)
