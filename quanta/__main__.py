import sys

from quanta.cli import main

sys.exit(main())
