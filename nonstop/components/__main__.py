"""``python -m nonstop.components``: run the hardware watcher as a process."""

from nonstop.components.runner import main

main()
