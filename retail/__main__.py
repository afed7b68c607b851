"""``python -m retail``: the platform's commands (pipeline, report, operations) without the
local stack's, for a container that carries only the platform."""

from retail.cli import main

main()
