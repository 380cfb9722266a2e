"""Argument parsing for `gfm4d`: one-line errors, defaults in every `--help`, checked values.

Everything here is plain Python (no torch, no GDAL): `gfm4d --help` and a mistyped argument are
answered at once, before the engine's heavy imports.
"""

from __future__ import annotations

import argparse
import sys
from urllib.parse import urlsplit


class HelpFormatter(argparse.HelpFormatter):
    """Appends "(default: X)" to an option's help when it has a default its text does not already state."""

    def _get_help_string(self, action: argparse.Action) -> str:
        help_text = action.help or ""
        default = action.default
        if (
            "default" in help_text
            or default is None
            or default is False
            or default == ""
            or default == []
            or default is argparse.SUPPRESS
            or not action.option_strings
        ):
            return help_text
        return f"{help_text} (default: {default})" if help_text else f"default: {default}"


class ArgumentParser(argparse.ArgumentParser):
    """argparse with the engine's error style: one line on stderr and exit status 2.

    Sub-commands made with `add_subparsers().add_parser(...)` are of this class too, so every
    command shows its defaults and reports a wrong argument the same way.
    """

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def add_subparsers(self, **kwargs):
        kwargs.setdefault("parser_class", ArgumentParser)
        return super().add_subparsers(**kwargs)

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def port(text: str) -> int:
    """A TCP port, 1..65535."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number; give 1 to 65535, e.g. 8765") from None
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{value} is not a port number; give 1 to 65535, e.g. 8765")
    return value


def engine_url(text: str) -> str:
    """An engine address: http(s)://host[:port], so that `--engine 127.0.0.1:8765` is not sent as a path."""
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an engine URL; give it with its scheme, e.g. http://127.0.0.1:8765"
        )
    return text


def date(text: str) -> str:
    """A date as the engine reads it (YYYY-MM-DD, YYYYMMDD, ISO 8601 with time), checked now."""
    from engine.errors import GFM4DError
    from engine.geo.dates import parse_date

    try:
        parse_date(text)
    except (GFM4DError, ValueError) as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def date_or_auto(text: str) -> str:
    """A frame's date, or 'auto' / '-' / '' to read it from the frame."""
    return text if text in ("", "-", "auto") else date(text)


def fraction(text: str) -> float:
    """A number 0..1 (cloud cover)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number; give a fraction 0..1, e.g. 0.1") from None
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"{value:g} is not a fraction; give 0..1 (0.1 for 10 %)")
    return value


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{value:g} must be a positive number")
    return value


def add_threads_argument(parser: argparse.ArgumentParser) -> None:
    """`--threads N`: torch's CPU threads (engine.runtime.threads.apply_threads reads it)."""
    parser.add_argument("--threads", type=positive_int, default=None, metavar="N",
                        help="CPU threads for torch (default: env GFM4D_THREADS, else half the cores, at most 4: "
                             "more threads slow down sharply when other programs use the cores)")


class ExtentAction(argparse.Action):
    """`--extent XMIN YMIN XMAX YMAX`: finite numbers with the minimum before the maximum."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        xmin, ymin, xmax, ymax = values
        if not all(abs(v) < float("inf") for v in values):
            parser.error(f"{option_string} takes four finite numbers")
        for low, high, axis in ((xmin, xmax, "X"), (ymin, ymax, "Y")):
            if not high > low:
                parser.error(
                    f"{option_string} is XMIN YMIN XMAX YMAX: {axis}MAX ({high:g}) must be greater than "
                    f"{axis}MIN ({low:g}); swap them"
                )
        setattr(namespace, self.dest, list(values))


def add_ray_arguments(parser: argparse.ArgumentParser, what: str) -> None:
    """`--ray [ADDRESS]` and `--workers`: run `what` on Ray actors (Ray is imported only when given)."""
    parser.add_argument("--ray", nargs="?", const="local", default=None, metavar="ADDRESS",
                        help=f"{what} on Ray actors: no ADDRESS starts a local cluster, 'auto' joins a running one, "
                             "or host:port / ray://host:10001 (needs pip install 'gfm4d[ray]')")
    parser.add_argument("--workers", type=positive_int,
                        help="Ray actors at most (default: one per GPU, or per CPU without GPUs)")


def stderr_line(text: str) -> None:
    """A status line for the user (not part of the command's output)."""
    print(text, file=sys.stderr, flush=True)
