"""``python -m tirl.cli`` (and ``torchrun ... -m tirl.cli train CONFIG``)."""

import sys

from tirl.cli import main

sys.exit(main())
