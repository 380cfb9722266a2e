"""`python -m engine.server`: the same as `gfm4d serve`."""

import argparse
import sys

from engine.errors import GFM4DError

from .cli_support import add_serve_arguments, run_serve


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m engine.server", description="Serve the GFM4D engine's HTTP API v1.")
    parser.add_argument("--models-dir", default=None, help="folder of model folders (default: env GFM4D_MODELS)")
    parser.add_argument("--sd21-dir", default=None, help="Stable Diffusion 2.1 folder (default: env GFM4D_SD21_DIR)")
    parser.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when available)")
    add_serve_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run_serve(args)
    except GFM4DError as exc:
        print(f"gfm4d serve: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
