"""What every command shares: one-line usage errors, argument types, settings."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from collections.abc import Callable, Iterable, Iterator
from typing import NoReturn, TypeVar

from pipeline.config import Settings
from pipeline.factory import Parts

T = TypeVar("T")


class UsageError(Exception):
    """A bad argument discovered after parsing: one line, exit 2."""


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr and exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


Command = Callable[[argparse.Namespace], int]


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a value >= 0, got {value}")
    return value


def at_least_one(text: str) -> int:
    value = positive_int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a value >= 1, got {value}")
    return value


def non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a value >= 0, got {value}")
    return value


def port(text: str) -> int:
    value = positive_int(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"port must be within 0-65535, got {value}")
    return value


def fail_rate(text: str) -> tuple[str, float, str | None]:
    from pipeline.dev.sim.config import parse_fail_rate

    try:
        return parse_fail_rate(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def csv_list(text: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in text.split(",") if x.strip())


async def until_signalled() -> None:
    """Block until SIGINT or SIGTERM: the foreground commands stop cleanly on either."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


@contextlib.contextmanager
def sigterm_unwinds() -> Iterator[None]:
    """SIGTERM raises SystemExit(143) in the main thread, as Ctrl-C raises
    KeyboardInterrupt, so that the processes a command started (a benchmark's rig,
    a chaos run's stack: each in a session of its own, which no signal to the
    command reaches) are stopped by their context managers. Python's default is
    to die at once and leave them running. A second SIGTERM during that cleanup
    is ignored."""

    def unwind(signum: int, _frame: object) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, unwind)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def load_settings() -> Settings:
    return Settings.from_env()


def kafka_parts() -> Parts:
    """The shared parts (codec with the registry when configured, secrets), once the
    broker has answered: a command that cannot reach it says so in one line."""
    parts = Parts(load_settings())
    parts.reach()
    return parts


def progress(items: Iterable[T], total: int | None, what: str) -> Iterable[T]:
    """A progress bar on stderr while `items` are read; silent when stderr is not a
    terminal (tqdm's own test), so pipes and CI logs stay clean."""
    from tqdm import tqdm

    return tqdm(
        items,
        total=total or None,
        desc=what,
        unit=" records",
        file=sys.stderr,
        disable=None,
        leave=False,
        dynamic_ncols=True,
    )


def ttl_seconds(text: str) -> int:
    """`--response-cache-ttl`: a duration in whole seconds; 0 turns the cache off."""
    from pipeline.errors import ConfigError
    from pipeline.ops.dlq import parse_duration

    if text.strip() == "0":
        return 0
    try:
        seconds = int(parse_duration(text))
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if seconds < 1:
        raise argparse.ArgumentTypeError("a response-cache TTL is at least 1s")
    return seconds
