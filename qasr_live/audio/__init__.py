"""Audio in: files, devices, voice activity."""
