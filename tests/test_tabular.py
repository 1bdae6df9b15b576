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


def _csv(rows: list[str]) -> bytes:
    return ("\n".join(rows) + "\n").encode()


def test_every_problem_of_a_file_in_one_answer_with_column_and_row() -> None:
    rows = ["x,y,color,label"] + [f"{i}.5,{i},{'red' if i % 2 else 'blue'},{i % 2}" for i in range(40)]
    rows[5] = "14O.2,4,red,0"  # a typo in a numeric column: a bad cell, not a text column
    rows[9] = "abc,2,blue,"  # another bad cell, and a missing target
    rows[8] = "3.1,,red,1"  # a missing feature value
    rows[12] = "2.2,inf,red,1"  # an infinite one
    with pytest.raises(TableError) as exc:
        prepare_table(_csv(rows), "t.csv", "label")
    assert [(e["loc"], e["msg"]) for e in exc.value.errors] == [
        (("file", "x"), "column 'x' row 5: '14O.2' is not a number"),
        (("file", "x"), "column 'x' row 9: 'abc' is not a number"),
        (
            ("file", "color"),
            "column 'color' is not numeric: row 1 is 'blue' (40 rows in all); "
            "declare it categorical (--categorical color) or drop it",
        ),
        (
            ("file", "y"),
            "column 'y' has 1 missing value(s) in row 8; fix the file, or pass drop_missing "
            "(--drop-missing) to drop such rows",
        ),
        (
            ("file", "y"),
            "column 'y' has 1 infinite value(s) in row 12; fix the file, or pass drop_missing "
            "(--drop-missing) to drop such rows",
        ),
        (
            ("target",),
            "column 'label' has 1 missing value(s) in row 9; fix the file, or pass drop_missing "
            "(--drop-missing) to drop such rows",
        ),
    ]


def test_at_most_twenty_problems_then_how_many_more() -> None:
    rows = ["x,label"] + [f"{i},{i % 2}" for i in range(200)]
    for r in range(1, 31):  # 30 typos in a column of 200 numbers: still mostly numeric
        rows[r] = f"x{r},{r % 2}"
    with pytest.raises(TableError) as exc:
        prepare_table(_csv(rows), "t.csv", "label")
    msgs = [e["msg"] for e in exc.value.errors]
    assert len(msgs) == 21 and msgs[0] == "column 'x' row 1: 'x1' is not a number"
    assert msgs[19] == "column 'x' row 20: 'x20' is not a number"
    assert msgs[20] == "... and 10 more problem(s): the first 20 are listed"


def test_drop_missing_says_which_rows_went() -> None:
    rows = ["x,y,label"] + [f"{i},{i * 2},{i % 2}" for i in range(30)]
    rows[3], rows[17], rows[30] = "2,,0", "16,inf,0", "29,58,"
    t = prepare_table(_csv(rows), "t.csv", "label", drop_missing=True)
    assert (t.n_dropped, t.dropped_rows, t.n_rows) == (3, [3, 17, 30], 27)
