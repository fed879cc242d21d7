"""The lab peers' output: one JSON object per line on the process's original stdout; anything else
the process prints (GLib's debug log goes to fd 1) is sent to stderr. Import it first."""
import json
import os

_OUT = os.fdopen(os.dup(1), "w")
os.dup2(2, 1)


def emit(**fields):
    _OUT.write(json.dumps(fields) + "\n")
    _OUT.flush()
