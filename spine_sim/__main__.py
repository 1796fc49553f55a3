"""`python -m spine_sim`: the simulated Spine on its own."""

import argparse
import logging
import sys

from spine_sim.cli import add_sim_arguments, run_sim


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m spine_sim", description="The simulated Spine for CP-IS.")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    add_sim_arguments(parser)
    args = parser.parse_args()
    # Logs go to stderr: stdout carries the ready line and the arrival log, which tools read.
    logging.basicConfig(
        level=args.log_level,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        datefmt="%Y-%m-%dT%H:%M:%S",
    )
    return run_sim(args)


sys.exit(main())
