"""DICOMweb datastore for ultrasound (``--studies http://pacs/dicom-web``): what MONAI Label's own does, with the
gaps for 2D ultrasound closed.

Found by running MONAI Label 0.8.5 against Orthanc with the 29 real US files in ../shared/data/dicom:

* Its converter hands a series to SimpleITK/GDCM. A single-frame US object becomes a (cols, rows, 1) image with 1 or
  3 components (palette colour expanded to RGB, 8 or 16 bit; YBR to RGB); a multi-frame one becomes (cols, rows,
  frames); GDCM cannot read JPEG XL (will-jxl.dcm) nor two fo-dicom files, and the exception surfaced as HTTP 500.
  Here: one object per series is converted; what GDCM cannot read is a 422 naming the series and GDCM's reason,
  cine loops are refused by the infer task with a 422 (use the deploy app).
* Labels saved with tag ``final`` were only kept when they could be turned into a DICOM SEG and stored in the PACS
  (dcmqi's itkimage2segimage), and ``datalist()`` deleted local labels that the PACS does not have. dcmqi cannot
  make a SEG of a 2D ultrasound image without patient geometry, so every label would have been lost. Here the
  label is kept in the local cache first (validated, atomic); the SEG push is tried afterwards and its outcome is
  recorded in the label's info (``pacs_seg``); training reads the cache.
* Its download asks the PACS to transcode every object to Explicit VR Little Endian (dicomweb-client's default).
  That makes the PACS decode JPEG 2000, JPEG-LS or JPEG XL, which Debian's Orthanc 1.10 cannot do without a
  plugin, and which crashed Orthanc's GDCM plugin on one CI machine. Here objects are asked for in the transfer
  syntax they are stored in (``transfer-syntax=*``, as OHIF asks), and GDCM decodes them in this server; what GDCM
  cannot decode (JPEG XL) is a 422 naming the series. Any other error answer of the PACS is a 502 naming the series.
* Every request to the PACS has a timeout, and an unreachable PACS is a 503 that names it (no patient data).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import requests
import SimpleITK as sitk
from monailabel.datastore.dicom import DICOMWebDatastore
from monailabel.datastore.local import LocalDatastore
from monailabel.datastore.utils.dicom import dicom_web_download_series
from monailabel.interfaces.datastore import DefaultLabelTag
from pydicom.dataset import Dataset

from lib.datastore.labels import store_label_atomically, validate_label
from lib.errors import BAD_GATEWAY, NOT_FOUND, PACS_UNAVAILABLE, UNPROCESSABLE, http_error

logger = logging.getLogger(__name__)


def timeout_session(seconds: float) -> requests.Session:
    """A requests session whose every call has a timeout (dicomweb-client sets none: a stalled PACS would hang)."""

    class _Session(requests.Session):
        def request(self, *args, **kwargs):
            kwargs.setdefault("timeout", seconds)
            return super().request(*args, **kwargs)

    return _Session()


#: WADO-RS media type for "each object as it is stored" (PS3.18 8.7.3.5.2): no transcoding by the PACS
STORED_TRANSFER_SYNTAX = (("application/dicom", "*"),)


def download_series_as_stored(client, series_id: str, save_dir: Path) -> None:
    """Every object of a series, in its stored transfer syntax, saved as ``<SOP Instance UID>.dcm`` in ``save_dir``.

    MONAI Label's ``dicom_web_download_series`` with one difference: the objects are not transcoded by the PACS.
    """
    matches = [s for s in client.search_for_series(search_filters={"SeriesInstanceUID": series_id})
               if s.get("0020000E", {}).get("Value") == [series_id]]
    if not matches:
        raise http_error(NOT_FOUND, f"series {series_id} is not in the PACS")
    study_id = str(Dataset.from_json(matches[0]).StudyInstanceUID)
    save_dir.mkdir(parents=True, exist_ok=True)
    for instance in client.retrieve_series(study_id, series_id, media_types=STORED_TRANSFER_SYNTAX):
        sop_uid = str(instance.SOPInstanceUID)
        if not is_uid(sop_uid):  # a UID from the PACS becomes a file name: never a path
            raise http_error(UNPROCESSABLE, f"series {series_id} holds an object whose SOP Instance UID is not a UID")
        try:
            instance.save_as(save_dir / f"{sop_uid}.dcm", write_like_original=False)  # pydicom 2: with file meta
        except ValueError:  # pydicom 2 does not know the transfer syntax (JPEG XL), so neither does GDCM here
            syntax = str(getattr(getattr(instance, "file_meta", None), "TransferSyntaxUID", "?"))
            raise http_error(UNPROCESSABLE, f"series {series_id} is stored in transfer syntax {syntax}, which this "
                             "server cannot decode (the deploy app can: it reads JPEG XL)") from None


def is_uid(value: str) -> bool:
    """Digits and dots, at most 64 characters (the UI value representation)."""
    return 0 < len(value) <= 64 and all(c.isdigit() or c == "." for c in value)


def _pacs_error(base_url: str, exc: Exception):
    return http_error(PACS_UNAVAILABLE, f"PACS {base_url} is not reachable ({type(exc).__name__}); try again later")


class UltrasoundDICOMwebDatastore(DICOMWebDatastore):
    """Ultrasound series from a DICOMweb PACS; images and labels cached locally (see the module docstring)."""

    def list_images(self) -> list[str]:
        try:
            return super().list_images()
        except requests.RequestException as exc:
            raise _pacs_error(self._client.base_url, exc) from None

    def get_image_uri(self, image_id: str) -> str:
        cached = Path(self._datastore.image_path()) / f"{image_id}.nii.gz"
        if cached.is_file():
            return str(cached.resolve())
        if image_id not in self.list_images():
            raise http_error(NOT_FOUND, f"image {image_id!r} is not a series of this PACS's {self._search_filter}")
        series_dir = Path(self._datastore.image_path()) / image_id
        try:
            if not series_dir.is_dir() or not any(series_dir.iterdir()):
                # downloaded beside, then renamed: a concurrent request never sees a half-downloaded series
                part = Path(tempfile.mkdtemp(prefix=f".{image_id}.", suffix=".part", dir=series_dir.parent))
                try:
                    if self._fetch_by_frame:
                        dicom_web_download_series(None, image_id, str(part), self._client, True)
                    else:
                        download_series_as_stored(self._client, image_id, part)
                    try:
                        os.rename(part, series_dir)
                    except OSError:  # another request stored it first: keep that one
                        if not series_dir.is_dir():
                            raise
                finally:
                    shutil.rmtree(part, ignore_errors=True)
        except requests.HTTPError as exc:
            code = exc.response.status_code if exc.response is not None else "?"
            raise http_error(
                BAD_GATEWAY,
                f"PACS {self._client.base_url} answered HTTP {code} when asked for series {image_id}: it cannot "
                "send this series over DICOMweb",
            ) from None
        except requests.RequestException as exc:
            raise _pacs_error(self._client.base_url, exc) from None
        files = sorted(series_dir.iterdir())
        if len(files) != 1:
            raise http_error(
                UNPROCESSABLE,
                f"series {image_id} holds {len(files)} objects; the app reads one 2D ultrasound image per series",
            )
        fd, tmp = tempfile.mkstemp(suffix=".nii.gz")
        os.close(fd)
        try:
            reader = sitk.ImageFileReader()
            reader.SetImageIO("GDCMImageIO")
            reader.SetFileName(str(files[0]))
            sitk.WriteImage(reader.Execute(), tmp, useCompression=True)
        except RuntimeError as exc:
            os.unlink(tmp)
            reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else "unknown reason"
            raise http_error(UNPROCESSABLE, f"series {image_id} cannot be converted to an image (GDCM: {reason})") \
                from None
        try:
            info = self._dicom_info(image_id)
        except requests.RequestException:
            info = {"SeriesInstanceUID": image_id}
        try:
            LocalDatastore.add_image(self, image_id, tmp, info)
        finally:
            os.unlink(tmp)
        return str(cached.resolve())

    # labels live in the local cache: the PACS is not asked for (and cannot delete) them
    def get_label_uri(self, label_id: str, label_tag: str, image_id: str = "") -> str:
        return LocalDatastore.get_label_uri(self, label_id, label_tag)

    def get_labeled_images(self, label_tag: str | None = None, labels: list[str] | None = None) -> list[str]:
        return LocalDatastore.get_labeled_images(self, label_tag or DefaultLabelTag.FINAL, labels)

    def get_unlabeled_images(self, label_tag: str | None = None, labels: list[str] | None = None) -> list[str]:
        labeled = set(self.get_labeled_images(label_tag, labels))
        return [i for i in self.list_images() if i not in labeled]

    def datalist(self, full_path=True) -> list[dict[str, Any]]:
        return LocalDatastore.datalist(self, full_path)

    def save_label(self, image_id: str, label_filename: str, label_tag: str, label_info: dict[str, Any]) -> str:
        info = validate_label(self.get_image_uri(image_id), image_id, label_filename, label_info or {})
        label_id = store_label_atomically(self, image_id, label_filename, label_tag, info)
        if label_tag == DefaultLabelTag.FINAL:
            info["pacs_seg"] = self._push_seg(image_id, label_filename, label_info or {})
            LocalDatastore.update_label_info(self, label_id, label_tag, info)
        return label_id

    def _push_seg(self, image_id: str, label_file: str, label_info: dict[str, Any]) -> dict[str, Any]:
        """Try MONAI Label's SEG conversion (dcmqi) and STOW-RS; the label is already safe whatever happens."""
        from monailabel.datastore.utils.convert import nifti_to_dicom_seg
        from monailabel.datastore.utils.dicom import dicom_web_upload_dcm

        try:
            series_dir = os.path.join(self._datastore.image_path(), image_id)
            seg = nifti_to_dicom_seg(series_dir, label_file, label_info.get("label_info"))
            if not seg:
                return {"stored": False, "reason": "empty label: no SEG to store"}
            try:
                return {"stored": True, "series": dicom_web_upload_dcm(seg, self._client)}
            finally:
                os.unlink(seg)
        except FileNotFoundError:  # run_command does not fail when the tool does; its missing output says so
            reason = "dcmqi itkimage2segimage produced no DICOM SEG for this image (see the server log)"
            logger.warning("label of %s kept locally; DICOM SEG not stored in the PACS: %s", image_id, reason)
            return {"stored": False, "reason": reason}
        except Exception as exc:  # noqa: BLE001 - the label is kept locally; the reason is recorded, not raised
            reason = str(exc).strip().splitlines()[-1][:300] if str(exc).strip() else type(exc).__name__
            logger.warning("label of %s kept locally; DICOM SEG not stored in the PACS: %s", image_id, reason)
            return {"stored": False, "reason": reason}
