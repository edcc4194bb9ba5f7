"""`tfx-transfer predict --rest URL`: the classifier over TF Serving's REST API.

    with RestClient("http://localhost:8501", "classifier") as client:
        for p in client.predict(["cat.jpg"], top_k=3): ...

Same answers as ServingClient (serving/client.py), from TF Serving or the local
server alike. REST :predict responses do not say which version answered, so
Prediction.model_version is the version asked for, or None.
"""
from __future__ import annotations

import base64
import http.client
import json
import time
import urllib.parse
from typing import Dict, Iterable, List, Optional, Sequence

import grpc
import numpy as np

from tfx_transfer.serving import signatures as sigs
from tfx_transfer.serving.client import (ImageInput, Prediction, RetryPolicy, ServingError, encode_image,
                            top_classes)

_CODES = {200: grpc.StatusCode.OK, 400: grpc.StatusCode.INVALID_ARGUMENT,
          404: grpc.StatusCode.NOT_FOUND, 429: grpc.StatusCode.RESOURCE_EXHAUSTED,
          501: grpc.StatusCode.UNIMPLEMENTED, 503: grpc.StatusCode.UNAVAILABLE,
          504: grpc.StatusCode.DEADLINE_EXCEEDED}


class RestClient:
    def __init__(self, url: str, model_name: str, signature_name: str = sigs.SERVING_IMAGES,
                 version: Optional[int] = None, version_label: Optional[str] = None,
                 timeout_s: float = 30.0, retry: Optional[RetryPolicy] = None,
                 labels: Optional[Sequence[str]] = None):
        if version is not None and version_label:
            raise ValueError("give a version or a version label, not both")
        parsed = urllib.parse.urlsplit(url if "://" in url else f"http://{url}")
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise ValueError(f"--rest wants http://HOST:PORT, got {url!r}")
        self._parsed = parsed
        self.model_name, self.signature_name = model_name, signature_name
        self.version, self.version_label = version, version_label
        self.timeout_s, self.retry = timeout_s, retry or RetryPolicy()
        self.labels = list(labels) if labels else None
        self._seen_names: Dict[int, str] = {}  # as the gRPC client: names seen in answers
        self._conn: Optional[http.client.HTTPConnection] = None

    def _connection(self):
        if self._conn is None:
            cls = (http.client.HTTPSConnection if self._parsed.scheme == "https"
                   else http.client.HTTPConnection)
            self._conn = cls(self._parsed.hostname, self._parsed.port, timeout=self.timeout_s)
        return self._conn

    def close(self):
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def model_path(self) -> str:
        path = f"{self._parsed.path.rstrip('/')}/v1/models/{self.model_name}"
        if self.version is not None:
            path += f"/versions/{self.version}"
        elif self.version_label:
            path += f"/labels/{self.version_label}"
        return path

    def call(self, method: str, path: str, body: Optional[dict] = None) -> dict:
        """One request with the gRPC client's retry rule: only 503 (and no connection)."""
        data = json.dumps(body).encode() if body is not None else None
        deadline = time.monotonic() + self.timeout_s
        attempt = 0
        while True:
            attempt += 1
            try:
                conn = self._connection()
                conn.timeout = max(deadline - time.monotonic(), 1e-3)
                conn.request(method, path, body=data,
                             headers={"Content-Type": "application/json"} if data else {})
                response = conn.getresponse()
                status, text = response.status, response.read()
            except (OSError, http.client.HTTPException) as e:
                self.close()
                status, text = 503, json.dumps({"error": f"cannot reach the server: {e}"})
            if status == 200:
                return json.loads(text)
            try:
                message = json.loads(text).get("error", "")
            except (ValueError, AttributeError):
                message = text[:200].decode(errors="replace") if isinstance(text, bytes) else text
            code = _CODES.get(status, grpc.StatusCode.UNKNOWN)
            pause = self.retry.backoff(attempt)
            if (code != grpc.StatusCode.UNAVAILABLE or attempt >= self.retry.max_attempts
                    or time.monotonic() + pause >= deadline):
                raise ServingError(code, f"HTTP {status}: {message}", attempt)
            time.sleep(pause)

    def predict(self, images: Iterable[ImageInput], top_k: int = 5, batch_size: int = 32,
                signature_name: Optional[str] = None) -> List[Prediction]:
        if batch_size < 1 or top_k < 1:
            raise ValueError("batch_size and top_k must be >= 1")
        signature_name = signature_name or self.signature_name
        kind = sigs.SIGNATURE_INPUTS.get(signature_name, (None, sigs.IMAGES))[1]
        encoded = [encode_image(image) for image in images]
        results: List[Prediction] = []
        for start in range(0, len(encoded), batch_size):
            chunk = encoded[start:start + batch_size]
            instances = [{"b64": base64.b64encode(
                data if kind == sigs.IMAGES else sigs.image_example(data)).decode()}
                for _, data in chunk]
            out = self.call("POST", self.model_path() + ":predict",
                            {"signature_name": signature_name, "instances": instances})
            rows: List[Dict] = out["predictions"]
            for (source, _), row in zip(chunk, rows):
                probs = np.asarray(row[sigs.PROBABILITIES], dtype=np.float32)
                for cid, name in enumerate(row.get(sigs.CLASSES) or []):
                    self._seen_names[cid] = name
                self._seen_names[int(row[sigs.CLASS_IDS])] = row[sigs.CLASS_NAMES]
                results.append(Prediction(source, top_classes(probs, top_k, self.class_name), probs,
                                          self.version))
        return results

    def class_name(self, class_id: int) -> Optional[str]:
        if self.labels and class_id < len(self.labels):
            return self.labels[class_id]
        return self._seen_names.get(class_id)

    def status(self) -> List[dict]:
        out = self.call("GET", self.model_path())
        return [{"version": int(s["version"]), "state": s["state"],
                 "error_code": s["status"]["error_code"],
                 "error_message": s["status"]["error_message"]}
                for s in out["model_version_status"]]
