"""``python -m service.compute.optimisation.machine``: build the step machine beside its source."""

from service.compute.optimisation.machine import main

main()
