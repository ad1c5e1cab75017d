import sys

from pixpref.cli import main

sys.exit(main())
