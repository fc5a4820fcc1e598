"""Headless training: the whole pipeline (``renalclip train all``) inside Slicer or with a plain Python.

    Slicer --no-main-window --python-script RenalCLIPTraining/train.py --config CONFIG --out RUN [--gpus N] ...
    python RenalCLIPTraining/train.py --config CONFIG --out RUN [--stages a,b] [--set key=value] ...

Arguments are those of ``renalclip train all`` (``--help`` lists them); when the first argument is
a ``renalclip`` subcommand (``phantom``, ``preprocess``, ``train``, ``evaluate``, ...) the arguments
go to that command unchanged. Arguments after a ``--`` are used when Slicer passes its own first.
Exit codes are the command line's: 0 success, 2 bad input (one line on stderr), 1 internal error;
inside Slicer the application exits with that code (``slicer.util.exit``).
"""
import os
import sys

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _REPO not in sys.path:
    sys.path.insert(0, _REPO)


def script_arguments(argv):
    """The script's own arguments from ``sys.argv[1:]`` (those after ``--`` when there is one)."""
    argv = list(argv)
    return argv[argv.index("--") + 1:] if "--" in argv else argv


def renalclip_arguments(args):
    """``renalclip`` argv: ``train all ARGS`` unless ARGS start with a renalclip subcommand."""
    from renalclip_lib.cli import build_parser

    subcommands = next(a.choices for a in build_parser()._actions if getattr(a, "choices", None))
    if args and args[0] in subcommands:
        return list(args)
    return ["train", "all"] + list(args)


def run(args) -> int:
    """Run the command; returns its exit code (argparse's exits, e.g. ``--help``, included)."""
    from renalclip_lib.cli import main

    if list(args) in (["-h"], ["--help"]):
        print(__doc__)
    try:
        return int(main(renalclip_arguments(args)))
    except SystemExit as exc:
        if exc.code is None:
            return 0
        return exc.code if isinstance(exc.code, int) else 2


def exit_with(code: int) -> None:
    """Leave with ``code``: Slicer's application when this runs inside it (where ``slicer`` is
    already imported), else the interpreter."""
    slicer = sys.modules.get("slicer")
    if slicer is not None and getattr(slicer, "app", None) is not None:
        util = getattr(slicer, "util", None)
        if util is not None and hasattr(util, "exit"):
            util.exit(code)
        else:
            slicer.app.exit(code)
        return
    sys.exit(code)


if __name__ == "__main__":
    exit_with(run(script_arguments(sys.argv[1:])))
