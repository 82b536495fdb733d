"""`python -m simulator`: the same as `smslab simulator`, without loading the service."""

import typer

from simulator.cli import simulator

typer.run(simulator)
