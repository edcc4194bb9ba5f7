"""tfx-transfer predict (gRPC client) and serve (local model server): serving/ does the work."""
from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading

from tfx_transfer.modules.contract import SERVING_IMAGES

log = logging.getLogger("tfx_transfer.serving")


def _read(path):
    if not path:
        return None
    with open(path, "rb") as f:
        return f.read()


def cmd_predict(args) -> int:
    import grpc

    from tfx_transfer.serving.client import ServingClient, ServingError, read_labels

    try:
        labels = read_labels(args.labels) if args.labels else None
        if args.rest:
            from tfx_transfer.serving.rest_client import RestClient

            client = RestClient(args.rest, args.model, signature_name=args.signature,
                                version=args.version, version_label=args.version_label,
                                timeout_s=args.timeout, labels=labels)
        else:
            client = ServingClient(
                args.server, args.model, signature_name=args.signature, version=args.version,
                version_label=args.version_label, timeout_s=args.timeout, tls=args.tls,
                root_certificates=_read(args.root_certs), private_key=_read(args.client_key),
                certificate_chain=_read(args.client_cert), server_name=args.server_name,
                labels=labels)
        with client:
            predictions = client.predict(args.images, top_k=args.top_k, batch_size=args.batch_size)
    except ServingError as e:
        print(f"tfx-transfer predict: error: {e}", file=sys.stderr)
        return 3 if e.code == grpc.StatusCode.UNAVAILABLE else 1
    except (OSError, ValueError, TypeError) as e:
        print(f"tfx-transfer predict: error: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps([{"image": p.source, "model_version": p.model_version,
                           "top_k": [dataclass_dict(c) for c in p.top_k]}
                          for p in predictions], indent=1))
        return 0
    for p in predictions:
        print(f"{p.source}" + (f" (version {p.model_version})"
                               if p.model_version is not None else ""))
        for c in p.top_k:
            name = c.class_name if c.class_name is not None else f"class {c.class_id}"
            print(f"  {c.probability:8.4f}  {name}")
    return 0


def dataclass_dict(c):
    return {"class_id": c.class_id, "class_name": c.class_name, "probability": c.probability}


def _labels_arg(values):
    labels = {}
    for item in values or []:
        label, _, version = item.partition("=")
        if not label or not version.isdigit():
            raise argparse.ArgumentTypeError(f"--version-label wants LABEL=VERSION, got {item!r}")
        labels[label] = int(version)
    return labels


def plaintext_warning(host: str, tls: bool) -> str:
    """The warning for serving off loopback without TLS; "" when there is nothing to say."""
    import ipaddress

    if tls or host == "localhost":
        return ""
    try:
        if ipaddress.ip_address(host.strip("[]")).is_loopback:
            return ""
    except ValueError:
        pass  # a host name: it may resolve to anything
    return (f"tfx-transfer serve: warning: serving plaintext gRPC on {host}, beyond this machine, "
            "without TLS: anyone on the network can send requests and read the answers; "
            "give --tls-cert and --tls-key (or keep --host 127.0.0.1 behind a TLS proxy)")


def cmd_serve(args) -> int:
    from tfx_transfer.serving.server import ModelServer

    warning = plaintext_warning(args.host, bool(args.tls_cert))
    if warning:
        print(warning, file=sys.stderr, flush=True)

    try:
        labels = _labels_arg(args.version_label)
        server = ModelServer(
            args.model_base_path, args.model_name, port=args.port, host=args.host,
            max_batch_size=args.max_batch_size, max_payload_bytes=args.max_payload_bytes,
            max_image_pixels=args.max_image_pixels, num_versions=args.num_versions,
            version_labels=labels, poll_interval_s=args.poll_interval,
            max_workers=args.max_workers, max_concurrent_requests=args.max_concurrent_requests,
            tls_cert=_read(args.tls_cert), tls_key=_read(args.tls_key),
            tls_client_ca=_read(args.tls_client_ca), rest_api_port=args.rest_api_port)
    except (OSError, ValueError, RuntimeError, argparse.ArgumentTypeError) as e:
        print(f"tfx-transfer serve: error: {e}", file=sys.stderr)
        return 2
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, frame: stop.set())
    server.start()
    # Like TF Serving, the ports open once the first version is AVAILABLE.
    try:
        while not stop.is_set() and not server.wait_until_available(0.5):
            pass
    except OSError as e:
        print(f"tfx-transfer serve: error: {e}", file=sys.stderr)
        server.stop(grace=0)
        return 2
    if not stop.is_set():
        # One parseable line: with --port 0 it is how a caller learns the port.
        print(f"listening on {server.address}", flush=True)
        if server.rest_address:
            print(f"REST API on http://{server.rest_address}", flush=True)
        stop.wait()
    log.info("shutting down (grace %.0fs)", args.grace_period)
    server.stop(grace=args.grace_period)
    log.info("stopped")
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "predict", help="classify images with a served model over gRPC or REST (TF Serving API)")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files (JPEG, PNG, GIF, BMP)")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--server", help="HOST:PORT of TF Serving or `tfx-transfer serve` (gRPC)")
    where.add_argument("--rest", metavar="URL",
                       help="http://HOST:PORT of their REST API (TF Serving's --rest_api_port)")
    p.add_argument("--model", required=True, help="model name")
    p.add_argument("--signature", default=SERVING_IMAGES,
                   help="serving_images (encoded images; the default) or serving_default (tf.Examples)")
    version = p.add_mutually_exclusive_group()
    version.add_argument("--version", type=int, help="model version (default: the newest)")
    version.add_argument("--version-label", help="version label, e.g. stable")
    p.add_argument("--top-k", type=int, default=5, help="most probable classes shown per image (default: 5)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--timeout", type=float, default=30.0,
                   help="deadline of each request in seconds, retries included (default: 30)")
    p.add_argument("--batch-size", type=int, default=32, help="images per request (default: 32)")
    p.add_argument("--labels", help="class vocabulary file (a model's assets/label), one name a "
                                    "line: names the top-k classes of models exported without "
                                    "the `classes` output (current exports name them all)")
    p.add_argument("--tls", action="store_true", help="TLS with the system's root certificates")
    p.add_argument("--root-certs", help="PEM root certificates (implies TLS)")
    p.add_argument("--client-cert", help="PEM client certificate chain (mutual TLS)")
    p.add_argument("--client-key", help="PEM client private key (mutual TLS)")
    p.add_argument("--server-name", help="TLS server name to verify, when not the host")
    p.set_defaults(func=cmd_predict)

    p = subparsers.add_parser(
        "serve", help="local gRPC model server on the TF Serving API (development only)")
    p.add_argument("--model-base-path", required=True,
                   help="folder of <version>/ SavedModels (the Pusher's <serving_dir>/<model>)")
    p.add_argument("--model-name", required=True)
    p.add_argument("--port", type=int, default=8500, help="0: any free port")
    p.add_argument("--rest-api-port", type=int, metavar="PORT",
                   help="also serve TF Serving's REST API on this port (0: any free port); "
                        "TF Serving's default is 8501")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--max-batch-size", type=int, default=64)
    p.add_argument("--max-payload-bytes", type=int, default=16 << 20)
    p.add_argument("--max-image-pixels", type=int, default=4096 * 4096)
    p.add_argument("--num-versions", type=int, default=1, help="newest versions kept loaded")
    p.add_argument("--version-label", action="append", metavar="LABEL=VERSION")
    p.add_argument("--poll-interval", type=float, default=2.0,
                   help="seconds between looks for a newly pushed version")
    p.add_argument("--max-workers", type=int, default=8, help="request threads")
    p.add_argument("--max-concurrent-requests", type=int,
                   help="more are refused with RESOURCE_EXHAUSTED (default: no limit)")
    p.add_argument("--tls-cert", help="PEM server certificate chain")
    p.add_argument("--tls-key", help="PEM server private key")
    p.add_argument("--tls-client-ca", help="PEM CA that client certificates must chain to")
    p.add_argument("--grace-period", type=float, default=5.0,
                   help="seconds running requests get to finish on SIGTERM/SIGINT")
    p.set_defaults(func=cmd_serve)
