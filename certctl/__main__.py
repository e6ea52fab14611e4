import sys

from certctl.cli import main

sys.exit(main())
