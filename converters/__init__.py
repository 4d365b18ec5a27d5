"""WAV validation and WAV-to-MP3 conversion with ffmpeg, run on a bounded thread pool."""
