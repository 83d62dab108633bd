"""The example notebooks run from the first cell to the last, each in a fresh Jupyter kernel, one at a time.

They run in this one test file rather than as separate items (`pytest --nbmake`), so `pytest-xdist` gives them
to one worker and no two kernels start at once: a kernel picks its TCP ports by binding and releasing them, and
two starting together on two workers can collide ("Kernel died before replying to kernel_info";
treebeardtech/nbmake#129), which failed a run of the suite once. A kernel that dies before it starts is started
once more; any error in a cell fails the test.
"""

import pathlib

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((pathlib.Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.name)
def test_notebook_runs(path):
    for attempt in range(2):
        notebook = nbformat.read(path, as_version=4)
        client = NotebookClient(notebook, timeout=900, kernel_name="python3",
                                resources={"metadata": {"path": str(path.parent)}})
        try:
            client.execute()
            return
        except RuntimeError as error:
            if attempt or "before replying to kernel_info" not in str(error):
                raise


def test_every_notebook_is_found():
    assert len(NOTEBOOKS) >= 10  # the shipped examples; an empty glob would make the test above vacuous
