"""storage_init.jsonout writes what json.dumps(indent=1) writes, for the timings file's types."""

from __future__ import annotations

import json

import pytest

from storage_init.jsonout import dumps

CASES: list[object] = [
    None, True, False, 0, -7, 2**70, 0.1, 1e-7, 123456789.125, 1e300, float("nan"),
    float("inf"), float("-inf"), "", "plain", 'q"uote\\back', "\n\r\t\b\f\x00\x1f\x7f",
    "caf\u00e9 \u2603 \U0001f680", [], {}, (), [1, [2, [3, []]], {}],
    {"version": 1, "steps": [{"name": "mount-api", "ms": 12.5}], "bootfs": None,
     "nested": {"a": {"b": [True, None]}}, "modules_loaded": ["loop", "virtio_blk"]},
]


@pytest.mark.parametrize("value", CASES, ids=[repr(c)[:30] for c in CASES])
def test_same_text_as_json_dumps(value: object) -> None:
    assert dumps(value) == json.dumps(value, indent=1)


def test_a_real_report_round_trips() -> None:
    report = {"version": 1, "mode": "rdinit", "entered_boottime_s": 2.674617,
              "steps": [{"name": n, "ms": ms} for n, ms in (("log", 9.445), ("trigger", 118.3))],
              "total_ms": 127.745, "image": "/initoverlayfs-6.1.0-57-cloud-amd64.img"}
    assert json.loads(dumps(report)) == report


def test_unsupported_values_fail_like_json() -> None:
    with pytest.raises(TypeError, match="not JSON serializable"):
        dumps({"x": {1, 2}})
    with pytest.raises(TypeError, match="keys must be str"):
        dumps({1: "x"})
