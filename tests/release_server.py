"""A small threaded HTTP server on 127.0.0.1 that serves model archives the way Zenodo does.

It answers GET and HEAD with Range support (206 + Content-Range, 416 past the end), serves
record JSON (name, size, checksum per file), 404s anything else, can drop the connection part way
through a file, and logs every request. It also answers requests written for a proxy
(`GET http://host/path`), so a test can point HTTP_PROXY at it.
"""

from __future__ import annotations

import hashlib
import json
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit


HUB_COMMIT = "0123456789abcdef0123456789abcdef01234567"


class ReleaseServer:
    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.json: dict[str, object] = {}
        self.hub: dict[str, dict[str, bytes]] = {}  # Hugging Face repo id -> path -> bytes
        self.gated: set[str] = set()  # repo ids answered as a gated repository the caller has no access to
        self.ranges = True  # False: ignore Range headers, as some servers and proxies do
        self.drops: dict[str, list[int]] = {}  # path -> byte counts after which to drop, one per request
        self.log: list[tuple[str, str, str | None, str]] = []  # (method, path, Range header, host)
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> "ReleaseServer":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    def publish(self, path: str, data: bytes, record: str | None = None, checksum: str | None = None) -> None:
        """Serve `data` at `path` and, with `record`, list it there as Zenodo does (md5 by default)."""
        self.files[path] = data
        if record is not None:
            files = self.json.setdefault(record, {"files": []})["files"]
            files.append({"key": Path(path).name, "size": len(data),
                          "checksum": checksum or f"md5:{hashlib.md5(data).hexdigest()}"})

    def publish_hub_repo(self, repo_id: str, files: dict[str, bytes]) -> None:
        """Serve a model repository the way the Hugging Face Hub's API does (point HF_ENDPOINT here):
        `/api/models/<repo>` lists files with sizes and LFS sha256, `/<repo>/resolve/<rev>/<path>` serves them."""
        self.hub[repo_id] = dict(files)
        siblings = []
        for name, data in files.items():
            sibling = {"rfilename": name, "size": len(data), "blobId": hashlib.sha1(data).hexdigest()}
            if not name.endswith((".json", ".txt")):
                sibling["lfs"] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
            siblings.append(sibling)
        info = {"id": repo_id, "modelId": repo_id, "sha": HUB_COMMIT, "private": False, "siblings": siblings}
        self.json[f"/api/models/{repo_id}"] = info
        self.json[f"/api/models/{repo_id}/revision/main"] = info
        for name, data in files.items():
            self.files[f"/{repo_id}/resolve/main/{name}"] = data
            self.files[f"/{repo_id}/resolve/{HUB_COMMIT}/{name}"] = data

    def requests_for(self, path: str, method: str = "GET") -> list[str | None]:
        """The Range headers of the requests made for `path`."""
        return [rng for m, p, rng, _ in self.log if p == path and m == method]

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_HEAD(self) -> None:
                self._answer(body=False)

            def do_GET(self) -> None:
                self._answer(body=True)

            def _answer(self, body: bool) -> None:
                parts = urlsplit(self.path)
                path = parts.path
                server.log.append((self.command, path, self.headers.get("Range"), parts.netloc or self.headers.get("Host", "")))
                if any(path.startswith(f"/api/models/{repo}") or path.startswith(f"/{repo}/") for repo in server.gated):
                    self._send(403, b'{"error": "Access to this model is restricted"}',
                               {"X-Error-Code": "GatedRepo", "X-Error-Message": "Access to this model is restricted"}, body)
                    return
                if path in server.json:
                    data = json.dumps(server.json[path]).encode()
                    self._send(200, data, {"Content-Type": "application/json"}, body)
                    return
                if path not in server.files:
                    self._send(404, b"not found", {}, body)
                    return
                data = server.files[path]
                start = 0
                header = self.headers.get("Range")
                if server.ranges and header and header.startswith("bytes=") and header.endswith("-"):
                    start = int(header[6:-1])
                    if start >= len(data):
                        self._send(416, b"", {"Content-Range": f"bytes */{len(data)}"}, body)
                        return
                headers = {"Content-Type": "application/octet-stream", "Accept-Ranges": "bytes",
                           "X-Repo-Commit": HUB_COMMIT, "ETag": f'"{hashlib.sha256(data).hexdigest()}"'}
                if start:
                    headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
                drops = server.drops.get(path) if body else None
                if drops:
                    cut = drops.pop(0)
                    self.send_response(206 if start else 200)
                    for key, value in {**headers, "Content-Length": str(len(data) - start)}.items():
                        self.send_header(key, value)
                    self.end_headers()
                    self.wfile.write(data[start:start + cut])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self._send(206 if start else 200, data[start:], headers, body)

            def _send(self, status: int, data: bytes, headers: dict, body: bool) -> None:
                self.send_response(status)
                for key, value in {**headers, "Content-Length": str(len(data))}.items():
                    self.send_header(key, value)
                self.end_headers()
                if body:
                    self.wfile.write(data)

        return Handler


def release_zip(run_folder: Path, destination: Path, top: str) -> Path:
    """A zip laid out like a released DiffusionSat run: `top/checkpoint-N/unet/...` plus training
    state beside it, without the root SD-2.1 components (they come from elsewhere)."""
    with zipfile.ZipFile(destination, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(run_folder.rglob("*")):
            relative = path.relative_to(run_folder)
            if path.is_file() and relative.parts[0].startswith("checkpoint-"):
                archive.write(path, f"{top}/{relative.as_posix()}")
        archive.writestr(f"{top}/checkpoint-100/optimizer.bin", b"\0" * 4096)  # training state: not installed
        archive.writestr(f"{top}/checkpoint-100/random_states_0.pkl", b"\0" * 64)
    return destination
