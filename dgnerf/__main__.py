import sys

from dgnerf.cli import main

sys.exit(main())
