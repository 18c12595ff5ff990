import sys

from lth_sparse.cli import main

sys.exit(main())
