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


def test_readme_python_examples_run(tmp_path):
    """The README's ```python blocks run as written, one after the other in one interpreter, as a
    reader would type them (identities go to a fresh DNA_HOME)."""
    import os
    import re
    import subprocess
    import sys
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, re.S)
    assert len(blocks) >= 2
    script = "\n".join(blocks)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                            env=dict(os.environ, DNA_HOME=str(tmp_path)))
    assert result.returncode == 0, script + result.stderr


def test_protocol_document_lists_every_dht_vector():
    doc = (ROOT / "docs" / "PROTOCOL.md").read_text()
    vectors = json.loads((ROOT / "Tests" / "Vectors" / "dht.json").read_text())
    for vector in vectors["messages"]:
        assert f"| {vector['name']} | `{vector['datagram']}` |" in doc, vector["name"]
