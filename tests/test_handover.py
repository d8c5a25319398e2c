"""The SMTP handover journal: what it lets the next run settle, and what it must leave in doubt.

A killed sender's journal is a file another process reads; these tests write the lines the SMTP
transport writes (from this process and, by renaming, from "other" processes) and ask what settles.
"""

from __future__ import annotations

import os
from pathlib import Path

from pipeline.transports.base import Outcome
from pipeline.transports.handover import ACCEPTED, CLAIMED, HANDING, REFUSED, Handover


def _verdicts(outcomes: list[Outcome]) -> dict[int, str]:
    return {outcome.delivery_id: outcome.status for outcome in outcomes}


def _as_dead_process(folder: Path, campaign_id: int, pid: int) -> None:
    """Give this process's journal the name a dead sender with ``pid`` would have left."""
    mine = folder / f"smtp-campaign{campaign_id}-pid{os.getpid()}.log"
    mine.rename(folder / f"smtp-campaign{campaign_id}-pid{pid}.log")


def test_a_killed_batch_settles_all_but_the_message_whose_data_was_out(tmp_path: Path) -> None:
    journal = Handover(tmp_path, "smtp")
    journal.note(7, CLAIMED, [1, 2, 3, 4, 5])
    for delivery_id in (1, 2):
        journal.note(7, HANDING, [delivery_id])
        journal.note(7, ACCEPTED, [delivery_id])
    journal.note(7, HANDING, [3])
    journal.note(7, REFUSED, [3])
    journal.note(7, HANDING, [4])  # the SIGKILL came here: DATA out, no answer

    verdicts = _verdicts(Handover(tmp_path, "smtp").settle(7, [1, 2, 3, 4, 5, 6]))

    assert verdicts == {1: "sent", 2: "sent", 3: "unsent", 5: "unsent"}, (
        "4 had its DATA out (in doubt); 6 was never named in a journal here (another machine's?)"
    )


def test_an_unanswered_handover_in_any_run_outweighs_an_earlier_refusal(tmp_path: Path) -> None:
    """Row 1 was refused by one run (and so queued again), then caught mid-DATA by the next: in doubt.
    Row 2 was claimed by one run and sent by the next: sent, whatever order the files are read in."""
    first = Handover(tmp_path, "smtp")
    first.note(3, CLAIMED, [1, 2])
    first.note(3, HANDING, [1])
    first.note(3, REFUSED, [1])
    _as_dead_process(tmp_path, 3, 999_998)
    second = Handover(tmp_path, "smtp")
    second.note(3, CLAIMED, [1, 2])
    second.note(3, HANDING, [2])
    second.note(3, ACCEPTED, [2])
    second.note(3, HANDING, [1])

    assert _verdicts(second.settle(3, [1, 2])) == {2: "sent"}


def test_a_torn_last_line_and_other_campaigns_are_ignored(tmp_path: Path) -> None:
    journal = Handover(tmp_path, "smtp")
    journal.note(1, CLAIMED, [10, 11])
    journal.note(2, CLAIMED, [12])
    with (tmp_path / f"smtp-campaign1-pid{os.getpid()}.log").open("a", encoding="ascii") as torn:
        torn.write("A 1")  # died mid-write: "A 11\n" never completed

    assert _verdicts(journal.settle(1, [10, 11, 12])) == {10: "unsent", 11: "unsent"}


def test_close_removes_this_process_journal_once_its_outcomes_are_returned(tmp_path: Path) -> None:
    journal = Handover(tmp_path, "smtp")
    journal.note(4, CLAIMED, [1])
    _as_dead_process(tmp_path, 4, 999_997)
    journal = Handover(tmp_path, "smtp")
    journal.note(4, CLAIMED, [2])

    journal.close()

    assert [path.name for path in tmp_path.iterdir()] == ["smtp-campaign4-pid999997.log"], (
        "a dead sender's journal stays for the next run to settle from"
    )
