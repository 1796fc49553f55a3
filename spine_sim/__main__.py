"""`python -m spine_sim`: the simulated Spine without the rest of the command line."""

import argparse
import sys

from batch import logs
from spine_sim.cli import add_sim_arguments, run_sim


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m spine_sim", description="The simulated Spine for CP-IS.")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    add_sim_arguments(parser)
    args = parser.parse_args()
    logs.configure(args.log_level)
    return run_sim(args)


sys.exit(main())
