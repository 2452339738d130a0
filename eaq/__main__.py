import sys

from eaq.cli.main import main

sys.exit(main())
