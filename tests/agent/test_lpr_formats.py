"""Brazilian plate formats: position-aware look-alike correction, the plate's look deciding the
fifth character, and text that is not a plate refused."""

import pytest

from shared.plates import edit_distance, plate_from_alternatives, read_plate


@pytest.mark.parametrize(
    ("text", "style", "expected"),
    [
        ("BRA2E19", None, "BRA2E19"),  # Mercosul as read
        ("ABC-1234", None, "ABC1234"),  # old format, dash dropped
        ("abc 1234", None, "ABC1234"),
        ("8RA2E19", None, "BRA2E19"),  # B read as 8 in a letter position
        ("BRA2E1I", None, "BRA2E11"),  # I read in a digit position
        ("0PQ1O34", None, "OPQ1O34"),  # O/0: letter at 1, fifth kept as read
        ("ABCI234", None, "ABC1234"),  # I/1 in a digit position
        ("5ZG6B78", None, "SZG6B78"),  # S/5 in a letter position
        ("ABC12S4", None, "ABC1254"),  # S/5 in a digit position
        ("A6C1234", None, "AGC1234"),  # G/6
        ("ABC1Z34", "old", "ABC1234"),  # grey plate: the fifth is a digit (Z/2)
        ("ABC1234", "mercosul", "ABC1Z34"),  # blue band: the fifth is a letter
        ("ABC1O34", "old", "ABC1034"),  # O/0 decided by the plate's look
        ("ABC1034", "mercosul", "ABC1O34"),
        ("BRA2E19", "old", "BRA2E19"),  # E has no digit twin: the text wins over the look
        ("|ABC1234", None, "ABC1234"),  # a border read as a glyph
        ("IABC12341", None, "ABC1234"),  # plate borders read as I and 1 on both sides
        ("IABC1234XY", None, None),  # ten glyphs: not one plate
    ],
)
def test_reading_corrections(text: str, style: str | None, expected: str | None) -> None:
    assert read_plate(text, style) == expected  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "text",
    [
        "PADARIA",  # shop name: three corrections needed
        "FARMACIA",
        "PARE",
        "ESTACIONAMENTO",
        "SAO PAULO - SP",  # the city line of an old plate
        "BRASIL",  # Mercosul band
        "1234567",  # all digits: the letter positions cannot all be look-alikes
        "VELOCIDADE 60",
        "",
        "ÁBC1234",
    ],
)
def test_text_that_is_not_a_plate(text: str) -> None:
    assert read_plate(text) is None


def test_probabilities_decide_between_look_alikes() -> None:
    # Seven positions; the fifth is 0.55 "0" and 0.45 "O": together a strong letter or digit.
    def one(ch: str) -> dict[str, float]:
        return {ch: 0.99}

    positions = [one("B"), one("R"), one("A"), one("2"), {"0": 0.55, "O": 0.45}, one("1"), one("9")]
    mercosul = plate_from_alternatives(positions, "mercosul")
    assert mercosul is not None and mercosul[0] == "BRA2O19" and mercosul[1] > 0.9
    old = plate_from_alternatives(positions, "old")
    assert old is not None and old[0] == "BRA2019"
    # A weak glyph lowers the confidence (geometric mean of the positions).
    weak = plate_from_alternatives([*positions[:6], {"9": 0.2, "Q": 0.1}], "old")
    assert weak is not None and weak[1] < 0.85
    assert plate_from_alternatives(positions[:6]) is None  # six glyphs are not a plate


def test_edit_distance() -> None:
    assert edit_distance("BRA2E19", "BRA2E19") == 0
    assert edit_distance("BRA2E19", "BRA2E18") == 1
    assert edit_distance("BRA2E19", "BRA2E1") == 1
    assert edit_distance("BRA2E19", "ABC1234") == 3  # capped at limit + 1
