"""A stand-in HTTP server for the client's error paths (what a real engine never answers).

    python fake_engine.py MODE   -> prints its port, then serves until killed

MODE: `old-api` (no /v1 routes: 404), `not-gfm4d` (an HTML page for every path), `token`
(a GFM4D health answer only with `Authorization: Bearer s3cret`, else 401), `slow` (answers
after 5 s), `stubborn` (runs every job forever: a cancel is noted, `cancel_requested`, but the
job never stops). It records every Authorization header it sees in its answers' `seen_auth`.
"""

import json
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

TOKEN = "s3cret"
HEALTH = {"status": "ok", "version": "9.9.9", "device": "cpu", "dtype": "float32", "gpu_free_bytes": None,
          "gpu_total_bytes": None, "loaded_models": [], "tasks": ["generate"], "queued": 0, "running": None,
          "max_upload_bytes": 1, "result_ttl_s": 1.0, "server_paths": False}


STUBBORN_JOB = {"id": "0123456789abcdef", "task": "generate", "state": "running", "progress": 0.1, "done": 1, "total": 10,
                "message": "denoising step 1/10", "cancel_requested": False, "results": [], "deleted": False}


class Handler(BaseHTTPRequestHandler):
    mode = "old-api"

    def log_message(self, *args):
        pass

    def _send(self, status, body, content_type="application/json"):
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):  # noqa: N802
        auth = self.headers.get("Authorization")
        if self.mode == "old-api":
            self._send(404, {"detail": "Not Found"})
        elif self.mode == "not-gfm4d":
            self._send(200, b"<html><body>router login</body></html>", "text/html")
        elif self.mode == "token":
            if auth != f"Bearer {TOKEN}":
                self._send(401, {"detail": "this engine needs a token: send Authorization: Bearer <token>"})
            else:
                self._send(200, {**HEALTH, "seen_auth": auth})
        elif self.mode == "slow":
            time.sleep(5)
            self._send(200, HEALTH)
        elif self.mode == "stubborn":
            if self.path == "/v1/health":
                self._send(200, HEALTH)
            elif self.path == f"/v1/jobs/{STUBBORN_JOB['id']}":
                self._send(200, STUBBORN_JOB)
            else:
                self._send(404, {"detail": "Not Found"})

    def do_POST(self):  # noqa: N802
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.mode != "stubborn":
            self._send(404, {"detail": "Not Found"})
        elif self.path == "/v1/jobs":
            self._send(202, STUBBORN_JOB)
        elif self.path == f"/v1/jobs/{STUBBORN_JOB['id']}/cancel":
            STUBBORN_JOB["cancel_requested"] = True
            self._send(202, STUBBORN_JOB)
        else:
            self._send(404, {"detail": "Not Found"})


def main() -> None:
    Handler.mode = sys.argv[1]
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    print(server.server_address[1], flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
