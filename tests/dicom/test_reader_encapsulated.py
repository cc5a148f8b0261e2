"""The reader's own walk over encapsulated Pixel Data items, pinned against pydicom's (``pydicom.encaps``).

The reader keeps a hand-written walk because pydicom's ``generate_fragments`` cannot tell a truncated file (see
``monai_ultraad.dicom.reader._encapsulated_item_lengths``): on complete data both walks must see the same items; on
truncated data pydicom's walks on quietly while the reader's refuses the file.
"""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from pydicom.encaps import encapsulate, generate_fragments

from monai_ultraad.dicom.reader import UnsupportedDicomError, _encapsulated_item_lengths

DELIMITER = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"  # (FFFE,E0DD) Sequence Delimitation Item, length 0
FRAGMENTS = [b"\x01" * 10, b"\x02" * 1000, b"\x03" * 4]


def _walk(data: bytes) -> list[int]:
    return _encapsulated_item_lengths(io.BytesIO(data), 0, len(data), Path("x.dcm"))


@pytest.mark.parametrize("has_bot", [True, False])
def test_same_items_as_pydicom(has_bot):
    data = encapsulate(FRAGMENTS, has_bot=has_bot) + DELIMITER
    assert _walk(data) == [len(item) for item in generate_fragments(data)]
    assert _walk(data)[1:] == [len(f) for f in FRAGMENTS]  # item 0 is the (possibly empty) basic offset table


@pytest.mark.parametrize("cut", [len(DELIMITER), len(DELIMITER) + 2])
def test_truncated_data_is_refused_where_pydicom_walks_on(cut):
    data = (encapsulate(FRAGMENTS, has_bot=True) + DELIMITER)[:-cut]
    list(generate_fragments(data))  # pydicom: no error, the last fragment just comes short
    with pytest.raises(UnsupportedDicomError, match="truncated"):
        _walk(data)


def test_unexpected_tag_is_refused_like_pydicom():
    data = encapsulate(FRAGMENTS, has_bot=True) + b"\x08\x00\x10\x00\x00\x00\x00\x00" + DELIMITER
    with pytest.raises(ValueError, match="Unexpected tag"):
        list(generate_fragments(data))
    with pytest.raises(UnsupportedDicomError, match="unexpected"):
        _walk(data)
