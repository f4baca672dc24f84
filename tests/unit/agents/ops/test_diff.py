"""The diff's comparison: bytes first, then field by field, less ignored and clock-stamped fields."""
from __future__ import annotations

from agents.ops.diff import compare, field_diff, flatten
from schemas import records
from schemas.avro import codec_for


def test_flatten_names_nested_fields_and_list_items() -> None:
    assert flatten({"a": {"b": 1}, "l": [5, {"c": 2}], "e": {}}) == {"a.b": 1, "l.0": 5, "l.1.c": 2, "e": {}}


def test_field_diff_leaves_out_ignored_globs_and_close_clocked_times() -> None:
    left = {"lat": 1.0, "outbox": [1], "ts": 1000, "far": 1000}
    right = {"lat": 2.0, "outbox": [2], "ts": 1400, "far": 9000}
    assert field_diff(left, right, ["outbox.*"], ["ts", "far"], tolerance_ms=500) == {
        "far": [1000, 9000], "lat": [1.0, 2.0]}


def test_compare_counts_equal_different_and_one_sided_keys_with_samples() -> None:
    codec = codec_for(records.Watermark)
    left = {"same": codec.dumps({"ts": 1}), "changed": codec.dumps({"ts": 2}), "gone": codec.dumps({"ts": 3})}
    right = {"same": codec.dumps({"ts": 1}), "changed": codec.dumps({"ts": 20}), "new": codec.dumps({"ts": 4})}
    result = compare(left, right, codec.loads, [], sample=10)
    assert (result.equal, result.different, result.only_left, result.only_right) == (1, 1, 1, 1)
    assert {"key": "changed", "fields": {"ts": [2, 20]}} in result.samples
    assert not result.same
