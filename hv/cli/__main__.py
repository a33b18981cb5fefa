import sys

from hv.cli._main import main

sys.exit(main())
