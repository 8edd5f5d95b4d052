"""`python -m minmo.train.cat URI [--storage-options JSON]`: an object's bytes to stdout.

Owns nothing but that copy. It exists so that `webdataset.WebDataset` (which has no handler for
s3://) can read object-store shards through `pipe:` URLs (`minmo.train.data.webdataset_urls`),
with the same filesystem rules as the rest of minmo (`minmo.io.fs.open_filesystem`:
endpoint from the options or AWS_ENDPOINT_URL, credentials from the environment).
Must not: write anywhere but stdout.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys

from minmo.io.fs import open_filesystem

BLOCK_BYTES = 1 << 20


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m minmo.train.cat", description=__doc__)
    parser.add_argument("uri", help="object or file to copy to stdout")
    parser.add_argument("--storage-options", default=None, help="JSON filesystem options")
    args = parser.parse_args(argv)
    # A reader that stops early closes the pipe: end quietly with status 141 as `cat` does
    # (webdataset ignores that status), not with a BrokenPipeError traceback.
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    options = json.loads(args.storage_options) if args.storage_options else {}
    fs, path = open_filesystem(args.uri, **options)
    out = sys.stdout.buffer
    with fs.open_input_stream(path) as src:
        while block := src.read(BLOCK_BYTES):
            out.write(block)
    out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
