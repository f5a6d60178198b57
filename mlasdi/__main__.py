import sys

from mlasdi.cli import main

sys.exit(main())
