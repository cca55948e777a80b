"""``python -m nonstop.agent``: the same as ``nonstop agent``."""

from nonstop.agent.main import main

main()
