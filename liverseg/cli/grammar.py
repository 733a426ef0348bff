"""liverseg's argparse grammar: help that names defaults, subcommand parsers that report their own
usage, and hidden deprecated aliases of renamed options."""
from __future__ import annotations

import argparse
import re
import sys


# a help text that already states its option's default: "(default: test)", "(default 26)", "auto (default): ..."
_NAMES_DEFAULT = re.compile(r"\(default\b|\bdefault:", re.IGNORECASE)


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Descriptions as written, and "(default: X)" after every option that has a default worth naming
    (not None, False or an empty list) unless its help already speaks of its default. An action's
    ``more_help`` (a callable) appends text computed only when --help is printed."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        more = getattr(action, "more_help", None)
        if more is not None:
            text += more()
        default = action.default
        if (default is None or default is False or default is argparse.SUPPRESS or default == []
                or _NAMES_DEFAULT.search(text)):
            return text
        if action.option_strings or action.nargs in (argparse.OPTIONAL, argparse.ZERO_OR_MORE):
            return f"{text} (default: %(default)s)" if text else "default: %(default)s"
        return text


class Parser(argparse.ArgumentParser):
    """liverseg's argument parser: HelpFormatter, and hidden deprecated aliases (DeprecatedAlias)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def parse_known_args(self, args=None, namespace=None):
        required = [(action, action.required) for action in self._actions]
        try:
            return super().parse_known_args(args, namespace)
        finally:  # an alias used in this parse may have relaxed its new option's ``required``
            for action, flag in required:
                action.required = flag


class SubcommandParser(Parser):
    """A subcommand's parser: an unknown argument is an error here, reported with this subcommand's usage
    (argparse leaves a subparser's leftovers to the top-level parser, which would print its own usage)."""

    def parse_known_args(self, args=None, namespace=None):
        namespace, extras = super().parse_known_args(args, namespace)
        if extras:
            self.error(f"unrecognized arguments: {' '.join(extras)}")
        return namespace, extras


class DeprecatedAlias(argparse.Action):
    """An old spelling of an option (``--out``, ``--dest``), hidden from --help: it still works, into the
    new option's dest, and says on stderr in one line that it is deprecated."""

    def __init__(self, option_strings, dest, target: argparse.Action | None = None, **kwargs):
        self.target = target
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        new = "/".join(self.target.option_strings)
        print(f"{parser.prog}: {option_string} is deprecated; use {new}", file=sys.stderr)
        setattr(namespace, self.dest, values)
        self.target.required = False  # given, under its old name (restored after the parse)


def output_option(p: argparse.ArgumentParser, *old: str, **kwargs) -> argparse.Action:
    """``-o/--output``, the one spelling of every subcommand's output folder or file, plus hidden deprecated
    aliases ``old`` (e.g. ``--out``)."""
    action = p.add_argument("-o", "--output", **kwargs)
    for alias in old:
        p.add_argument(alias, dest=action.dest, type=action.type, metavar=action.metavar, action=DeprecatedAlias,
                       target=action, default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    return action


__all__ = ["HelpFormatter", "Parser", "SubcommandParser", "DeprecatedAlias", "output_option"]
