"""The console entry points ``lightning-ssl`` and ``lightning-ssl-eval``: a light front that answers at once.

``lightning-ssl --help`` and ``lightning-ssl configs [filter]`` need neither torch nor Lightning, so this module
imports neither (``tests/test_console.py`` checks it); a subcommand that trains or evaluates imports the heavy
CLI (``lightning_ssl.cli`` / ``lightning_ssl.eval.cli``) only when it runs.

A mistake on the command line - a mistyped subcommand, config name, path, format or option, a checkpoint that
does not exist, a refused resume - ends with a short message (at most five lines: what is wrong, what to do, a
"did you mean" for names) and exit status 2 instead of a traceback. ``--debug`` anywhere on the command line, or
``LIGHTNING_SSL_DEBUG=1``, lets the exception through with its traceback.
"""

from __future__ import annotations

import difflib
import os
import re
import shutil
import sys
import textwrap
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from lightning_ssl.runs import missing_path_hint as missing_path_hint  # re-exported: errors use it

PACKAGED_CONFIGS = Path(__file__).resolve().parent / "configs"
SUBCOMMANDS = {
    "fit": "train a method (lightning-ssl fit --config simclr/fashion_mnist)",
    "validate": "run the validation loop of a model (the kNN monitor, the online probe)",
    "test": "run the test loop of a model",
    "predict": "embed the prediction set with a model",
    "configs": "list the configs shipped with the package; `configs <filter>` shows the matches in full",
}
HELP = f"""usage: lightning-ssl [-h] {{{",".join(SUBCOMMANDS)}}} ... [--debug]

Pretrain self-supervised methods (SimCLR, MoCo, BYOL, DINO, MAE, CLIP, GPT, ...) with a LightningCLI.

subcommands:
{chr(10).join(f"  {name:<10}{text}" for name, text in SUBCOMMANDS.items())}

examples:
  lightning-ssl configs simclr                              the SimCLR configs, with their descriptions
  lightning-ssl fit --config simclr/fashion_mnist           train (a packaged config, or a YAML path)
  lightning-ssl fit --config simclr/fashion_mnist --budget.minutes 5 --trainer.max_epochs 50
  lightning-ssl fit --config simclr/fashion_mnist --ckpt_path last   resume the newest matching run
  lightning-ssl fit --config simclr/fashion_mnist --print_config     the full config that would run
  lightning-ssl fit --help                                  every option of a subcommand

Evaluate and export with lightning-ssl-eval (knn, linear, fewshot, plot, all, export). A failure prints a short
message; --debug (or LIGHTNING_SSL_DEBUG=1) shows the traceback.
"""
DEBUG_ENV = "LIGHTNING_SSL_DEBUG"
MAX_LINES = 5


class UsageError(ValueError):
    """A mistake on the command line, with what to do about it in the message."""


def did_you_mean(name: str, choices: Sequence[str], what: str = "name") -> str:
    """``"no <what> 'x'; did you mean 'y'?"`` with the closest ``choices`` (difflib), or the choices themselves."""
    close = difflib.get_close_matches(name, list(choices), n=3, cutoff=0.5)
    if close:
        return f"unknown {what} {name!r}; did you mean {' or '.join(repr(c) for c in close)}?"
    shown = ", ".join(list(choices)[:12]) + (", ..." if len(choices) > 12 else "")
    return f"unknown {what} {name!r}; choose one of: {shown}"


# -- packaged configs ---------------------------------------------------------------------------------------------
def config_header(path: Path) -> list[str]:
    """The comment block at the top of a config: its description, as written."""
    lines = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        lines.append(line[1:].removeprefix(" "))
    return lines


def summary(header: list[str]) -> str:
    """The first sentence of a config's description: its first paragraph (up to an indented command line or a
    blank line, or the ``reference:`` / ``deviation:`` lines) to the first full stop that ends a sentence ("et al.
    2020" does not; a sentence in parentheses after it does)."""
    paragraph = []
    for line in header:
        if line.startswith((" ", "reference:", "deviation:", "processes:")) or not line.strip():
            break
        paragraph.append(line.strip())
    first = re.split(r"(?<=\.)\s+(?=[A-Z(])", " ".join(paragraph), maxsplit=1)[0]
    return first if first.endswith((".", ":")) else first + "."


def list_configs() -> list[tuple[str, str]]:
    """(name, first sentence of its description) of every config shipped with the package."""
    return [
        (str(path.relative_to(PACKAGED_CONFIGS).with_suffix("")), summary(config_header(path)))
        for path in sorted(PACKAGED_CONFIGS.glob("*/*.yaml"))
    ]


def find_config(name: str) -> str:
    """A ``--config`` value: a file that exists is used as it is; otherwise a config shipped with the package, named
    as in the repository (``configs/simclr/fashion_mnist.yaml``) or briefly (``simclr/fashion_mnist``). A name
    that is neither is a ``UsageError`` naming the closest configs."""
    if Path(name).exists():
        return name
    short = name.removeprefix("configs/")
    for candidate in (short, f"{short}.yaml"):
        if (PACKAGED_CONFIGS / candidate).is_file():
            return str(PACKAGED_CONFIGS / candidate)
    names = [n for n, _ in list_configs()]
    message = did_you_mean(short.removesuffix(".yaml"), names, "config")
    if "did you mean" not in message:
        message = f"config {name!r} is neither a file nor a packaged config"
        hint = missing_path_hint(name)
        message += f"; {hint}" if hint else ""
    raise UsageError(f"--config: {message}\n`lightning-ssl configs <filter>` lists the packaged configs")


def with_packaged_configs(args: list[str]) -> list[str]:
    """``args`` with every ``--config`` value resolved by ``find_config``."""
    out = list(args)
    for i, a in enumerate(out):
        if a == "--config" and i + 1 < len(out):
            out[i + 1] = find_config(out[i + 1])
        elif a.startswith("--config="):
            out[i] = "--config=" + find_config(a.split("=", 1)[1])
    return out


def configs_command(args: list[str]) -> int:
    """``lightning-ssl configs [filter ...]``: every config with the first sentence of its description, or the
    configs whose name contains every filter word (else whose description does), each with its whole
    description."""
    words = [w.lower() for w in args if not w.startswith("-")]
    if not words:
        rows = list_configs()
        width = max(len(n) for n, _ in rows)
        # one line per config, cut at a word to the terminal's width (at least 100 columns): the full
        # description is one `configs <filter>` away
        room = max(100, shutil.get_terminal_size((120, 24)).columns) - width - 2
        print("\n".join(f"{n:<{width}}  {textwrap.shorten(d, room, placeholder=' ...')}" for n, d in rows))
        print(f"\n{len(rows)} configs in {PACKAGED_CONFIGS}")
        print(
            "lightning-ssl configs <filter> shows the matching ones in full; run one: lightning-ssl fit --config <name>"
        )
        return 0
    configs = [
        (str(path.relative_to(PACKAGED_CONFIGS).with_suffix("")), config_header(path))
        for path in sorted(PACKAGED_CONFIGS.glob("*/*.yaml"))
    ]
    matches = [(n, h) for n, h in configs if all(w in n.lower() for w in words)]  # by name first
    if not matches:  # then by description ("medical", "streaming", "LARS")
        matches = [(n, h) for n, h in configs if all(w in (n + "\n" + "\n".join(h)).lower() for w in words)]
    if not matches:  # names are method/dataset: suggest from their parts
        parts = sorted({part for n, _ in configs for part in n.split("/")})
        raise UsageError(f"{did_you_mean(' '.join(words), parts, 'config filter')}\n`lightning-ssl configs` lists all")
    for name, header in matches:
        print(name)
        print("\n".join(textwrap.indent(line, "    ") if line else "" for line in header) + "\n")
    print(f"{len(matches)} of {len(list_configs())} configs; run one: lightning-ssl fit --config {matches[0][0]}")
    return 0


# -- errors -------------------------------------------------------------------------------------------------------
NAME_SOURCES = (  # where class names given on the command line come from (searched once imported)
    "lightning_ssl.methods",
    "lightning_ssl.data",
    "lightning_ssl.modules.backbones",
    "lightning_ssl.modules.pretrained",
    "lightning_ssl.modules.vit",
    "lightning_ssl.callbacks",
    "lightning_ssl.loggers",
)


def _known_classes() -> dict[str, type]:
    found: dict[str, type] = {}
    for module in NAME_SOURCES:
        for name, obj in vars(sys.modules.get(module) or object).items():
            if isinstance(obj, type) and not name.startswith("_"):
                found.setdefault(name, obj)
    trainer = getattr(sys.modules.get("lightning.pytorch"), "Trainer", None)
    if isinstance(trainer, type):
        found.setdefault("Trainer", trainer)
    return found


def _import(class_path: str) -> type | None:
    module, _, name = class_path.rpartition(".")
    obj = getattr(sys.modules.get(module), name, None)
    return obj if isinstance(obj, type) else None


def _parameters(cls: Any) -> list[str]:
    import inspect

    try:
        return list(inspect.signature(cls.__init__).parameters)
    except (TypeError, ValueError):  # a builtin constructor without a signature
        return []


def _parameter_names() -> list[str]:
    names = {p for cls in _known_classes().values() for p in _parameters(cls)}
    return sorted(names - {"self", "args", "kwargs"})


def explain(message: str) -> str:
    """A parser's error message made direct: the constructor's own error out of jsonargparse's report on a
    union type, and "did you mean" for a mistyped class name or option (difflib over the library's classes and
    their constructor arguments)."""
    key = re.search(r'Parser key "([\w.]+)"', message)
    given = re.search(r"Given value: (\w+)\s*$", message)
    if key and given and "Expected a path" in message:  # a class name that does not resolve
        return f"--{key.group(1)}: {did_you_mean(given.group(1), sorted(_known_classes()), 'class')}"
    nested = re.search(r"NestedArg\(key='(\w+)'", message)
    if key and nested:  # --data.init_args.batch_sise: the class's own arguments (and its bases')
        named = re.search(r"class_path '([\w.]+)'", message)
        cls = _import(named.group(1)) if named else None
        pool = sorted({p for c in cls.__mro__ for p in _parameters(c)}) if cls else _parameter_names()
        close = difflib.get_close_matches(nested.group(1), pool, n=1, cutoff=0.6)
        fix = f"did you mean --{key.group(1)}.{close[0]}?" if close else f"--{key.group(1)}.help <class> lists them"
        return f"--{key.group(1)}: unknown argument {nested.group(1)!r}; {fix}"
    if "Errors:" in message:  # jsonargparse wraps what a constructor raised in a report on every union member
        items = [ln.strip()[2:] for ln in message.split("Errors:", 1)[1].splitlines() if ln.strip().startswith("- ")]
        items = [i for i in items if "NoneType" not in i]
        if items:
            return "\n".join(items)
    option = re.search(r"unrecognized arguments: --([\w.]+)", message, re.IGNORECASE)
    if option:
        prefix, _, leaf = option.group(1).rpartition(".")
        close = difflib.get_close_matches(leaf, _parameter_names(), n=1, cutoff=0.6)
        if close:
            return f"{message.strip()}; did you mean --{prefix + '.' if prefix else ''}{close[0]}?"
    return message


def short_message(error: BaseException, command: str) -> list[str]:
    """At most ``MAX_LINES`` lines: the error's message (its first lines and its last, which says what to do),
    then where to read more."""
    text = explain(str(error))
    lines = [line for line in text.strip().splitlines() if line.strip()] or [type(error).__name__]
    if len(lines) > MAX_LINES - 1:
        lines = [*lines[: MAX_LINES - 2], lines[-1]]
    lines[0] = f"{command}: error: {lines[0]}"
    return [*lines, f"(`{command} --help` for the options; --debug or {DEBUG_ENV}=1 for the traceback)"]


def user_errors() -> tuple[type[BaseException], ...]:
    """The exceptions that mean a mistake in what was asked (bad option, missing file, refused value), reported
    without a traceback. Anything else is a bug and keeps its traceback."""
    kinds: list[type[BaseException]] = [UsageError, ValueError, FileNotFoundError, NotADirectoryError]
    for module, name in (
        ("lightning_ssl.checkpoint", "CheckpointError"),
        ("jsonargparse", "ArgumentError"),
        ("lightning.fabric.utilities.exceptions", "MisconfigurationException"),
    ):
        cls = getattr(sys.modules.get(module), name, None)
        if isinstance(cls, type):
            kinds.append(cls)
    return tuple(kinds)


@contextmanager
def reported(command: str, debug: bool) -> Iterator[None]:
    """Run the body; a user error becomes a short message on stderr and ``SystemExit(2)`` (see ``user_errors``)."""
    try:
        yield
    except Exception as e:
        if debug or not isinstance(e, user_errors()):
            raise
        print("\n".join(short_message(e, command)), file=sys.stderr)
        raise SystemExit(2) from None


def split_debug(args: list[str]) -> tuple[bool, list[str]]:
    """(whether a traceback was asked for: ``--debug`` or ``LIGHTNING_SSL_DEBUG=1``; the other arguments)."""
    env = os.environ.get(DEBUG_ENV, "").lower() not in ("", "0", "false", "no")
    return env or "--debug" in args, [a for a in args if a != "--debug"]


def _run(command: str, argv: list[str] | None, body: Callable[[bool, list[str]], int | None]) -> int:
    debug, args = split_debug(list(sys.argv[1:] if argv is None else argv))
    try:
        with reported(command, debug):
            return body(debug, args) or 0
    except BrokenPipeError:  # `lightning-ssl configs | head`: the reader left, which is no error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


# -- lightning-ssl ------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    """``lightning-ssl``: help and ``configs`` here, fit/validate/test/predict through ``lightning_ssl.cli``."""

    def body(debug: bool, args: list[str]) -> int | None:
        if not args or args[0] in ("-h", "--help"):
            print(HELP, end="")
            return 0 if args else 2
        if args[0] == "configs":
            return configs_command(args[1:])
        if not args[0].startswith("-") and args[0] not in SUBCOMMANDS:
            raise UsageError(did_you_mean(args[0], list(SUBCOMMANDS), "subcommand"))
        from lightning_ssl.cli import cli

        saved = sys.argv
        sys.argv = [*(sys.argv[:1] or ["lightning-ssl"]), *with_packaged_configs(args)]  # LightningCLI reads it
        try:
            cli()
        finally:
            sys.argv = saved
        return 0

    return _run("lightning-ssl", argv, body)


# -- lightning-ssl-eval -------------------------------------------------------------------------------------------
def eval_main(argv: list[str] | None = None) -> int:
    """``lightning-ssl-eval``: every subcommand through ``lightning_ssl.eval.cli.run``, errors reported short."""

    def body(debug: bool, args: list[str]) -> int | None:
        from lightning_ssl.eval.cli import run

        run(args)
        return 0

    return _run("lightning-ssl-eval", argv, body)


if __name__ == "__main__":
    sys.exit(main())
