"""`python -m kscli ...` (what `torchrun -m kscli extract ...` runs on each rank)."""

from kscli.cli import app

app(prog_name="kscli")
