"""`python -m coi_tui.network.egress BRIDGE GATEWAY PROXY_PORT RESOLVER_PORT`: the egress proxy
and resolver process (started by service.ensure_proxy)."""

import sys

from coi_tui.network.egress.service import main

sys.exit(main(sys.argv[1:]))
