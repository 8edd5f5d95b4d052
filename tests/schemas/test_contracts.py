import pyarrow as pa
import pytest

from schemas import QUARANTINE, RECORDINGS, SEGMENTS, ReasonCode, SchemaError, segment_id


def _recording(**overrides):
    row = {
        "recording_id": "r1",
        "source_uri": "/a.wav",
        "corpus": "c",
        "container": "wav",
        "sample_rate_hz": 16000,
        "source_channels": 1,
        "channels": 1,
        "bits": 16,
        "duration_s": 1.5,
        "bytes": 48044,
        "content_sha1": "ab",
        "peak_dbfs": -3.0,
        "rms_dbfs": -20.0,
        "clipping_ratio": 0.0,
        "speech_ratio": 0.5,
        "snr_db": None,
    }
    row.update(overrides)
    return row


def test_from_rows_fills_nullable_columns_and_stamps_version():
    table = RECORDINGS.from_rows([_recording()])
    assert table.num_rows == 1
    assert table.column("dup_of").to_pylist() == [None]
    assert table.schema.metadata[b"minmo.version"] == b"3"


def test_required_column_null_is_rejected():
    with pytest.raises((SchemaError, pa.ArrowInvalid)):
        RECORDINGS.from_rows([_recording(corpus=None)])


def test_negative_duration_is_rejected():
    with pytest.raises(SchemaError, match="duration_s"):
        RECORDINGS.from_rows([_recording(duration_s=-1.0)])


def test_quarantine_reason_is_a_closed_enum():
    ok = QUARANTINE.from_rows(
        [{"source_uri": "x", "step": "ingest", "reason_code": ReasonCode.TOO_LONG.value}]
    )
    assert ok.num_rows == 1
    with pytest.raises(SchemaError, match="not in ReasonCode"):
        QUARANTINE.from_rows([{"source_uri": "x", "step": "ingest", "reason_code": "meh"}])


def test_conform_names_missing_columns():
    with pytest.raises(SchemaError, match="missing columns"):
        SEGMENTS.conform(pa.table({"segment_id": ["a"]}))


def test_segment_id_is_stable_and_ordered():
    assert segment_id("rec", 1, 1.2345, 3.0) == "rec-c1-000001234-000003000"
    assert segment_id("rec", 0, 0.0, 1.0) < segment_id("rec", 0, 2.0, 3.0)
