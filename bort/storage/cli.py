"""`bort fetch s3://BUCKET/KEY [DEST]` and `bort push PATH s3://BUCKET/PREFIX`."""
from __future__ import annotations

import argparse
import json
import sys

from ..cli import add_no_progress
from .download import PART_SIZE, THREADS
from .errors import StorageError
from .verify import MiB


def _positive_int(flag: str, maximum: int):
    """An argparse type: an integer in [1, maximum], else a usage error naming the flag."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{flag} expects an integer, got {text!r}") from None
        if not 1 <= value <= maximum:
            raise argparse.ArgumentTypeError(f"{flag} must be between 1 and {maximum}, got {value}")
        return value

    return parse


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--endpoint-url", default=None,
                        help="S3-compatible endpoint (default: AWS, or AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL)")
    parser.add_argument("--no-sign-request", action="store_true",
                        help="anonymous requests, for public buckets when no credentials are configured")
    parser.add_argument("--retries", type=int, default=5, help="retries of a failed transfer (with backoff)")
    add_no_progress(parser)


def add_fetch_args(parser: argparse.ArgumentParser) -> None:
    parser.description = ("Download an object (or every object under a prefix) from S3 with parallel ranged GETs, "
                          "resuming only the missing parts of DEST.part after an interruption and verifying it "
                          "(.sha256 sidecar or ETag) before renaming it to DEST. Keys that would not map to a file "
                          "inside DEST ('..', '//', ...) are refused before anything is written.")
    parser.add_argument("url", help="s3://BUCKET/KEY (an object) or s3://BUCKET/PREFIX/ (a directory)")
    parser.add_argument("dest", nargs="?", default=None,
                        help="file or directory (default: the key's name in the current directory)")
    parser.add_argument("--restart", action="store_true", help="discard a partial download and start over")
    parser.add_argument("--threads", type=_positive_int("--threads", 256), default=THREADS,
                        help="parallel ranged GETs")
    parser.add_argument("--part-size-mib", type=_positive_int("--part-size-mib", 5 * 1024), default=PART_SIZE // MiB,
                        help=f"MiB per part: progress is recorded per part, so an interrupted download resumes "
                             "with only the missing parts")
    _common(parser)


def add_push_args(parser: argparse.ArgumentParser) -> None:
    parser.description = ("Upload a file or a directory to S3 (multipart), each object with a .sha256 sidecar. A "
                          "file goes to KEY (or PREFIX/NAME if the URL ends with '/'); a directory's files to "
                          "PREFIX/RELATIVE-PATH.")
    parser.add_argument("path", help="file or directory")
    parser.add_argument("url", help="s3://BUCKET/KEY or s3://BUCKET/PREFIX")
    _common(parser)


def run_fetch(args: argparse.Namespace) -> int:
    from .cache import fetch_any

    progress = None if args.progress else False
    try:
        path, results = fetch_any(args.url, args.dest, endpoint_url=args.endpoint_url,
                                  no_sign_request=args.no_sign_request or None, retries=args.retries,
                                  progress=progress, restart=args.restart, threads=args.threads,
                                  part_size=args.part_size_mib * MiB)
    except StorageError as err:
        print(f"bort fetch: error: {err}", file=sys.stderr)
        return 2
    print(json.dumps({"url": args.url, "dest": str(path), "objects": len(results),
                      "bytes": sum(r.size for r in results),
                      "bytes_transferred": sum(r.bytes_transferred for r in results),
                      "resumed_from": sum(r.resumed_from for r in results),
                      "verified": sorted({r.verified for r in results}),
                      "parts": sum(r.parts for r in results), "threads": max(r.threads for r in results),
                      "requests": sum(r.requests for r in results),
                      "seconds": round(sum(r.seconds for r in results), 3)}))
    return 0


def run_push(args: argparse.Namespace) -> int:
    from .upload import push

    try:
        result = push(args.path, args.url, endpoint_url=args.endpoint_url,
                      no_sign_request=args.no_sign_request or None, retries=args.retries,
                      progress=None if args.progress else False)
    except StorageError as err:
        print(f"bort push: error: {err}", file=sys.stderr)
        return 2
    print(json.dumps({"path": args.path, "objects": result.urls, "bytes": result.bytes_transferred,
                      "seconds": round(result.seconds, 3)}))
    return 0
