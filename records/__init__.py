"""Audio records: streamed WAV uploads, stored as MP3 files with a row each."""
