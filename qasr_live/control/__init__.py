"""Triggers that drive dictation: global hotkeys (:mod:`.hotkeys`), the ``qasr-live ctl`` socket and signals
(:mod:`.ctl`). Nothing here touches X or imports pynput at import time."""
