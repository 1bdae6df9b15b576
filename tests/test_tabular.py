"""app.tabular: encoding new rows the way the training rows were (what `gridsweep predict` does)."""

from __future__ import annotations

import numpy as np
import pytest

from app.tabular import Encoding, TableError, encode_frame, prepare_table, read_table


def test_numeric_categories_read_the_same_with_or_without_gaps() -> None:
    # "zip" is read as float in training (an empty cell) and as int at prediction time.
    t = prepare_table(b"a,zip,y\n1,10,0\n2,,1\n3,20,0\n4,10,1\n5,20,1\n", "t.csv", "y", categorical=["zip"],
                      drop_missing=True)  # fmt: skip
    assert t.encoding.categorical == {"zip": ["10", "20"]} and t.n_dropped == 1
    df, _ = read_table(b"a,zip\n7,20\n8,10\n", "new.csv")
    np.testing.assert_array_equal(encode_frame(df, t.encoding), [[7, 0, 1], [8, 1, 0]])


def test_new_rows_are_rejected_with_column_and_row() -> None:
    enc = Encoding(columns=["a", "color"], categorical={"color": ["blue", "red"]})
    df, _ = read_table(b"a,color\n1,red\n2,green\nx,blue\n", "new.csv")
    with pytest.raises(TableError) as exc:
        encode_frame(df, enc)
    msgs = [e["msg"] for e in exc.value.errors]
    assert any("'color' has categories not seen in training in row 2: 'green'" in m for m in msgs)
    assert any("'a' is not numeric: row 3 is 'x'" in m or "'a' row 3: 'x' is not a number" in m for m in msgs)
    df, _ = read_table(b"color\nred\n", "new.csv")
    with pytest.raises(TableError, match=r"lacks the feature column\(s\) \['a'\]"):
        encode_frame(df, enc)
