from portal.pii import has_number_run, looks_like_mynumber, mask_mynumbers


def test_free_text_catches_numbers_however_typed() -> None:
    typed = ("123456789018", "1234-5678-9018", "１２３４ ５６７８ ９０１８", "no 1234 5678 9018 x")
    for text in typed:
        assert has_number_run(text), text
    for text in ("退職のため", "2026年11月24日", "12345678901"):
        assert not has_number_run(text), text


def test_generated_values_are_checked_narrowly() -> None:
    assert looks_like_mynumber("1234 5678 9018") and looks_like_mynumber("x123456789018y")
    assert not looks_like_mynumber("2026-11-24T03:10:06")
    assert not looks_like_mynumber("1234567890123")


def test_masking_keeps_the_rest_of_a_name() -> None:
    assert mask_mynumbers("山田_１２３４５６７８９０１８.xlsx") == "山田_************.xlsx"
    assert mask_mynumbers("社員一覧.csv") == "社員一覧.csv"
