"""`python -m atari_pb ...` (how torchrun starts the CLI)."""

import sys

from atari_pb.cli import main

sys.exit(main())
