"""Where text goes: files, WebSocket subscribers, the focused window, the journal."""
