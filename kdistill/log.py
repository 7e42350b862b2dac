"""One logger for the package; the CLI configures it, library code only calls ``log.info``."""

import logging

log = logging.getLogger("kdistill")


def configure(verbose: bool = False) -> None:
    if log.handlers:
        return
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.DEBUG if verbose else logging.INFO)
    log.propagate = False
