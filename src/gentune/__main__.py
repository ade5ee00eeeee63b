import sys

from gentune.cli import main

sys.exit(main())
