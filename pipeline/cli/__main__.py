import sys

from tfx_transfer.pipeline.cli import main

sys.exit(main())
