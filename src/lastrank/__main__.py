import sys

from lastrank.cli import main

sys.exit(main())
