import json
import pathlib

import pytest

REPO = pathlib.Path(__file__).resolve().parents[3]


@pytest.fixture(scope="session")
def vectors():
    return json.loads((REPO / "Tests" / "Vectors" / "frames.json").read_text())
