"""`python -m adaudit ...`: the same command line as the `adaudit` script. It exists so torchrun can start
the command as a module on every rank (`torchrun --nproc-per-node N -m adaudit teacher train ...`), and so
`adaudit teacher train --nproc-per-node N` can relaunch itself that way (training/distributed.py)."""

from adaudit.cli import app

if __name__ == "__main__":
    app(prog_name="adaudit")
