import sys

from dpstream.cli import main

sys.exit(main())
