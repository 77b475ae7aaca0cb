"""A cheap IP camera on loopback: an HTTP MJPEG stream in a thread that can be unplugged or go silent.

Used by bench/reliability/faults.py and tests/server/test_camera_healing.py, with a real
OpenCV/FFmpeg capture on the other end.
"""

from __future__ import annotations

import http.server
import socket
import threading
import time

import numpy as np


class MjpegCamera:
    """multipart/x-mixed-replace JPEGs every 20 ms on 127.0.0.1:`port`: a cheap IP camera."""

    def __init__(self) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = int(s.getsockname()[1])
        self.uri = f"http://127.0.0.1:{self.port}/stream.mjpg"
        self.sending = threading.Event()  # cleared: connections stay open but get nothing
        self.sending.set()
        self._server: http.server.ThreadingHTTPServer | None = None

    def start(self) -> None:
        camera = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                import cv2

                _, jpeg = cv2.imencode(".jpg", np.full((48, 64, 3), 128, np.uint8))
                part = b"--frame\r\nContent-Type: image/jpeg\r\n\r\n" + jpeg.tobytes() + b"\r\n"
                self.send_response(200)
                self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
                self.end_headers()
                try:
                    while camera._server is self.server:  # a stopped server's connections end
                        if camera.sending.is_set():
                            self.wfile.write(part)
                        time.sleep(0.02)
                except OSError:
                    pass  # the client went away

            def log_message(self, *args: object) -> None:
                pass

        server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)  # SO_REUSEADDR
        server.daemon_threads = True
        self._server = server
        threading.Thread(target=server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
