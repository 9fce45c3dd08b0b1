"""Plate normalisation cases, including OCR look-alike corrections by position."""

import pytest

from shared.plates import display, normalize, plate_format, to_mercosul


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("BRA2E19", "BRA2E19"),
        ("abc-1234", "ABC1234"),
        ("ABC 1234", "ABC1234"),
        ("8RA2E19", "BRA2E19"),  # B read as 8 in a letter position
        ("BRA2E1I", "BRA2E11"),  # I read in a digit position
        ("0PQ1O34", "OPQ1O34"),  # leading zero is a letter; fifth stays a letter (Mercosul)
        ("ABCI234", "ABC1234"),
        ("ABC12345", None),
        ("PARE", None),
        ("", None),
        ("ÁBC1234", None),
    ],
)
def test_normalize(text: str, expected: str | None) -> None:
    assert normalize(text) == expected


def test_formats_and_display() -> None:
    assert plate_format("BRA2E19") == "mercosul"
    assert plate_format("ABC1234") == "old"
    assert plate_format("ABCD123") is None
    assert display("ABC1234") == "ABC-1234"
    assert display("BRA2E19") == "BRA2E19"
    assert to_mercosul("ABC1234") == "ABC1C34"
    assert to_mercosul("BRA2E19") == "BRA2E19"
