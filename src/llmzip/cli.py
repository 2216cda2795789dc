"""The llmzip command line, shaped like zstd and xz.

    llmzip FILE            compress to FILE.llmz (the input is kept)
    llmzip -d FILE.llmz    decompress to FILE
    llmzip train|bench|explain ...   the other tools

Errors from the library are caught here, in one place, and printed as `llmzip: FILE: message`
with exit status 1 (2 for usage errors); set LLMZIP_DEBUG=1 to see the traceback instead.
"""

from __future__ import annotations

import argparse
import errno
import os
import re
import shutil
import signal
import stat
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from . import __version__
from .errors import LLMZipError

if TYPE_CHECKING:  # the API imports numpy and the coder; the command line loads it on first use
    from .api import CompressOptions

SUFFIX = ".llmz"
SUBCOMMANDS = ("train", "bench", "explain")


class UsageError(Exception):
    pass


class Interrupted(Exception):
    """Raised from SIGTERM so that partial output is removed just as on Ctrl-C."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="llmzip",
        description="Lossless compression with language models. With no FILE, or when FILE is -, read standard input.",
        epilog="Other tools: llmzip train | bench | explain (each has --help). "
               "Exit status: 0 ok, 1 error, 2 usage error.",
    )
    parser.add_argument("files", nargs="*", metavar="FILE")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("-z", "--compress", dest="mode", action="store_const", const="compress",
                      help="compress (default)")
    mode.add_argument("-d", "--decompress", dest="mode", action="store_const", const="decompress", help="decompress")
    mode.add_argument("-t", "--test", dest="mode", action="store_const", const="test",
                      help="test the integrity of compressed files")
    mode.add_argument("-l", "--list", dest="mode", action="store_const", const="list",
                      help="list what compressed files hold")
    parser.add_argument("-c", "--stdout", action="store_true", help="write to standard output")
    parser.add_argument("-o", dest="output", metavar="FILE", help="write the result to FILE (one input only)")
    keep = parser.add_mutually_exclusive_group()
    keep.add_argument("-k", "--keep", dest="remove", action="store_false", help="keep the input files (default)")
    keep.add_argument("--rm", dest="remove", action="store_true", help="remove the input files after success")
    parser.add_argument("-f", "--force", action="store_true",
                        help="overwrite existing output; write compressed data to a terminal; read it from one")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more detail")
    parser.add_argument("-q", "--quiet", action="store_true", help="print nothing but errors")
    parser.add_argument("-m", "--model", metavar="NAME|PATH",
                        help="built-in model name, native model directory, Hugging Face directory or GGUF file")
    parser.add_argument("--device", metavar="DEVICE", help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--engine", choices=("auto", "exact", "float"), default="auto",
                        help="exact: integer engine, files decode on any machine (native and Llama models, the "
                             "default for them); float: any model, decodes only on a matching machine")
    parser.add_argument("--chunk-tokens", type=_positive, metavar="N",
                        help="tokens per independently coded chunk: 1 to the model's context less one (default: set "
                             "by the level, or by the model given with -m)")
    parser.add_argument("--batch-size", type=_positive, metavar="N",
                        help="chunks coded together in one batch (default 16; level 1: as many as the decoder "
                             "steps through together, 64 for llmzip-tiny)")
    parser.add_argument("--model-only", dest="xz_fallback", action="store_false",
                        help="model-code all text, even where xz would be smaller, with the model's own rows alone "
                             "(for measuring models)")
    parser.add_argument("--no-online", dest="online", action="store_false", default=None,
                        help="do not learn from the file while coding it (the online model; on by default with the "
                             "exact engine)")
    parser.add_argument("-T", "--threads", type=_positive, metavar="N", help="CPU threads for inference")
    parser.add_argument("--ray", nargs="?", const="", metavar="ADDRESS",
                        help="code each file as a task on the Ray cluster at ADDRESS (host:port), or on a local "
                             "cluster when none is given; a single file to compress has its chunks spread instead; "
                             "outputs are the bytes a local run writes (pip install 'llmzip[ray]')")
    levels = parser.add_argument_group("compression levels", _levels_help())
    for level in range(1, 10):
        levels.add_argument(f"-{level}", dest="level", action="store_const", const=level, help=argparse.SUPPRESS)
    parser.add_argument("-V", "--version", action="version", version=f"llmzip {__version__}")
    parser.set_defaults(mode="compress", remove=False, level=None)
    return parser


def _levels_help() -> str:
    from . import models

    spans: list[list] = []  # [first level, last level, model, chunk tokens]
    for level, (model, chunk_tokens) in sorted(models.LEVELS.items()):
        if spans and spans[-1][2:] == [model, chunk_tokens]:
            spans[-1][1] = level
        else:
            spans.append([level, level, model, chunk_tokens])
    described = ", ".join(f"{first}{f'-{last}' if last != first else ''} {model}"
                          + (f" ({chunk_tokens}-token chunks)" if chunk_tokens else "")
                          for first, last, model, chunk_tokens in spans)
    return f"-1 .. -9: the model to use: {described} (default -{models.DEFAULT_LEVEL}; -m overrides)"


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"takes a whole number, not {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


_VALUE_OPTIONS = ("--chunk-tokens", "--batch-size", "-T", "--threads")


def _check_argv(argv: list[str]) -> None:
    """What argparse would report confusingly: -10 (read as -1 -0) and negative numbers (read as levels)."""
    for index, argument in enumerate(argv):
        if argument == "--":
            return
        if re.fullmatch(r"-\d{2,}|-0", argument):
            raise UsageError(f"there is no level {argument}; levels are -1 to -9")
        if argument in _VALUE_OPTIONS and index + 1 < len(argv) and re.fullmatch(r"-\d+", argv[index + 1]):
            raise UsageError(f"{argument} must be at least 1, not {argv[index + 1]}")


def _steady_heap() -> None:
    """Big buffers straight from and back to the system (glibc): its moving mmap threshold put a
    decoding step's buffers on the heap, where the online model's small, lasting objects pinned
    them (alice29 decoding peaked at 1.24 GB instead of 0.89)."""
    if sys.platform.startswith("linux"):
        import ctypes

        try:
            ctypes.CDLL("libc.so.6").mallopt(-3, 128 * 1024)  # M_MMAP_THRESHOLD, glibc's default, held
        except (OSError, AttributeError):  # another C library: nothing to steady
            pass


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    # OpenMP threads that spin between torch's many small per-token operations took the CPU from
    # the work itself (decoding 3-8 times slower than one thread on a busy machine); sleeping
    # threads cost nothing. Set before torch is imported, unless the user chose otherwise.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    _steady_heap()
    # A reader that went away (`llmzip -l ... | head -1`) ends the run quietly, as it does other
    # tools; a full disk behind standard output is one line. Either way, no traceback.
    try:
        status = _main(argv)
        sys.stdout.flush()
        return status
    except BrokenPipeError:
        _discard_stdout()
        return 1
    except OSError as error:  # the others were reported where they happened
        if os.environ.get("LLMZIP_DEBUG"):
            raise
        print(f"llmzip: (stdout): {error.strerror or error}", file=sys.stderr)
        _discard_stdout()
        return 1


def _main(argv: list[str]) -> int:
    argv = _ray_argv(argv)
    if argv and argv[0] in SUBCOMMANDS:
        return _run_subcommand(argv[0], argv[1:])
    try:
        _check_argv(argv)
    except UsageError as error:
        print(f"llmzip: {error}", file=sys.stderr)
        return 2
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit:
        return int(exit.code or 0)
    _signals_received.clear()
    previous_handlers = {signal.SIGTERM: signal.signal(signal.SIGTERM, _on_signal)}
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:  # not where SIGINT is ignored
        previous_handlers[signal.SIGINT] = signal.signal(signal.SIGINT, _on_signal)
    try:
        return Runner(args).run()
    except UsageError as error:
        print(f"llmzip: {error}", file=sys.stderr)
        return 2
    finally:
        for signal_number, handler in previous_handlers.items():
            signal.signal(signal_number, handler)


def _ray_argv(argv: list[str]) -> list[str]:
    """`--ray FILE` means a local cluster and FILE, not a cluster at FILE: an address has a port."""
    argv = list(argv)
    for index, argument in enumerate(argv[:-1]):
        if argument == "--":
            break
        if argument == "--ray" and not re.fullmatch(r"(ray://)?\S+:\d+|auto|local", argv[index + 1]):
            argv[index] = "--ray="
    return argv


def _discard_stdout() -> None:
    """Point standard output at /dev/null, so that the flush at exit cannot fail again."""
    if sys.stdout is not sys.__stdout__:  # called in-process (tests): nothing of ours to discard
        return
    try:
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, sys.stdout.fileno())
        os.close(null)
    except (OSError, ValueError):
        pass


# The exception a signal raises is lost when it lands in a finaliser (__del__) and the run would
# go on to finish; the record here is not, and is checked before every group and before publishing.
_signals_received: list[int] = []


def _on_signal(signum, frame):
    _signals_received.append(signum)
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    raise Interrupted("terminated")


def _check_signals() -> None:
    if _signals_received:
        raise KeyboardInterrupt


def _run_subcommand(name: str, argv: list[str]) -> int:
    import importlib

    module = importlib.import_module({"train": ".train", "bench": ".bench", "explain": ".explain"}[name], __package__)
    parser = argparse.ArgumentParser(prog=f"llmzip {name}")
    getattr(module, f"add_{name}_arguments")(parser)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit:
        return int(exit.code or 0)
    try:
        return int(getattr(module, f"run_{name}")(args) or 0)
    except BrokenPipeError:
        raise  # the reader went away: main ends the run quietly
    except KeyboardInterrupt:  # Ray tasks, if any, were cancelled on the way out
        print(f"llmzip {name}: interrupted", file=sys.stderr)
        return 1
    except (LLMZipError, OSError) as error:
        if os.environ.get("LLMZIP_DEBUG"):
            raise
        print(f"llmzip {name}: {error}", file=sys.stderr)
        return 1


def human_size(size: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return ""


class Runner:
    def __init__(self, args):
        self.args = args
        self._compressor = None
        self._decompressor = None
        self.failures = 0

    # Settings checks that need no file.
    def run(self) -> int:
        args = self.args
        files = args.files or ["-"]
        if args.output and len(files) > 1:
            raise UsageError("-o takes one input file")
        if args.output and args.stdout:
            raise UsageError("-o and -c cannot be used together")
        if args.mode != "compress" and "-" in files and not args.force and _is_console(sys.stdin):
            # zstd's answer: waiting for compressed data to be typed helps no one.
            print("llmzip: stdin is a console, aborting (use -f to read it anyway)", file=sys.stderr)
            return 1
        if args.device is not None:
            from .api import _check_device

            try:
                _check_device(args.device)
            except LLMZipError as error:
                if os.environ.get("LLMZIP_DEBUG"):
                    raise
                print(f"llmzip: {error}", file=sys.stderr)
                return 1
        if args.ray is not None and args.mode != "list":  # -l reads headers only: nothing to spread
            return self.run_on_ray(files)
        if args.threads is not None:
            import torch

            torch.set_num_threads(args.threads)
        rows = []
        for name in files:
            try:
                with self._report_errors(name):
                    if args.mode == "list":
                        rows.append(self.list_file(name))
                    elif args.mode == "test":
                        self.test_file(name)
                    else:
                        self.convert_file(name)
                _check_signals()
            except KeyboardInterrupt:
                print("llmzip: interrupted", file=sys.stderr)
                return 1
        if rows:
            self.print_table(rows)
        return 1 if self.failures else 0

    @contextmanager
    def _report_errors(self, name: str):
        try:
            yield
        except BrokenPipeError:
            raise  # the reader went away: main ends the run quietly
        except (LLMZipError, OSError, ValueError) as error:
            if os.environ.get("LLMZIP_DEBUG"):
                raise
            self.failures += 1
            label = "(stdin)" if name == "-" else name
            if isinstance(error, OSError) and error.filename is not None:
                label = os.fsdecode(error.filename)  # the output, say, when it is the output that failed
            message = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
            print(f"llmzip: {label}: {message}", file=sys.stderr)
        except Interrupted:
            raise KeyboardInterrupt from None

    def compressor_options(self) -> CompressOptions:
        from .api import CompressOptions  # noqa: F811

        args = self.args
        return CompressOptions(model=args.model, level=args.level or 5, engine=args.engine, device=args.device,
                               chunk_tokens=args.chunk_tokens, batch_size=args.batch_size, threads=args.threads,
                               xz_fallback=args.xz_fallback, online=args.online)

    def decompressor_options(self) -> dict:
        return dict(model=self.args.model, device=self.args.device)

    @property
    def compressor(self):
        if self._compressor is None:
            from .api import Compressor

            self._compressor = Compressor(self.compressor_options())
        return self._compressor

    @property
    def decompressor(self):
        if self._decompressor is None:
            from .api import Decompressor

            self._decompressor = Decompressor(**self.decompressor_options())
        return self._decompressor

    def output_name(self, name: str) -> str | None:
        """Where the result goes: a path, or None for standard output."""
        args = self.args
        if args.output:
            return None if args.output == "-" else args.output
        if args.stdout or name == "-":
            return None
        if args.mode == "compress":
            if name.endswith(SUFFIX):
                raise LLMZipError(f"already has the {SUFFIX} suffix -- ignored (use -c or -o to compress it again)")
            return name + SUFFIX
        if not name.endswith(SUFFIX) or len(name) == len(SUFFIX):
            raise LLMZipError(f"unknown suffix (expected {SUFFIX}) -- ignored; use -o to name the output")
        return name[: -len(SUFFIX)]

    def checked_target(self, name: str) -> str | None:
        """The output for `name` (None: standard output), once it is known that it may be written."""
        args = self.args
        target = self.output_name(name)
        if target is None and args.mode == "compress" and sys.stdout.isatty() and not args.force:
            raise LLMZipError("will not write compressed data to a terminal (use -f to force, or -o FILE)")
        if target is not None and not args.force and os.path.lexists(target) and not _is_special_file(target):
            raise LLMZipError(f"{target} already exists; use -f to overwrite")
        if target is not None and name != "-" and os.path.exists(target) and os.path.samefile(name, target):
            raise LLMZipError("input and output are the same file")
        return target

    def convert_file(self, name: str) -> None:
        args = self.args
        compressing = args.mode == "compress"
        target = self.checked_target(name)
        with _open_input(name) as source:
            size = _input_size(source)
            progress = self._progress_bar(size, name)

            def update(count: int) -> None:
                _check_signals()
                progress.update(count)

            try:
                with _output(target, like=None if name == "-" else name, force=args.force) as destination:
                    if compressing and _at_end(source):
                        from .api import write_empty_stream

                        # Nothing to code: no model is loaded for an empty input.
                        summary = write_empty_stream(destination, content_size=size)
                        in_size, out_size = 0, _written(destination, summary)
                    elif compressing:
                        summary = self.compressor.copy_stream(source, destination, content_size=size, progress=update)
                        in_size, out_size = summary.content_size, _written(destination, summary)
                    else:
                        in_size = size or 0
                        out_size = self.decompressor.copy_stream(source, destination, progress=update)
            finally:
                progress.close()
        self.finish_file(name, target, in_size, out_size, compressing, summary if compressing else None)

    def finish_file(self, name: str, target: str | None, in_size: int, out_size: int, compressing: bool,
                    summary=None) -> None:
        """After an output is published: --rm, and the summary line."""
        args = self.args
        if args.remove and name != "-" and target is not None:
            if _is_special_file(target):
                if not args.quiet:
                    print(f"llmzip: {name}: kept, since {target} is not a regular file", file=sys.stderr)
            else:
                os.remove(name)
        if not args.quiet:
            self.print_summary(name, target, in_size, out_size, compressing)
            if summary is not None and args.verbose and summary.tokens:
                print(f"{'':>2}{_learning_line(summary)}", file=sys.stderr)

    def run_on_ray(self, files: list[str]) -> int:
        """Each file coded by one Ray task, or one file compressed here with its chunks' full passes
        as Ray tasks (see cluster.py); outputs are written here, in input order, through the same
        checks and publishing as a local run, so a cancelled run leaves none half-written."""
        from . import cluster

        args = self.args
        if "-" in files:
            raise UsageError("--ray takes named files, not standard input")
        args.threads = args.threads or 1  # each task's CPUs; the driver's compressor records the same
        gpu = (args.device or "").startswith("cuda")
        try:
            with cluster.session(args.ray or None) as ray:
                if args.mode == "compress" and len(files) == 1 and self.compressor.engine.batch_invariant:
                    with cluster.chunks_on(ray, self.compressor, threads=args.threads, gpu=gpu):
                        with self._report_errors(files[0]):
                            self.convert_file(files[0])
                    return 1 if self.failures else 0
                tasks = cluster.FileTasks(ray, threads=args.threads, gpu=gpu)
                if args.mode == "compress":  # loaded here for the settings every worker's model must match
                    settings = self.compressor.model_settings()
                submitted = []
                try:
                    for name in files:
                        with self._report_errors(name):
                            target = None if args.mode == "test" else self.checked_target(name)
                            with _open_input(name) as source:
                                data = source.read()
                            ref = (tasks.compress(data, self.compressor_options(), settings) if args.mode == "compress"
                                   else tasks.decompress(data, self.decompressor_options(), test=args.mode == "test"))
                            submitted.append((name, target, ref, len(data)))
                    for name, target, ref, in_size in submitted:
                        self._finish_ray_file(tasks, name, target, ref, in_size)
                        _check_signals()
                finally:
                    tasks.cancel([ref for _, _, ref, _ in submitted])  # those still running: Ctrl-C, a lost cluster
        except (KeyboardInterrupt, Interrupted):
            print("llmzip: interrupted", file=sys.stderr)
            return 1
        except LLMZipError as error:  # the cluster, or the driver's own model: no file would fare better
            if os.environ.get("LLMZIP_DEBUG"):
                raise
            print(f"llmzip: {error}", file=sys.stderr)
            return 1
        return 1 if self.failures else 0

    def _finish_ray_file(self, tasks, name: str, target: str | None, ref, in_size: int) -> None:
        from .cluster import ClusterError

        args = self.args
        try:
            value = tasks.result(ref)
        except ClusterError:
            raise
        except LLMZipError as error:  # this file's own: reported, and the others go on
            value = error
        with self._report_errors(name):
            if isinstance(value, LLMZipError):
                raise value
            if args.mode == "test":
                if not args.quiet:
                    print(f"{name} : OK ({human_size(value)})", file=sys.stderr)
                return
            with _output(target, like=name, force=args.force) as destination:
                destination.write(value)
            self.finish_file(name, target, in_size, len(value), args.mode == "compress")

    def test_file(self, name: str) -> None:
        with _open_input(name) as source:
            size = self.decompressor.copy_stream(source, _NullWriter())
        if not self.args.quiet:
            print(f"{name} : OK ({human_size(size)})", file=sys.stderr)

    def list_file(self, name: str) -> dict:
        from .api import info

        with _open_input(name) as source:
            details = info(source)
        settings = details.model_settings or {}
        model = settings.get("model", {})
        return {
            "file": name,
            "model": model.get("name", "-") if settings else "(none needed)",
            "fingerprint": str(model.get("fingerprint", ""))[:12],
            "engine": settings.get("engine", {}).get("kind", "-"),
            "compressed": details.compressed_size,
            "original": details.content_size,
            "bits_per_byte": details.bits_per_byte,
            "chunks": details.chunks,
            "streams": details.streams,
            "online": settings.get("online"),
        }

    def print_table(self, rows: list[dict]) -> None:
        print(f"{'Compressed':>12} {'Original':>12} {'Ratio':>7} {'Bits/B':>7}  {'Model':<24} {'Engine':<6} File")
        for row in rows:
            ratio = row["compressed"] / row["original"] if row["original"] else 0.0
            shown = "(stdin)" if row["file"] == "-" else row["file"]
            if row["streams"] > 1:
                shown += f" ({row['streams']} streams)"
            print(f"{human_size(row['compressed']):>12} {human_size(row['original']):>12} {ratio:>7.2%} "
                  f"{row['bits_per_byte']:>7.3f}  {row['model']:<24} {row['engine']:<6} {shown}")
            if self.args.verbose:
                chunks = ", ".join(f"{count} {kind}" for kind, count in row["chunks"].items())
                print(f"{'':>12} chunks: {chunks}; model sha256 {row['fingerprint']}…")
                if row["online"]:
                    print(f"{'':>12} online model: version {row['online'].get('version')}, units of "
                          f"{row['online'].get('unit_chunks')} chunks (llmzip -v reports its saving when compressing)")

    def print_summary(self, name, target, in_size, out_size, compressing) -> None:
        shown = "(stdin)" if name == "-" else name
        where = target or "(stdout)"
        if compressing:
            percent = f"{100 * out_size / in_size:.2f}%" if in_size else "100%"
            bits = f", {8 * out_size / in_size:.3f} bits/byte" if in_size and self.args.verbose else ""
            print(f"{shown} : {percent} ({human_size(in_size)} => {human_size(out_size)}, {where}){bits}",
                  file=sys.stderr)
        else:
            print(f"{shown} : {human_size(out_size)}, {where}", file=sys.stderr)

    def _progress_bar(self, total: int | None, name: str):
        from tqdm import tqdm

        disabled = self.args.quiet or not sys.stderr.isatty()
        return tqdm(total=total, desc=Path(name).name if name != "-" else "stdin", unit="B", unit_scale=True,
                    unit_divisor=1024, disable=disabled, leave=False, file=sys.stderr)


def _learning_line(summary) -> str:
    """What the online model saved: the file's own "learning is compression" number, and the
    encoder's choice to keep it (only where the file comes out smaller with it)."""
    saved = summary.model_alone_bits - summary.model_bits
    choice = getattr(summary, "online_choice", None)
    compared = ""
    if choice is not None:
        compared = f"{choice.with_online:,} bytes with it, {choice.alone:,} without"
        if choice.input_bytes < summary.content_size:
            compared += f" for the first {choice.input_bytes:,} bytes"
    if not saved:
        ending = " (no online model)"
        if compared and not choice.kept:
            ending = f"; the online model was left out: {compared}"
        return f"model alone: {summary.model_alone_bits / 8:,.0f} bytes for {summary.tokens:,} tokens{ending}"
    return (f"online model saved {saved / 8:,.0f} bytes ({100 * saved / summary.model_alone_bits:.1f}% of the model "
            f"alone's {summary.model_alone_bits / 8:,.0f}) on {summary.tokens:,} tokens"
            + (f"; kept: {compared}" if compared else ""))


class _NullWriter:
    def write(self, data) -> int:
        return len(data)


def _written(destination, summary) -> int:
    return summary.compressed_size or getattr(destination, "bytes_written", 0)


def _input_size(source) -> int | None:
    """The size of a regular file; None for pipes and terminals."""
    try:
        status = os.fstat(source.fileno())
    except (OSError, ValueError, AttributeError):
        return None
    import stat

    return status.st_size if stat.S_ISREG(status.st_mode) else None


@contextmanager
def _open_input(name: str):
    if name == "-":
        yield sys.stdin.buffer
        return
    if os.path.isdir(name):
        raise LLMZipError("is a directory -- ignored")
    with open(name, "rb") as source:
        yield source


class _CountingWriter:
    """Standard output, a device or a FIFO, counting what was written (they cannot tell())."""

    def __init__(self, stream):
        self.stream = stream
        self.bytes_written = 0

    def write(self, data) -> int:
        self.stream.write(data)
        self.bytes_written += len(data)
        return len(data)

    def seekable(self) -> bool:
        return False

    def tell(self) -> int:
        return self.bytes_written


@contextmanager
def _output(target: str | None, like: str | None, force: bool):
    """Where a result is written.

    Standard output, and a target that is not a regular file (a device such as /dev/null, a
    FIFO), are written directly, as zstd -o /dev/null does. A regular file is written beside the
    target under a temporary name and published only on success: without -f by a hard link,
    which fails when the target appeared meanwhile (another llmzip, another program), so nothing
    is replaced unasked; with -f by an atomic rename. A symbolic link is written through: its
    target is replaced, never the link. A new file gets the mode of `like` (the input, as gzip
    does) or, from standard input, 0666 less the umask.
    """
    if target is None:
        writer = _CountingWriter(sys.stdout.buffer)
        yield writer
        sys.stdout.buffer.flush()
        return
    if _is_special_file(target):
        with open(target, "wb") as destination:
            yield _CountingWriter(destination)
        return
    if os.path.isdir(target):
        raise LLMZipError(f"{target} is a directory")
    if os.path.islink(target):
        target = os.path.realpath(target)
    directory = os.path.dirname(os.path.abspath(target))
    try:
        handle, temporary = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(target)}.", suffix=".partial")
    except OSError as error:  # named after the output, not the temporary file nobody asked for
        raise OSError(error.errno, error.strerror, target) from None
    try:
        with os.fdopen(handle, "wb") as destination:
            yield destination
            destination.flush()
            os.fsync(destination.fileno())
        _check_signals()
        try:
            if like is not None:
                shutil.copystat(like, temporary)
            else:
                os.chmod(temporary, 0o666 & ~_umask())
        except OSError as error:
            raise OSError(error.errno, error.strerror, target) from None
        _publish(temporary, target, force)
    except BaseException:
        try:
            os.remove(temporary)
        except FileNotFoundError:
            pass
        raise


# Errors of os.link on file systems that have no hard links (FAT, some network file systems).
_NO_HARD_LINKS = {errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS, errno.EMLINK}


def _publish(temporary: str, target: str, force: bool) -> None:
    appeared = f"{target} already exists (it appeared while llmzip ran) and was not replaced; use -f to overwrite"
    try:
        if force:
            os.replace(temporary, target)
            return
        try:
            os.link(temporary, target)
        except FileExistsError:
            raise LLMZipError(appeared) from None
        except OSError as error:
            if error.errno not in _NO_HARD_LINKS:
                raise
            # Claim the name with an exclusive creation, then rename over the claim.
            try:
                os.close(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
            except FileExistsError:
                raise LLMZipError(appeared) from None
            try:
                os.replace(temporary, target)
            except BaseException:
                os.remove(target)
                raise
            return
        os.remove(temporary)
    except OSError as error:
        raise OSError(error.errno, error.strerror, target) from None


def _is_special_file(path: str) -> bool:
    """A device, FIFO or socket, after following links: written directly, never replaced."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    return not stat.S_ISREG(mode) and not stat.S_ISDIR(mode)


def _is_console(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _at_end(source) -> bool:
    """Whether a buffered input has nothing (more) to give; reads nothing away."""
    try:
        return source.peek(1) == b""
    except (AttributeError, OSError, ValueError):
        return False


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


if __name__ == "__main__":
    sys.exit(main())
