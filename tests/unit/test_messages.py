"""Messages print literally: brackets and colons in paths, names and library messages are user
text, never rich markup or emoji codes (the command's end to end: integration/test_cli.py)."""

import io

import pytest
import typer
from rich.console import Console

from landscape.app.cli import common
from landscape.progress import progress_bar, transient_bar

LITERAL = "run[final]/x.tar: experiment defines no [steps] :smile: [bold]"


def test_fail_prints_the_message_as_it_is():
    assert common.error_line(LITERAL).plain == f"error: {LITERAL}"
    with common.err_console.capture() as captured, pytest.raises(typer.Exit) as exit_:
        common.fail(LITERAL)
    assert exit_.value.exit_code == 2 and captured.get() == f"error: {LITERAL}\n"


def test_consoles_print_user_text_literally():
    for console in (common.console, common.err_console):
        with console.capture() as captured:
            console.print(LITERAL, highlight=False)
        assert captured.get() == LITERAL + "\n"


def test_progress_names_and_fields_are_shown_literally():
    out = io.StringIO()
    with progress_bar("{task.fields[last]}", console=Console(file=out, width=200)) as bar:
        bar.add_task("[red]variant[/]", total=2, last=LITERAL)
    assert "[red]variant[/]" in out.getvalue() and LITERAL in out.getvalue()
    bar = transient_bar(True, 2, LITERAL)
    task = bar._progress.tasks[0]
    (column, *_) = bar._progress.columns
    assert column.render(task).plain == LITERAL
