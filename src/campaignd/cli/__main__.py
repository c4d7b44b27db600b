"""`python -m campaignd.cli`: run campaignctl."""

import sys

from campaignd.cli.main import main

sys.exit(main())
