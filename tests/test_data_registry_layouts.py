"""The registry's task layouts are the one description of each data folder, and readers quote them."""

from __future__ import annotations

import pytest

from medhub.data import READER_ALIASES, READERS, load_task_data
from medhub.errors import DataError
from medhub.registry import load_registry

FOLDER_TASKS = [t.id for t in load_registry().tasks.values() if t.layout.reader != "medmnist_npz"
                and READER_ALIASES.get(t.layout.reader, t.layout.reader) in READERS]


def test_every_folder_task_is_documented():
    assert len(FOLDER_TASKS) >= 10
    for task_id in FOLDER_TASKS:
        layout = load_registry().get_task(task_id).layout
        assert layout.files, task_id
        for name in layout.files:  # every listed file or folder is explained in the description
            assert name.rstrip("/") in layout.description, (task_id, name)
        assert "Split:" in layout.description or "split" in layout.description, task_id


@pytest.mark.parametrize("task_id", FOLDER_TASKS)
def test_empty_folder_error_quotes_the_registry_layout(tmp_path, task_id):
    task = load_registry().get_task(task_id)
    with pytest.raises(DataError) as caught:
        load_task_data(task, tmp_path)
    message = str(caught.value)
    assert str(tmp_path) in message and "\n" not in message
    assert task.layout.description.rstrip(".") in message and "medhub tasks --json" in message


def test_other_tasks_reader_quotes_its_own_task(tmp_path):
    with pytest.raises(DataError, match="task 'montgomery_lung' layout"):
        load_task_data(load_registry().get_task("pneumoniamnist"), tmp_path, reader="montgomery")
