"""A truncated image (header intact, end cut off) is named by the cheap check the validation files
get at setup, so a fit stops before it trains, not after a whole epoch at the first validation
(the fit itself: tests/data/test_food.py::test_fit_with_a_bad_validation_file_stops_before_training)."""

from __future__ import annotations

import pytest

from ctxlit.data.decode import check_image_header
from ctxlit.errors import DatasetError
from tests.data.conftest import write_image


@pytest.mark.parametrize("ext", [".jpg", ".png"])
def test_a_truncated_image_is_named_by_the_cheap_check_and_a_whole_one_passes(ext, tmp_path):
    whole = write_image(tmp_path / f"whole{ext}")
    check_image_header(whole)
    data = whole.read_bytes()
    (tmp_path / f"cut{ext}").write_bytes(data[: len(data) * 3 // 4])
    with pytest.raises(DatasetError, match=rf"cut\{ext}: image file is truncated"):
        check_image_header(tmp_path / f"cut{ext}")
    # bytes after JPEG's end marker (a camera's trailer) are not a truncation
    (tmp_path / f"trailer{ext}").write_bytes(data + b"\x00" * 100)
    check_image_header(tmp_path / f"trailer{ext}")
