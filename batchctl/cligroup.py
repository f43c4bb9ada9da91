"""The `batchctl` command group as click sees it, each command converted only when it is needed.

Typer turns every command's signature into click parameters before parsing anything. For
`batchctl --help` that is a sixth of its time (eighteen signatures, their Annotated hints
evaluated), only to print a name and a docstring's first line per command. This group lists the
commands from their Typer definitions and converts one only when click resolves it to run it,
to show its own help, or to complete its options.
"""

from __future__ import annotations

import inspect
from typing import Any, Union

import typer
from typer.core import TyperCommand, TyperGroup
from typer.main import (
    CommandInfo,
    TyperInfo,
    get_command_from_info,
    get_command_name,
    get_group_from_info,
)

try:  # typer >= 0.2x vendors click as typer._click; older typer depends on click itself
    from typer import _click as click
except ImportError:  # pragma: no cover - depends on the installed typer
    import click  # type: ignore[no-redef,import-not-found,unused-ignore]

Definition = Union[CommandInfo, TyperInfo]


class LazyGroup(TyperGroup):
    """A TyperGroup whose subcommands stay Typer definitions until one is resolved."""

    def __init__(self, *, definitions: dict[str, Definition], app: typer.Typer,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._definitions = definitions
        self._app = app
        self._listing = False

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(self._definitions)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        definition = self._definitions.get(cmd_name)
        if definition is None:
            return None
        if self._listing:
            return _summary(cmd_name, definition)
        if cmd_name not in self.commands:
            self.commands[cmd_name] = self._convert(definition)
        return self.commands[cmd_name]

    def format_help(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        self._listing = True  # the listing needs each command's name and summary only
        try:
            super().format_help(ctx, formatter)
        finally:
            self._listing = False

    def _convert(self, definition: Definition) -> click.Command:
        short, markup = self._app.pretty_exceptions_short, self._app.rich_markup_mode
        if isinstance(definition, CommandInfo):
            return get_command_from_info(definition, pretty_exceptions_short=short,
                                         rich_markup_mode=markup)
        return get_group_from_info(definition, pretty_exceptions_short=short,
                                   rich_markup_mode=markup,
                                   suggest_commands=self._app.suggest_commands)


def lazy_group(app: typer.Typer) -> LazyGroup:
    """The click group of `app`: its callback's options converted now, its commands later."""
    root = typer.Typer()
    root.registered_callback = app.registered_callback
    root.info = app.info
    bare = get_group_from_info(
        TyperInfo(root),
        pretty_exceptions_short=app.pretty_exceptions_short,
        rich_markup_mode=app.rich_markup_mode,
        suggest_commands=app.suggest_commands,
    )
    definitions: dict[str, Definition] = {}
    for command in app.registered_commands:
        assert command.callback is not None
        definitions[command.name or get_command_name(command.callback.__name__)] = command
    for group in app.registered_groups:
        assert group.name, "batchctl's subgroups are named"
        definitions[group.name] = group
    return LazyGroup(
        definitions=definitions,
        app=app,
        name=bare.name,
        callback=bare.callback,
        params=bare.params,
        help=bare.help,
        no_args_is_help=bare.no_args_is_help,
        invoke_without_command=bare.invoke_without_command,
        context_settings=bare.context_settings,
        rich_markup_mode=app.rich_markup_mode,
        suggest_commands=app.suggest_commands,
    )


def _summary(name: str, definition: Definition) -> click.Command:
    """What the group's help lists of a command: its name, summary, panel and flags."""
    if isinstance(definition, CommandInfo):
        doc = definition.help if definition.help is not None else inspect.getdoc(definition.callback)
        return TyperCommand(name=name, help=doc, short_help=definition.short_help,
                            hidden=definition.hidden, deprecated=definition.deprecated,
                            rich_help_panel=definition.rich_help_panel)
    info = definition.typer_instance.info if definition.typer_instance else definition
    return TyperCommand(name=name, help=definition.help or info.help,
                        short_help=definition.short_help or info.short_help,
                        hidden=bool(definition.hidden), deprecated=bool(definition.deprecated),
                        rich_help_panel=definition.rich_help_panel)
