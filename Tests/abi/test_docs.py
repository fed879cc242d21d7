"""docs/PROTOCOL.md carries the same test vectors as Tests/Vectors/frames.json."""
import json
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_protocol_document_lists_every_vector():
    doc = (ROOT / "docs" / "PROTOCOL.md").read_text()
    vectors = json.loads((ROOT / "Tests" / "Vectors" / "frames.json").read_text())
    for vector in vectors["valid"]:
        assert f"| {vector['name']} |" in doc and vector["frame"] in doc, vector["name"]
    for vector in vectors["invalid"]:
        assert f"| {vector['name']} |" in doc and f"`{vector['error']}`" in doc, vector["name"]
        assert vector["frame"] in doc or vector["frame"] == "", vector["name"]
