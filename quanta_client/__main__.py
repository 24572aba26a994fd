"""`python -m quanta_client` is `quanta-client`."""

import sys

from quanta_client.cli import main

sys.exit(main())
