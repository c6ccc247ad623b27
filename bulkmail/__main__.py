import sys

from bulkmail.cli import main

sys.exit(main())
