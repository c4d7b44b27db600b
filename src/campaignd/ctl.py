"""`campaignctl`'s former module, kept so that `python -m campaignd.ctl` and `campaignd.ctl:main`
still work; the command line lives in `campaignd.cli`."""

import sys

from campaignd.cli.main import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
