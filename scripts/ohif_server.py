"""Serve the OHIF viewer (npm package @ohif/app, its built dist/) same-origin with a DICOMweb server.

    python scripts/ohif_server.py --dist .ohif/package/dist --dicomweb http://127.0.0.1:8042/dicom-web --port 3000
    # then open http://127.0.0.1:3000/viewer?StudyInstanceUIDs=<Study Instance UID>

What OHIF's built app needs from a web server, and nothing more:

* every file of ``dist/``; any other path (``/viewer``, ``/segmentation``, ...) answers ``index.html``, because
  OHIF routes in the browser;
* ``.wasm`` served as ``application/wasm`` (the image decoders are compiled to WebAssembly; browsers refuse to
  stream-compile anything else);
* ``/app-config.js`` replaced by a configuration whose one data source is ``/dicom-web`` on this same origin;
* ``/dicom-web/...`` forwarded to the DICOMweb server (same origin: no CORS set-up in the PACS).

Loopback only by default. A sketch for viewing and tests, not a production web server.
"""

from __future__ import annotations

import argparse
import http.client
import http.server
import json
import mimetypes
import socketserver
import threading
import urllib.parse
from pathlib import Path

__all__ = ["OhifServer", "app_config"]

_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-authorization",
               "proxy-authenticate", "host", "content-length"}


def app_config(name: str = "UltraAD results") -> str:
    """OHIF's window.config: one DICOMweb data source at /dicom-web on this origin (Orthanc's DICOMweb plugin)."""
    source = {
        "namespace": "@ohif/extension-default.dataSourcesModule.dicomweb",
        "sourceName": "dicomweb",
        "configuration": {
            "friendlyName": name,
            "name": "orthanc",
            "wadoUriRoot": "/dicom-web",
            "qidoRoot": "/dicom-web",
            "wadoRoot": "/dicom-web",
            "qidoSupportsIncludeField": False,
            "imageRendering": "wadors",
            "thumbnailRendering": "wadors",
            "enableStudyLazyLoad": True,
            "supportsFuzzyMatching": False,
            "supportsWildcard": True,
            "staticWado": False,
            "singlepart": "bulkdata,video",
            "bulkDataURI": {"enabled": True, "relativeResolution": "studies"},
            "omitQuotationForMultipartRequest": True,
        },
    }
    config = {
        "routerBasename": "/",
        "extensions": [],
        "modes": [],
        "customizationService": {},
        "showStudyList": True,
        "maxNumberOfWebWorkers": 2,
        "showWarningMessageForCrossOrigin": False,
        "showCPUFallbackMessage": False,
        "showLoadingIndicator": True,
        "strictZSpacingForVolumeViewport": True,
        "investigationalUseDialog": {"option": "never"},
        "defaultDataSourceName": "dicomweb",
        "dataSources": [source],
    }
    return f"window.config = {json.dumps(config, indent=2)};\n"


class _Handler(http.server.SimpleHTTPRequestHandler):
    server: _Server

    def __init__(self, request, client_address, server) -> None:
        super().__init__(request, client_address, server, directory=str(server.dist))

    def log_message(self, format: str, *args) -> None:
        if self.server.verbose:
            super().log_message(format, *args)

    def guess_type(self, path) -> str:
        if str(path).endswith(".wasm"):
            return "application/wasm"
        return mimetypes.guess_type(str(path))[0] or "application/octet-stream"

    def _proxy(self) -> None:
        target = urllib.parse.urlsplit(self.server.dicomweb)
        suffix = self.path[len("/dicom-web"):]
        body = None
        if "Content-Length" in self.headers:
            body = self.rfile.read(int(self.headers["Content-Length"]))
        headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
        connection = http.client.HTTPConnection(target.hostname, target.port or 80, timeout=120)
        try:
            connection.request(self.command, target.path.rstrip("/") + suffix, body=body, headers=headers)
            answer = connection.getresponse()
            data = answer.read()
        except OSError as exc:
            self.send_error(502, f"DICOMweb server not reachable: {type(exc).__name__}")
            return
        finally:
            connection.close()
        self.send_response(answer.status)
        for key, value in answer.getheaders():
            if key.lower() not in _HOP_BY_HOP:
                self.send_header(key, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _serve(self, head: bool) -> None:
        path = urllib.parse.urlsplit(self.path).path
        if path.startswith("/dicom-web/") or path == "/dicom-web":
            self._proxy()
            return
        if path == "/app-config.js":
            data = self.server.config.encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/javascript")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if not head:
                self.wfile.write(data)
            return
        local = (self.server.dist / path.lstrip("/")).resolve()
        if path == "/" or not local.is_file() or self.server.dist not in local.parents:
            self.path = "/index.html"  # OHIF routes in the browser
        if head:
            super().do_HEAD()
        else:
            super().do_GET()

    def do_GET(self) -> None:
        self._serve(head=False)

    def do_HEAD(self) -> None:
        self._serve(head=True)

    def do_POST(self) -> None:
        if self.path.startswith("/dicom-web"):
            self._proxy()
        else:
            self.send_error(405)


class _Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address, dist: Path, dicomweb: str, config: str, verbose: bool) -> None:
        self.dist, self.dicomweb, self.config, self.verbose = dist.resolve(), dicomweb, config, verbose
        super().__init__(address, _Handler)


class OhifServer:
    """The server in a background thread (tests): ``with OhifServer(dist, dicomweb) as s: s.url``."""

    def __init__(self, dist: str | Path, dicomweb: str, host: str = "127.0.0.1", port: int = 0,
                 verbose: bool = False) -> None:
        dist = Path(dist)
        if not (dist / "index.html").is_file():
            raise FileNotFoundError(f"no OHIF build at {dist} (index.html missing): npm pack @ohif/app, unpack dist/")
        self._server = _Server((host, port), dist, dicomweb, app_config(), verbose)
        self.url = f"http://{host}:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> OhifServer:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dist", required=True, help="OHIF's built app: the dist/ folder of the npm package @ohif/app")
    parser.add_argument("--dicomweb", required=True, help="DICOMweb root, e.g. http://127.0.0.1:8042/dicom-web")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=3000)
    args = parser.parse_args()
    server = OhifServer(args.dist, args.dicomweb, args.host, args.port, verbose=True)
    print(f"OHIF at {server.url} -> DICOMweb {args.dicomweb}")
    with server:
        server._thread.join()


if __name__ == "__main__":
    main()
