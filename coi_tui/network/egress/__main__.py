"""`python -m coi_tui.network.egress BRIDGE GATEWAY PREFERRED_PORT`: the egress proxy process
(started by service.ensure_proxy)."""

import sys

from coi_tui.network.egress.service import main

sys.exit(main(sys.argv[1:]))
