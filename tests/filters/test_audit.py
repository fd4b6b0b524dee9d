from __future__ import annotations

from pathlib import Path

import pytest

from filters import audit


def test_rows_validate_step_and_decision() -> None:
    with pytest.raises(ValueError):
        audit.row(run_id="r", step="nope", decision="keep", reason="x")
    with pytest.raises(ValueError):
        audit.row(run_id="r", step="clip", decision="maybe", reason="x")


def test_write_read_summary_explain_latest_wins(tmp_path: Path) -> None:
    r1 = audit.row(
        run_id="r1",
        step="score",
        video_id="v",
        clip_id="v_00000000",
        decision="keep",
        reason="above_threshold",
        score=0.8,
        threshold=0.5,
        features={"motion": 1.5},
        ts="2026-01-01T00:00:00.000000Z",
    )
    r2 = audit.row(
        run_id="r1",
        step="probe",
        video_id="w",
        decision="drop",
        reason="too_short",
        message="7.9 s of video",
        ts="2026-01-01T00:00:00.000000Z",
    )
    audit.write_rows(tmp_path / "audit" / "runs" / "r1.parquet", [r1, r2])
    # a rebuild with a higher threshold drops the clip: the newer row is the current state
    r3 = dict(
        r1,
        run_id="r2",
        decision="drop",
        reason="below_threshold",
        threshold=0.9,
        ts="2026-01-02T00:00:00.000000Z",
    )
    audit.write_rows(tmp_path / "audit" / "runs" / "r2.parquet", [r3])
    assert audit.summary(tmp_path) == [
        ("probe", "drop", "too_short", 1),
        ("score", "drop", "below_threshold", 1),
    ]
    hist = audit.explain(tmp_path, "v_00000000")
    assert [h["decision"] for h in hist] == ["keep", "drop"]
    assert hist[0]["features"] == {"motion": 1.5}
    assert audit.explain(tmp_path, "w")[0]["message"] == "7.9 s of video"
    # writing the same file name again is a no-op, not a duplicate
    audit.write_rows(tmp_path / "audit" / "runs" / "r2.parquet", [r3, r3])
    assert len(audit.read_audit(tmp_path)) == 3


def test_empty_audit(tmp_path: Path) -> None:
    assert audit.summary(tmp_path) == []
    assert audit.read_audit(tmp_path).num_rows == 0
