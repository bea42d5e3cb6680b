"""`python -m kscli ...` (what `torchrun -m kscli extract ...` runs on each rank)."""

from kscli.cli import app

if __name__ == "__main__":  # not when a spawned worker process imports this module
    app(prog_name="kscli")
