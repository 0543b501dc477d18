import sys

from relmon.cli import main

sys.exit(main())
