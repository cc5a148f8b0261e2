"""Real servers on loopback for the MONAI Label tests: Orthanc (Debian, with its DICOMweb plugin) and the MONAI Label
server of monailabel_app/ in its own virtual environment (.venv-monailabel), each on a random free port, started and
stopped by fixtures. The test process (main environment, pydicom 3) talks to them over HTTP only.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
VENV = Path(os.environ.get("ULTRAAD_MONAILABEL_VENV", REPO / ".venv-monailabel"))
ORTHANC = shutil.which("Orthanc") or "/usr/sbin/Orthanc"
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
TINY_CONF = {"backbone": "UltraAD-Tiny-ViT", "pretrained": "random", "allow_random_init": "true",
             "feature_layers": "1,2,3,4"}


def under_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def missing(reason: str):
    """Skip with the reason; under CI, fail: there the MONAI Label environment and Orthanc must be present."""
    if under_ci():
        pytest.fail(f"{reason} (required under CI=true: .ci/run installs it)")
    pytest.skip(reason)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(method: str, url: str, data: bytes | None = None, headers: dict | None = None, timeout: float = 60):
    """(status, body bytes, headers) of one request; HTTP errors are returned, not raised."""
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read(), dict(resp.headers)
    except urllib.error.HTTPError as err:
        return err.code, err.read(), dict(err.headers)


def wait_until(check, seconds: float, what: str, proc: subprocess.Popen | None = None, log: Path | None = None):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            tail = log.read_text(errors="replace")[-3000:] if log and log.exists() else ""
            raise RuntimeError(f"{what} exited with code {proc.returncode}:\n{tail}")
        try:
            if check():
                return
        except OSError:
            pass
        time.sleep(0.5)
    tail = log.read_text(errors="replace")[-3000:] if log and log.exists() else ""
    raise TimeoutError(f"{what} did not come up within {seconds} s:\n{tail}")


def stop(proc: subprocess.Popen) -> None:
    """Stop a server started in its own session, with everything it started (MONAI Label's training subprocess)."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


class Orthanc:
    """An Orthanc PACS in a temporary folder: REST and DICOMweb on 127.0.0.1 only."""

    def __init__(self, folder: Path) -> None:
        if not Path(ORTHANC).exists() or not DICOMWEB_PLUGIN.exists():
            missing("Orthanc with its DICOMweb plugin is not installed (apt-get install orthanc orthanc-dicomweb)")
        self.folder = folder
        self.http_port, self.dicom_port = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.http_port}"
        self.dicomweb = f"{self.url}/dicom-web"
        config = {
            "Name": "ULTRAAD_TEST", "StorageDirectory": str(folder / "db"), "IndexDirectory": str(folder / "db"),
            "HttpPort": self.http_port, "DicomPort": self.dicom_port, "DicomAet": "ORTHANC",
            "RemoteAccessAllowed": False, "AuthenticationEnabled": False,
            # no transcoding plugin: the MONAI Label app asks for objects as stored (transfer-syntax=*) and decodes
            # them itself (Orthanc's GDCM plugin crashed Orthanc on a JPEG 2000 request on one CI machine)
            "Plugins": [str(DICOMWEB_PLUGIN)], "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
        }
        (folder / "orthanc.json").write_text(json.dumps(config))
        self.log = folder / "orthanc.log"
        self.stopped = False  # True once a test has stopped it on purpose
        self.start()

    def start(self) -> None:
        self.proc = subprocess.Popen([ORTHANC, str(self.folder / "orthanc.json")], stdout=self.log.open("ab"),
                                     stderr=subprocess.STDOUT, start_new_session=True)
        try:
            wait_until(lambda: http("GET", f"{self.url}/system", timeout=2)[0] == 200, 60, "Orthanc", self.proc,
                       self.log)
        except BaseException:
            stop(self.proc)
            raise

    def died(self) -> str | None:
        """None while Orthanc runs; once it has ended on its own, its exit code and the tail of its log."""
        code = self.proc.poll()
        if code is None or self.stopped:
            return None
        return f"Orthanc exited with code {code}; its log ends:\n{self.log.read_text(errors='replace')[-3000:]}"

    def upload(self, path: Path) -> tuple[int, dict]:
        """POST /instances (Orthanc's REST API): (HTTP status, Orthanc's answer)."""
        status, body, _ = http("POST", f"{self.url}/instances", data=path.read_bytes(),
                               headers={"Content-Type": "application/dicom"})
        return status, json.loads(body)

    def stop(self) -> None:
        self.stopped = True
        stop(self.proc)


class MonaiLabelServer:
    """``monailabel start_server --app monailabel_app`` from .venv-monailabel, on a free loopback port."""

    def __init__(self, studies: str, folder: Path, **conf: str) -> None:
        launcher = VENV / "bin" / "monailabel"
        if not launcher.exists():
            missing(f"MONAI Label environment not found at {VENV}: build it with scripts/make_monailabel_venv.sh")
        folder.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.model_dir = folder / "model"
        # the venv's own launcher, not activated (no venv on PATH): it must run the venv's python by itself
        args = [str(launcher), "start_server", "--app", str(REPO / "monailabel_app"),
                "--studies", studies, "-i", "127.0.0.1", "-p", str(self.port)]
        for key, value in {**TINY_CONF, "model_dir": str(self.model_dir),
                           "dicomweb_cache": str(folder / "dicomweb_cache"), "dicomweb_timeout": "30", **conf}.items():
            args += ["--conf", key, value]
        env = {**os.environ, "MONAI_LABEL_SESSION_PATH": str(folder / "sessions"), "MONAI_LABEL_AUTO_UPDATE_SCORING": "false",
               "ULTRAAD_TORCH_THREADS": "1", "PYTHONWARNINGS": "ignore"}
        self.log = folder / "monailabel.log"
        self.proc = subprocess.Popen(args, stdout=self.log.open("wb"), stderr=subprocess.STDOUT, cwd=folder,
                                     env=env, start_new_session=True)
        try:
            wait_until(lambda: self.get("/info/", timeout=5)[0] == 200, 180, "MONAI Label server", self.proc,
                       self.log)
        except BaseException:
            stop(self.proc)
            raise

    def get(self, path: str, timeout: float = 60):
        return http("GET", self.url + path, timeout=timeout)

    def post(self, path: str, data: bytes | None = None, headers: dict | None = None, timeout: float = 120):
        return http("POST", self.url + path, data=data if data is not None else b"", headers=headers, timeout=timeout)

    def put_label(self, image: str, label: Path | bytes, params: dict | None = None, filename: str = "label.nii.gz"):
        """PUT /datastore/label as 3D Slicer's MONAI Label module does (multipart: label file + params JSON)."""
        content = label.read_bytes() if isinstance(label, Path) else label
        body, ctype = multipart({"params": json.dumps(params or {}).encode()},
                                {"label": (filename, content)})
        return http("PUT", f"{self.url}/datastore/label?image={urllib.request.quote(image)}&tag=final", data=body,
                    headers={"Content-Type": ctype}, timeout=120)

    def infer(self, image: str, output: str = "", timeout: float = 120):
        query = f"image={urllib.request.quote(image)}" + (f"&output={output}" if output else "")
        body, ctype = multipart({"params": b"{}"}, {})
        return self.post(f"/infer/ultraad?{query}", data=body, headers={"Content-Type": ctype}, timeout=timeout)

    def train(self, params: dict, timeout: float = 240) -> dict:
        """POST /train/ultraad, then poll GET /train/ until the task is DONE or ERROR; returns the task record."""
        status, body, _ = self.post("/train/ultraad", data=json.dumps(params).encode(),
                                    headers={"Content-Type": "application/json"})
        assert status == 200, body
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            time.sleep(1)
            status, body, _ = self.get("/train/")
            task = json.loads(body)
            if task.get("status") in ("DONE", "ERROR"):
                return task
        raise TimeoutError(f"training did not finish within {timeout} s")

    def stop(self) -> None:
        stop(self.proc)


def multipart(fields: dict[str, bytes], files: dict[str, tuple[str, bytes]]) -> tuple[bytes, str]:
    """A multipart/form-data body (what Slicer's client sends)."""
    boundary = "ultraad-test-boundary-7d1c"
    parts = []
    for name, value in fields.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode() + value + b"\r\n")
    for name, (filename, content) in files.items():
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
            f"Content-Type: application/octet-stream\r\n\r\n".encode() + content + b"\r\n"
        )
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def parse_multipart(body: bytes, content_type: str) -> dict[str, bytes]:
    """The parts of MONAI Label's multipart infer answer (``params`` JSON and the label ``image``), by name."""
    import email.parser
    import email.policy

    msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        f"Content-Type: {content_type}\r\n\r\n".encode() + body)
    out = {}
    for part in msg.iter_parts():
        out[part.get_param("name", header="content-disposition")] = part.get_payload(decode=True)
    return out


def uclm_rows(data_dir: Path, per_class: int) -> list[dict]:
    """The first ``per_class`` BUS-UCLM rows of each class, in file order (deterministic)."""
    rows: dict[str, list[dict]] = {"normal": [], "benign": [], "malignant": []}
    with open(data_dir / "bus_uclm" / "labels.csv", newline="") as f:
        for row in csv.DictReader(f):
            if len(rows[row["label"]]) < per_class:
                rows[row["label"]].append(row)
    return [r for rs in rows.values() for r in rs]


def label_file(data_dir: Path, row: dict, out: Path, value: int | None = None) -> Path:
    """A labelmap as Slicer saves it: the row's mask (x ``value``, default the class value) in the image geometry."""
    import SimpleITK as sitk
    from PIL import Image

    reference = sitk.ReadImage(str(data_dir / "bus_uclm" / row["image"]))
    size = reference.GetSize()
    mask = (np.asarray(Image.open(data_dir / "bus_uclm" / row["mask"])) > 127) if row["mask"] \
        else np.zeros((size[1], size[0]), bool)
    value = {"normal": 0, "benign": 1, "malignant": 2}[row["label"]] if value is None else value
    label = sitk.GetImageFromArray((mask * value).astype(np.uint8))
    label.CopyInformation(reference)
    sitk.WriteImage(label, str(out), useCompression=True)
    return out
