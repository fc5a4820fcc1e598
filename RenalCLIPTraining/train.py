"""Headless entry point: ``Slicer --no-main-window --python-script train.py -- ARGS``.

Passes ARGS to the ``renalclip`` command line inside Slicer's Python and exits with its code
(0 success, 2 bad input, 1 internal error). Also runs under plain Python: ``python train.py ARGS``.
"""
import os
import sys

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _REPO not in sys.path:
    sys.path.insert(0, _REPO)


def _args():
    argv = sys.argv[1:]
    return argv[argv.index("--") + 1:] if "--" in argv else argv


if __name__ == "__main__":
    from renalclip_lib.cli import main

    code = main(_args())
    try:
        import slicer

        if hasattr(slicer, "app") and slicer.app is not None:
            slicer.app.exit(code)
    except ImportError:
        pass
    sys.exit(code)
