"""``python -m fishzoo.train`` and ``accelerate launch -m fishzoo.train``."""
import sys

from fishzoo.train.command import main

sys.exit(main())
