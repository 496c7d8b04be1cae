"""The leaderboard in a terminal: rich tables that fit the terminal's width (naming the columns they
leave out), their notes and ablation sections, and the rankings."""

from __future__ import annotations

import sys
from typing import Sequence

import pandas as pd

from vmbench.leaderboard.columns import MEASURED, PUBLISHED
from vmbench.leaderboard.render import (ABLATION_TITLE, _ranking_sections, ablation_frame, ablation_notes,
                                        display_frame)
from vmbench.leaderboard.tables import Table, paired_reference, split_tables
from vmbench.protocols import metric_label

__all__ = ["TERMINAL_WIDTH", "print_rankings_terminal", "print_terminal"]

_DROP_ORDER = ("pairs", "Latency ms", "Train h", "IoU/img %", "Acc/img %", "Spe %", "Sen %", "Acc %", "Protocol",
               "Device-h", "GMACs", "DSC strict %", "HD95 strict vox", "DSC/img %", "Failed", "Params M", "Folds")
TERMINAL_WIDTH = 120  # when the output is not a terminal (piped, a file): what most terminals show


def _fit_columns(frame: pd.DataFrame, width: int) -> tuple[pd.DataFrame, list[str]]:
    """Drop low-priority columns (``_DROP_ORDER``, then raw p-values) until the table fits ``width``."""
    def natural(f: pd.DataFrame) -> int:
        return 1 + sum(3 + max([len(str(c))] + [len(str(v)) for v in f[c]]) for c in f.columns)

    order = list(_DROP_ORDER) + [c for c in frame.columns if c.startswith("p vs ")]
    hidden = []
    for col in order:
        if natural(frame) <= width:
            break
        if col in frame.columns:
            frame, hidden = frame.drop(columns=[col]), hidden + [col]
    return frame, hidden


def print_terminal(board: pd.DataFrame, file=None, wide: bool = False) -> None:
    """Rich tables, one per dataset and protocol, titled with the protocol, notes below.

    Tables with per-class columns print the headline metrics first and the per-class DSC in a
    second table. Each table fits the terminal (120 columns when the output is not a terminal):
    the least important columns are left out and named; ``wide`` keeps them all.
    """
    from rich.console import Console

    file = file or sys.stdout
    is_tty = hasattr(file, "isatty") and file.isatty()
    console = Console(file=file, width=None if is_tty else (1000 if wide else TERMINAL_WIDTH), highlight=False,
                      soft_wrap=False)
    width = 10**6 if wide else console.width
    reference = paired_reference(board)
    for t in split_tables(board):
        frame = display_frame(t, reference, ci="primary")
        frame = frame.drop(columns=[c for c in ("Source", "Note") if c in frame.columns])
        organs = [metric_label(k) for k in t.metrics if k.startswith("dsc_") and k != "dsc_strict"]
        kinds = list(t.rows["kind"])
        main, hidden = _fit_columns(frame.drop(columns=organs), width)
        console.print(_rich_table(main, kinds, t.title))
        if organs:
            per_organ, more = _fit_columns(frame[["Model", "Protocol", "n", *organs]], width)
            console.print(_rich_table(per_organ, kinds, f"{t.dataset} | protocol: {t.protocol} | DSC per organ (%)"))
            hidden += [c for c in more if c not in hidden]
        if hidden:
            console.print(_rich_escape(f"Columns left out to fit {width} characters: {', '.join(hidden)} "
                                       "(--wide shows them; --format md/csv/json/html keep every column)"))
        _print_notes(console, t)
        twins = ablation_frame(t)
        if not twins.empty:
            console.print(_rich_table(twins, [MEASURED] * len(twins), f"{t.dataset} | {ABLATION_TITLE}"))
            for note in ablation_notes(t):
                console.print(_rich_escape(note))
        console.print()


def _print_notes(console, t: Table) -> None:
    """The table's notes, the published rows' sources and each measured row's note."""
    for note in t.notes:
        console.print(("[bold yellow]" if note.startswith("WARNING") else "") + _rich_escape(note))
    sources = t.rows[t.rows["kind"] == PUBLISHED][["model", "source"]]
    for model, source in sources.itertuples(index=False):
        console.print(_rich_escape(f"  [published] {model}: {source}"))
    notes = t.rows[(t.rows["kind"] == MEASURED) & t.rows["note"].fillna("").ne("") & t.rows["note"].ne("reference")]
    for model, note in notes[["model", "note"]].itertuples(index=False):
        console.print(_rich_escape(f"  {model}: {note}"))


def _rich_table(frame: pd.DataFrame, kinds: Sequence[str], title: str):
    from rich.table import Table as RichTable

    table = RichTable(title=_rich_escape(title), title_justify="left")
    for col in frame.columns:
        left = col in ("Model", "Protocol", "Twin")
        table.add_column(_rich_escape(col), justify="left" if left else "right", no_wrap=left)
    for kind, row in zip(kinds, frame.itertuples(index=False)):
        table.add_row(*[_rich_escape(str(v)) for v in row], style="dim" if kind == PUBLISHED else None)
    return table


def _rich_escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)


# ------------------------------------------------------------------------------------------------
# Rankings (``vmbench leaderboard --ranks``)


def print_rankings_terminal(ranks, file=None) -> None:
    from rich.console import Console

    file = file or sys.stdout
    console = Console(file=file, width=None if getattr(file, "isatty", lambda: False)() else 1000, highlight=False)
    for title, notes, frame in _ranking_sections(ranks):
        if not frame.empty:
            console.print(_rich_table(frame, ["measured"] * len(frame), title))
        else:
            console.print(_rich_escape(title))
        for note in notes:
            console.print(_rich_escape(note))
        console.print()
